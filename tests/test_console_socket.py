"""The console socket as a hostile local client sees it: requests it cannot represent are refused
with one answer each and the connection goes on; idle clients never lock a technician out."""

import json
import socket
import time

import pytest

from agent.config import load_config
from agent.console.commands import CommandProcessor
from agent.console.transports import MAX_CLIENTS, SocketClient, SocketServer
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent


@pytest.fixture
def server(sim_dir):
    """A SocketServer on a simulated board; the processor calls the agent directly (the test
    does not step the agent while a request runs)."""
    simulated = SimulatedAgent(sim_dir, SimClock())
    simulated.run_for(15)
    processor = CommandProcessor(simulated.agent, load_config(simulated.config_path),
                                 board_id="b07", run_command=simulated.poweroff_commands.append)
    serving = SocketServer(processor, sim_dir / "console.sock")
    serving.start()
    yield serving
    serving.stop()
    processor.close()
    simulated.agent.close()


def connect(path) -> tuple[socket.socket, object]:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(5.0)
    connection.connect(str(path))
    return connection, connection.makefile("rb")


def ask(connection, replies, raw: bytes) -> dict:
    connection.sendall(raw + b"\n")
    line = replies.readline()
    assert line.endswith(b"\n"), f"no answer to {raw[:80]!r}: got {line!r}"
    return json.loads(line)


UNREPRESENTABLE = [
    (b'{"command": "setpoint", "args": {"watts": 1' + b"0" * 400 + b"}}",
     "integer of 401 digits"),
    (b'{"command": "setpoint", "args": {"watts": 1e400}}', "not a finite number"),
    (b'{"command": "setpoint", "args": {"watts": NaN}}', "not a finite number"),
    (b'{"command": "setpoint", "args": {"watts": -Infinity}}', "not a finite number"),
    (b"[" * 2000 + b"]" * 2000, "nested deeper than"),
    (b'{"command": "status", "args": ' + b"[" * 1500 + b"]" * 1500 + b"}", "nested deeper than"),
    (b'{"line": "status \\ud800"}', "lone surrogate"),
    (b'{"line": "status", "\\udfff": 1}', "lone surrogate"),
    (b'{"line": "status \xed\xa0\x80"}', "not UTF-8"),
    (b'{"line": "status", "confirmed": "yes"}', "confirmed must be true or false"),
    (b'{"line": ["status"]}', "line must be text"),
    (b'{"lines": "status"}', "unknown key 'lines'"),
    (b'{"command": "setpoint", "args": [4]}', "args must be an object"),
    (b'"status"', "not a JSON object"),
]


def test_unrepresentable_requests_are_refused_with_one_answer_each(server):
    connection, replies = connect(server.path)
    with connection:
        for raw, reason in UNREPRESENTABLE:
            answer = ask(connection, replies, raw)
            assert answer["result"]["ok"] is False, raw[:80]
            assert reason in answer["result"]["reason"], (raw[:80], answer)
        assert ask(connection, replies, b'{"prompt": true}') == {"prompt": "hearth b07 NORMAL> "}
    assert server.refused_requests == len(UNREPRESENTABLE)


def test_json_requests_take_json_numbers_only(server):
    connection, replies = connect(server.path)
    with connection:
        for watts in (b'"3"', '"\u0663"'.encode(), b"true"):
            answer = ask(connection, replies,
                         b'{"command": "setpoint", "args": {"watts": ' + watts + b"}}")
            assert not answer["result"]["ok"]
            assert "watts = " in answer["result"]["reason"]
        answer = ask(connection, replies, b'{"command": "setpoint", "args": {"watts": 4}}')
        assert answer["result"]["ok"], answer


def test_idle_clients_never_lock_a_technician_out(server):
    """Policy: when all places are taken, the client idle longest is told why and dropped."""
    idle = [connect(server.path) for _ in range(MAX_CLIENTS)]
    idle[-1][0].sendall(b'{"line": "sta')   # half a request, then silence
    time.sleep(0.2)
    try:
        for _ in range(MAX_CLIENTS + 2):
            reply = SocketClient(server.path, timeout_s=5.0).request({"line": "status --json"})
            assert reply["result"]["ok"], reply
        connection, replies = idle[0]
        notice = json.loads(replies.readline())
        assert "dropped: idle" in notice["result"]["reason"], notice
        assert replies.readline() == b""
    finally:
        for connection, _ in idle:
            connection.close()
