"""Hypothesis against the real console socket: arbitrary bytes and JSON, any unicode (lone
surrogates too), huge and tiny numbers, deep nesting. The server never dies, answers every
request it can frame with exactly one line, a refused command changes nothing, and a fresh
client always gets in afterwards."""

import json
import socket
from contextlib import contextmanager

from hypothesis import HealthCheck, example, given, settings, strategies as st

from agent.config import load_config
from agent.console.commands import COMMANDS, CommandProcessor
from agent.console.spec import FLAGS_YES
from agent.console.transports import MAX_CLIENTS, SocketClient, SocketServer
from agent.console.wire import MAX_REQUEST
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

ANY_CHAR = st.characters(exclude_categories=())
"""Every code point, lone surrogates and control characters included."""
NUMBERS = st.one_of(
    st.integers(), st.floats(),
    st.builds(lambda sign, digits: sign * 10 ** digits, st.sampled_from([1, -1]),
              st.sampled_from([16, 17, 308, 309, 400, 1000])
              | st.integers(min_value=15, max_value=1000)),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 1e308, 2.0 ** 53 + 1, 2 ** 53 + 1, 1e16]))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(ANY_CHAR, max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(ANY_CHAR, max_size=8), children, max_size=4),
    max_leaves=12)
NAMES = st.sampled_from([command.name for command in COMMANDS]) | st.text(ANY_CHAR, max_size=12)
ARG_NAMES = st.sampled_from(sorted({arg.name for command in COMMANDS for arg in command.args}))
WORDS = st.one_of(
    NAMES, ARG_NAMES, st.sampled_from(["for", "--json", "start", "safe", "auto", "hold", "power",
                                       "nan", "-inf", "1e400", "1_0", "0x3", "\u0663",
                                       "\uff13", "\u0968", "4", "4.5", "3e0", "-0"]),
    NUMBERS.map(str), st.text(ANY_CHAR, max_size=10))
TYPED_LINES = st.lists(WORDS, min_size=1, max_size=5).map(" ".join) | st.text(ANY_CHAR,
                                                                               max_size=300)
REQUESTS = st.fixed_dictionaries({}, optional={
    "line": TYPED_LINES | JSON_VALUES,
    "command": NAMES | JSON_VALUES,
    "args": st.dictionaries(ARG_NAMES | st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=3)
    | JSON_VALUES,
    # Never true: a confirmed destructive command (shutdown) is a real, accepted change.
    "confirmed": st.just(False) | JSON_VALUES.filter(lambda value: value is not True),
    "source": st.sampled_from(["socket", "serial", "leader", "operator"]) | JSON_VALUES,
    "prompt": JSON_VALUES,
    "extra": JSON_VALUES,
}).map(lambda request: {("x" + key if key == "extra" else key): value
                        for key, value in request.items()})

COMMAND_REQUESTS = st.sampled_from(COMMANDS).flatmap(lambda command: st.fixed_dictionaries({
    "command": st.just(command.name),
    "args": st.fixed_dictionaries({}, optional={arg.name: NUMBERS | JSON_VALUES
                                                for arg in command.args})}))
"""A real command with hostile values for its real arguments."""


def nested(depth: int, inside: bool) -> bytes:
    body = b"[" * depth + b"]" * depth
    return b'{"command": "status", "args": ' + body + b"}" if inside else body


def encoded(value, ascii_only: bool) -> bytes:
    """JSON as a client might send it: \\u escapes, or raw UTF-8 with surrogates let through
    (which is not UTF-8)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


PAYLOADS = st.one_of(
    st.binary(max_size=600),
    st.builds(encoded, JSON_VALUES, st.booleans()),
    st.builds(encoded, REQUESTS, st.booleans()),
    st.builds(encoded, COMMAND_REQUESTS, st.booleans()),
    st.builds(encoded, st.fixed_dictionaries({"line": TYPED_LINES}), st.booleans()),
    st.builds(nested, st.integers(min_value=1, max_value=12)
              | st.integers(min_value=900, max_value=3000), st.booleans()),
).map(lambda raw: raw.replace(b"\n", b""))


def board_state(agent, processor) -> tuple:
    """What a refused command must leave as it was: setpoint, mode, latched faults, and the
    console's own state. Events other than the record of a refusal (`setpoint_rejected`: a
    setpoint within the argument's 0-15 W but outside this board's range) count as changes."""
    now = agent.clock()
    return (agent.setpoints.current_w(now), agent.setpoints.status, agent.supervisor.mode,
            dict(agent.supervisor.latched), agent.supervisor.shutdown.started,
            processor.request.source, processor.override_until, processor.tune,
            processor.calibration,
            [e for e in agent.events.events if e.cause != "setpoint_rejected"])


@contextmanager
def served_board(directory):
    """A board with a latched fault (a SoC heat burst), so a refused `reset` that cleared it
    anyway would show; its console socket served by the real SocketServer."""
    simulated = SimulatedAgent(directory, SimClock())
    simulated.run_for(15)
    simulated.board.plant.soc_c = 78.5
    simulated.run_for(2)
    assert simulated.agent.supervisor.latched, "the heat burst latched no fault"
    processor = CommandProcessor(simulated.agent, load_config(simulated.config_path),
                                 board_id="b07", run_command=simulated.poweroff_commands.append)
    server = SocketServer(processor, directory / "console.sock")
    server.start()
    try:
        yield simulated, processor, server
    finally:
        server.stop()
        processor.close()
        simulated.agent.close()


def read_line(replies) -> dict:
    line = replies.readline()
    assert line.endswith(b"\n"), f"no complete answer: {line[-200:]!r}"
    answer = json.loads(line)
    assert isinstance(answer, dict) and ("result" in answer or "prompt" in answer), answer
    return answer


def test_the_socket_survives_anything_and_refusals_change_nothing(sim_dir):
    with served_board(sim_dir) as (simulated, processor, server):
        agent = simulated.agent

        @settings(max_examples=500, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(PAYLOADS)
        @example(b'{"command": "setpoint", "args": {"watts": 1' + b"0" * 400 + b"}}")
        @example(b'{"command": "setpoint", "args": {"watts": "\\u0663"}}')
        @example(b'{"line": "mode\\u001csafe"}')
        @example(nested(2000, True))
        def one_request(payload):
            if any(flag.encode() in payload.split() for flag in FLAGS_YES):
                return  # "shutdown --yes" is a confirmed, accepted shutdown: not garbage
            before = board_state(agent, processor)
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(10.0)
            with connection:
                connection.connect(str(server.path))
                replies = connection.makefile("rb")
                connection.sendall(payload + b"\n")
                answer = read_line(replies)
                if len(payload) + 1 > MAX_REQUEST:
                    assert replies.readline() == b"", "more than one answer"
                else:
                    connection.sendall(b'{"prompt": true}\n')
                    assert "prompt" in read_line(replies), "more than one answer"
            if "result" in answer and not answer["result"]["ok"]:
                assert answer["result"]["reason"], answer
                assert board_state(agent, processor) == before, (payload[:200], answer)
            assert server.thread.is_alive()

        one_request()
        assert simulated.poweroff_commands == []
        assert server.refused_requests > 0 and processor.refused_commands > 0

        idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CLIENTS)]
        try:
            for connection in idle:
                connection.connect(str(server.path))
            reply = SocketClient(server.path, timeout_s=5.0).request({"line": "status --json"})
            assert reply["result"]["ok"], reply
        finally:
            for connection in idle:
                connection.close()
