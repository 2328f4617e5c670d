"""The Mosquitto the simulator, the benchmarks and the tests start (agent/sim/mosquitto.py): its
config, an outage as a stop and a start on the same port with persistence on, and what it says
when it cannot run."""

import socket
import time
from pathlib import Path

import pytest

from agent.errors import BrokerProcessError
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.sim import mosquitto as mosquitto_module
from agent.sim.mosquitto import Mosquitto


def wait_for(condition, timeout_s=15.0, what="a condition", step=None):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.01)


def _link(broker, tmp_path, name, **kwargs) -> Link:
    return Link(LinkSettings(broker.host, broker.port, reconnect_min_s=1, reconnect_max_s=1),
                client_id=name, outbox=Outbox(tmp_path / name), boot=name, **kwargs)


def test_its_config_listens_on_loopback_with_persistence_and_a_log_in_its_directory(tmp_path):
    broker = Mosquitto.on_loopback(tmp_path / "run")
    config = broker.config_path.read_text().splitlines()
    assert broker.config_path == tmp_path / "run" / "mosquitto.conf"
    assert f"listener {broker.port} 127.0.0.1" in config
    assert "allow_anonymous true" in config and "persistence true" in config
    assert f"persistence_location {tmp_path / 'run'}/" in config
    assert f"log_dest file {tmp_path / 'run' / 'mosquitto.log'}" in config
    with broker:
        assert broker.running
        socket.create_connection(("127.0.0.1", broker.port), timeout=5).close()
    assert not broker.running
    assert "New connection from 127.0.0.1" in (tmp_path / "run" / "mosquitto.log").read_text()
    assert (tmp_path / "run" / "mosquitto.db").exists()  # written at the stop
    broker.stop()  # twice is harmless


def test_an_outage_is_a_stop_and_a_start_clients_come_back_and_retained_survives(mosquitto,
                                                                                 tmp_path):
    """What the scenarios' broker_down and broker_up do: every client sees the broker gone,
    what they keep meanwhile goes out once it is back on the same port, and the retained
    messages it held are still there (persistence), as on a site's broker."""
    broker = mosquitto(persistence=True)
    port = broker.port
    heard = []
    listener = _link(broker, tmp_path, "listener")
    listener.subscribe("p/#", heard.append)
    boards = [_link(broker, tmp_path, f"b{n}", status_topic=f"p/b{n}/status") for n in range(3)]
    gone = _link(broker, tmp_path, "gone", status_topic="p/gone/status")
    for link in boards + [listener, gone]:
        link.start()
    wait_for(lambda: all(link.connected for link in boards + [listener, gone]), what="clients")
    gone.close()  # says offline, retained
    broker.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_for(lambda: not any(link.connected for link in boards + [listener]),
             what="every client to see the outage")
    for board in boards:
        board.publish("p/event", {"during": "outage"}, qos=1)  # kept in the outbox
    broker.start()
    assert broker.port == port
    wait_for(lambda: all(link.connected and link.connects == 2 for link in boards + [listener]),
             what="every client back", step=listener.poll)
    listener.publish("p/probe", {}, qos=1)  # heard back: the listener's subscription is live
    wait_for(lambda: any(m.topic == "p/probe" for m in heard), what="the probe",
             step=listener.poll)

    def poll_all():
        for link in boards + [listener]:
            link.poll()

    wait_for(lambda: len([m for m in heard if m.topic == "p/event"]) == 3,
             what="the events kept through the outage", step=poll_all)
    late = []
    reader = _link(broker, tmp_path, "reader")
    reader.subscribe("p/+/status", late.append)
    reader.start()
    wait_for(lambda: {m.topic for m in late} >= {"p/gone/status", "p/b0/status"},
             what="retained status", step=reader.poll)
    statuses = {m.topic: m.payload for m in late}
    assert statuses["p/gone/status"] == b"offline"  # from before the outage: persisted
    assert all(statuses[f"p/b{n}/status"] == b"online" for n in range(3))  # said again
    for link in boards + [listener, reader]:
        link.close()


def test_a_config_it_refuses_is_an_error_with_its_log(tmp_path):
    broker = Mosquitto.on_loopback(tmp_path)
    broker.config_path.write_text(broker.config_path.read_text() + "no_such_option 1\n")
    with pytest.raises(BrokerProcessError, match=r"mosquitto exited with status \d+ at start "
                       r"\(config .*mosquitto.conf\): .*no_such_option"):
        broker.start()


def test_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto_module, "SBIN_PATHS", ())
    with pytest.raises(BrokerProcessError) as caught:
        Mosquitto.on_loopback(tmp_path)
    assert isinstance(caught.value, OSError)
    assert str(caught.value).startswith("mosquitto is not installed")
    assert "sudo apt install mosquitto" in str(caught.value)
    assert "scripts/setup-dev --demo" in str(caught.value)


def test_the_demo_setup_installs_mosquitto():
    """`scripts/demo` runs `scripts/setup-dev --demo` first; on a fresh machine the simulator's
    broker must come from it."""
    setup = Path(__file__).resolve().parent.parent / "scripts" / "setup-dev"
    lines = setup.read_text().splitlines()
    demo = lines[lines.index('if [ "${1:-}" = "--demo" ]; then') + 1].strip()
    assert demo.startswith("debian_packages=(") and demo.endswith(")")
    assert "mosquitto" in demo[len("debian_packages=("):-1].split()
