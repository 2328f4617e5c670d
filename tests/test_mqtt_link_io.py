"""The Link's network I/O is a constructor parameter (issue 16, shape 3): paho's own thread for
a board, leader or site, or one NetworkLoop for many Links in the simulator. These keep that
shape: both strategies offer what the Link calls, the Link does its I/O only through the one it
was given, and the runtime's roles never load the simulator's loop."""

import inspect
import json
import subprocess
import sys
import time
import uuid

import pytest

from agent.mqtt.link import Link, LinkIo, LinkSettings, ThreadedIo
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.outbox import Outbox

RUNTIME_ROLES = ("agent.commands.agent_cmd", "agent.commands.leader", "agent.commands.site",
                 "agent.mqtt.board_link", "agent.leader.role", "agent.site.role")
"""What a board, a leader or a site in the field imports to talk MQTT."""


def link_io_methods() -> list[str]:
    return [name for name, member in vars(LinkIo).items()
            if inspect.isfunction(member) and not name.startswith("_")]


def parameter_names(method) -> list[str]:
    return list(inspect.signature(method).parameters)


def test_link_io_names_every_call_the_link_makes():
    assert sorted(link_io_methods()) == ["add", "backoff", "connected", "flush", "remove",
                                         "wait_for_publish"]


@pytest.mark.parametrize("strategy", [ThreadedIo, NetworkLoop])
@pytest.mark.parametrize("method", link_io_methods())
def test_each_strategy_offers_what_the_link_calls(strategy, method):
    assert parameter_names(getattr(strategy, method)) == parameter_names(getattr(LinkIo, method))


class RecordingIo(ThreadedIo):
    """paho's own thread, noting each call the Link makes of it."""

    def __init__(self):
        self.calls: list[str] = []

    def add(self, client, reconnect_min_s, reconnect_max_s):
        self.calls.append("add")
        super().add(client, reconnect_min_s, reconnect_max_s)

    def flush(self, client):
        self.calls.append("flush")

    def connected(self, client):
        self.calls.append("connected")

    def wait_for_publish(self, info, timeout_s):
        self.calls.append("wait_for_publish")
        super().wait_for_publish(info, timeout_s)

    def remove(self, client, timeout_s):
        self.calls.append("remove")
        super().remove(client, timeout_s)


def test_a_link_does_its_io_through_the_strategy_it_was_given(mosquitto, tmp_path):
    broker = mosquitto()
    io = RecordingIo()
    link = Link(LinkSettings("127.0.0.1", broker.port), client_id=f"io-{uuid.uuid4().hex[:8]}",
                outbox=Outbox(tmp_path / "outbox"), boot=str(uuid.uuid4()),
                status_topic="io/status", io=io)
    assert link.io is io
    link.start()
    deadline = time.monotonic() + 10
    while not link.connected:
        assert time.monotonic() < deadline, "the link did not connect"
        time.sleep(0.02)
    link.publish("io/event", {"n": 1}, qos=1)
    while not link.idle():
        assert time.monotonic() < deadline, "the kept message was not acknowledged"
        time.sleep(0.02)
    link.close()
    assert io.calls[:2] == ["add", "connected"]
    assert "flush" in io.calls[2:]  # the kept message, handed to paho
    assert io.calls[-3:] == ["wait_for_publish", "flush", "remove"]  # offline, DISCONNECT


def test_a_link_without_a_strategy_uses_pahos_own_thread(tmp_path):
    link = Link(LinkSettings("127.0.0.1"), client_id="default", outbox=Outbox(tmp_path),
                boot="b")
    assert type(link.io) is ThreadedIo


LOADED_BY_THE_ROLES = f"""
import json, sys
for name in {RUNTIME_ROLES!r}:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_runtime_roles_never_load_the_network_loop():
    """A board, leader or site in the field runs paho's own thread; the shared loop is the
    simulator's and the benchmarks'."""
    result = subprocess.run([sys.executable, "-c", LOADED_BY_THE_ROLES], capture_output=True,
                            text=True, timeout=60, check=True)
    modules = json.loads(result.stdout)
    assert "agent.mqtt.link" in modules
    assert "agent.mqtt.network_loop" not in modules
