"""The fleet uplink (issue 19): MQTT topics into NATS subjects, the site's leaf node and the
hub's cluster on the generated configuration, and nothing lost or doubled across outages."""

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import nats
import pytest
import paho.mqtt.client as paho_client
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main as hearth
from agent.deploy.broker_config import CLIENT_ETC
from agent.fleet import subjects, uplink
from agent.fleet.subjects import HUB_DOMAIN, MSG_ID_HEADER, hub_stream
from agent.mqtt import envelope
from fleet_sites import advertise_nowhere, hub_streams_made, leaf_behind_wan, start_nats
from test_broker_config import INVENTORY, Mosquitto, free_port, login


@pytest.mark.parametrize("topic, subject", [
    ("hearth/v1/maple-school/m1/b01/event", "hearth.maple-school.m1.b01.event"),
    ("hearth/v1/maple-school/m1/leader/state", "hearth.maple-school.m1.leader.state"),
    ("hearth/v1/maple-school/site/state", "hearth.maple-school.site.state"),
])
def test_topics_become_subjects_and_back(topic, subject):
    assert subjects.subject_for_topic(topic) == subject
    assert subjects.topic_for_subject(subject) == topic


@pytest.mark.parametrize("topic", [
    "homeassistant/sensor/x/config", "hearth/v1/maple-school", "hearth/v1/maple-school//event",
    "hearth/v1/maple-school/m1/b.01/event", "hearth/v1/maple-school/m 1/b01/event",
    "hearth/v1/maple-school/m1/*/event", "hearth/v1/maple-school/m1/>/event",
])
def test_a_topic_no_subject_can_hold_is_refused(topic):
    assert subjects.subject_for_topic(topic) is None


@pytest.mark.parametrize("topic, goes_up", [
    ("hearth/v1/s/m1/b01/event", True), ("hearth/v1/s/m1/leader/state", True),
    ("hearth/v1/s/site/state", True), ("hearth/v1/s/m1/b01/update", True),
    ("hearth/v1/s/m1/b01/state", False), ("hearth/v1/s/m1/b01/cmd/mode", False),
    ("hearth/v1/s/m1/leader/setpoint/b01", False),
])
def test_the_record_goes_up_and_control_and_board_telemetry_stay(topic, goes_up):
    assert uplink.carried(topic) is goes_up


def test_stream_names_and_message_ids():
    assert subjects.hub_stream("maple-school") == "SITE_maple_school"
    assert subjects.site_domain("maple-school") == "maple-school"
    assert subjects.message_id("b00t", 7, "hearth/v1/s/m1/b01/event") == \
        "b00t:7:hearth/v1/s/m1/b01/event"


SITE = "maple-school"
NATS_SERVER = "/usr/sbin/nats-server"
CUT_S = 60.0
"""How long the site's link to the hub is cut while its boards keep raising events: long enough
for the uplink to have written hundreds of messages the hub has not seen, and for the leaf node
to have given up and retried its hub connection many times (it retries every second)."""
EVENTS_PER_S = 10.0


def fleet_inventory(tmp_path: Path, tls: bool = False) -> tuple[Path, dict]:
    """Three hub servers and one site on loopback, each on ports of its own."""
    ports = {name: free_port() for name in ("hub1c", "hub1r", "hub1l", "hub2c", "hub2r",
                                             "hub2l", "hub3c", "hub3r", "hub3l", "leaf")}
    hubs = "".join(
        f'[[hub]]\nname = "hub{n}"\nhost = "127.0.0.1"\nbind_address = "127.0.0.1"\n'
        f'client_port = {ports[f"hub{n}c"]}\ncluster_port = {ports[f"hub{n}r"]}\n'
        f'leaf_port = {ports[f"hub{n}l"]}\nstore_dir = "{tmp_path}/store/hub{n}"\n'
        for n in (1, 2, 3))
    path = tmp_path / "fleet.toml"
    path.write_text(f"tls = {'true' if tls else 'false'}\netc = \"{tmp_path}/etc\"\n" + hubs
                    + f'[[site]]\nname = "{SITE}"\nclient_port = {ports["leaf"]}\n'
                    f'store_dir = "{tmp_path}/store/leaf"\nmax_store_bytes = {2**28}\n')
    return path, ports


@pytest.mark.parametrize("tls", [False, True])
def test_nats_config_is_accepted_by_nats_server(tmp_path, tls):
    fleet, _ = fleet_inventory(tmp_path, tls)
    out = tmp_path / "nats"
    assert hearth(["uplink", "nats-config", "--fleet", str(fleet), "--out", str(out)]) == 0
    configs = sorted(out.glob("hub/*/nats.conf")) + sorted(out.glob("site/*/nats.conf"))
    assert len(configs) == 4
    for config in configs:  # each installed as its box's `etc` in turn, as it is deployed
        etc = tmp_path / "etc"
        shutil.rmtree(etc, ignore_errors=True)
        shutil.copytree(config.parent, etc)
        result = subprocess.run([NATS_SERVER, "-t", "-c", str(etc / "nats.conf")],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
    leaf = (out / "site" / SITE / "nats.conf").read_text()
    assert f'domain: "{SITE}"' in leaf and ("tls {" in leaf) == tls
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert hearth(["uplink", "nats-config", "--fleet", str(fleet), "--out", str(out)]) == 0
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


class Boards:
    """Boards raising events on the site broker with the real envelope, QoS 1, each with its
    own account, at EVENTS_PER_S each, until stopped: what they sent, by (boot, seq, topic)."""

    def __init__(self, port: int, out: Path, names: list[str]):
        self.sent: list[tuple[str, int, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(port, out, name), daemon=True)
                        for name in names]
        for thread in self.threads:
            thread.start()

    def _run(self, port: int, out: Path, name: str) -> None:
        account = login(out, f"m1.{name}")
        client = paho_client.Client(CallbackAPIVersion.VERSION2, client_id=account["username"])
        client.username_pw_set(account["username"], account["password"])
        client.connect("127.0.0.1", port)
        client.loop_start()
        stamp = envelope.Envelope(str(uuid.uuid4()), time.time)
        topic = f"hearth/v1/{SITE}/m1/{name}/event"
        while not self.stopping.is_set():
            message = stamp.stamp(topic, {"cause": "test", "severity": "info"})
            client.publish(topic, envelope.encode(message), qos=1).wait_for_publish(5)
            self.sent.append((message["boot"], message["seq"], topic))
            time.sleep(1 / EVENTS_PER_S)
        client.disconnect()
        client.loop_stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)


def start_uplink(out: Path, nats_out: Path, log: Path) -> subprocess.Popen:
    """The uplink's process on broker-config's [mqtt] section, its files where they were
    written rather than where the site's box installs them."""
    mqtt = out / "clients/uplink/mqtt.toml"
    local = out / "uplink-mqtt.toml"
    local.write_text(mqtt.read_text().replace(f"{CLIENT_ETC}/", f"{out}/clients/"))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "uplink", "run", "--site", SITE, "--mqtt", str(local),
         "--nats", str(nats_out / "site" / SITE / "uplink.toml")],
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def hub_messages(servers: list[str], password: str, expected: int, timeout_s: float):
    """Every message of the site's stream at the hub, once it holds `expected` (or timeout)."""
    connection = await nats.connect(servers, user="fleet", password=password)
    jetstream = connection.jetstream(domain=HUB_DOMAIN)
    deadline = time.monotonic() + timeout_s
    count = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            count = (await jetstream.stream_info(hub_stream(SITE))).state.messages
            if count >= expected:
                break
        await asyncio.sleep(0.5)
    messages = []
    for seq in range(1, count + 1):
        messages.append(await jetstream.get_msg(hub_stream(SITE), seq))
    await connection.close()
    return messages


def test_every_event_reaches_the_hub_once_in_order_across_a_cut_a_dead_hub_and_a_restart(
        tmp_path):
    """A hub of three nats-servers, a site (its Mosquitto on the generated config, three
    boards, the uplink process, the leaf node behind a WAN relay). The WAN is cut for CUT_S
    while events keep coming, one hub server is killed when it comes back, the uplink is
    killed and started again: every event is at the hub once, in each sender's order."""
    fleet, ports = fleet_inventory(tmp_path)
    nats_out = tmp_path / "nats"
    assert hearth(["uplink", "nats-config", "--fleet", str(fleet), "--out", str(nats_out)]) == 0
    advertise_nowhere(nats_out)
    leaf_conf = nats_out / "site" / SITE / "nats.conf"
    wan = leaf_behind_wan(leaf_conf, [ports[f"hub{n}l"] for n in (1, 2, 3)])
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = {f"hub{n}": start_nats(nats_out / "hub" / f"hub{n}" / "nats.conf",
                                       logs / f"hub{n}.log") for n in (1, 2, 3)}
    port = free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=port).replace(
        '[[leader]]', '[[board]]\nmodule = "m1"\nname = "b03"\n[[leader]]'))
    out = tmp_path / "mqtt"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--broker-etc", str(out / "broker")]) == 0
    broker = Mosquitto(out / "broker/mosquitto.conf", port, tmp_path / "mosquitto").start()
    boards = None
    try:
        deadline = time.monotonic() + 30
        while not hub_streams_made(fleet, nats_out):
            assert time.monotonic() < deadline, "the hub's cluster never made the stream"
            time.sleep(1)
        processes["leaf"] = start_nats(leaf_conf, logs / "leaf.log")
        processes["uplink"] = start_uplink(out, nats_out, logs / "uplink.log")
        deadline = time.monotonic() + 20  # its session exists before the boards speak
        while "session new" not in (logs / "uplink.log").read_text():
            assert time.monotonic() < deadline, (logs / "uplink.log").read_text()[-2000:]
            time.sleep(0.2)
        boards = Boards(port, out, ["b01", "b02", "b03"])
        time.sleep(5)
        wan.cut()
        time.sleep(CUT_S / 2)
        processes["uplink"].send_signal(signal.SIGKILL)  # mid-cut: its unacknowledged
        processes["uplink"].wait(10)                     # messages come again
        processes["uplink"] = start_uplink(out, nats_out, logs / "uplink.log")
        time.sleep(CUT_S / 2)
        wan.restore()
        time.sleep(2)
        processes["hub2"].send_signal(signal.SIGKILL)  # while the hub catches up
        time.sleep(5)
        boards.stop()
        password = tomllib.loads((nats_out / "credentials/fleet.toml").read_text())["nats"][
            "password"]
        servers = [f"nats://127.0.0.1:{ports[f'hub{n}c']}" for n in (1, 3)]
        messages = asyncio.run(hub_messages(servers, password, len(boards.sent), 30))
    finally:
        if boards is not None:
            boards.stop()
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        broker.stop()
    stored = []
    for message in messages:
        data = envelope.decode(message.data)
        topic = f"hearth/v1/{message.subject.split('.', 1)[1].replace('.', '/')}"
        assert message.headers[MSG_ID_HEADER] == f"{data['boot']}:{data['seq']}:{topic}"
        stored.append((data["boot"], data["seq"], topic))
    assert len(boards.sent) > 3 * EVENTS_PER_S * CUT_S * 0.8
    assert len(stored) == len(set(stored)), "an event is in the hub twice"
    assert sorted(stored) == sorted(boards.sent), "events missing at the hub"
    for sender in {(boot, topic) for boot, _, topic in boards.sent}:
        in_hub = [seq for boot, seq, topic in stored if (boot, topic) == sender]
        assert in_hub == sorted(in_hub), f"{sender} out of order at the hub"
    uplink_log = (logs / "uplink.log").read_text()
    assert "session resumed" in uplink_log, uplink_log[-2000:]
