"""The board's side of the MQTT contract on a real Mosquitto: state and events out, setpoint,
interlock and commands in, the Last Will on a SIGKILL, and a 10-minute (simulated) broker outage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from agent.config import load_config
from agent.console.commands import CommandProcessor
from agent.console.loop import LoopMailbox
from agent.mqtt.board_link import BoardConnection, connect_board
from agent.deploy.broker_config import mosquitto_hash
from agent.mqtt.link import LOGIN_REFUSED, Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.safety.events import Event
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.mosquitto import Mosquitto, free_port
from test_mqtt_link import Listener, _link

EPOCH = 1_790_000_000.0


class Board:
    """A simulated board with its MQTT link and the console's command processor, stepped by
    the test; the processor's mailbox is serviced in the agent's tick, as in `hearth agent`."""

    def __init__(self, broker, directory, name="b01", keep_ram=256):
        self.clock = SimClock()
        self.sim = SimulatedAgent(directory / name, self.clock)
        self.agent = self.sim.agent
        mailbox = LoopMailbox()
        self.processor = CommandProcessor(self.agent, load_config(self.sim.config_path),
                                          run_in_loop=mailbox.call)
        self.agent.add_input(self, mailbox.service)
        self.topics = BoardTopics("s1", "m1", name)
        self.raised = []
        self.agent.subscribe_events(self, self.raised.append)
        self.link = connect_board(self.agent, BoardConnection(
            LinkSettings(broker.host, broker.port, keepalive_s=5, reconnect_max_s=1),
            self.topics, directory / name / "outbox", lambda: EPOCH + self.clock(),
            keep_ram=keep_ram), commands=self.processor)

    def step(self, seconds=0.1):
        self.sim.run_for(seconds)


def _board_and_listener(mosquitto, tmp_path, **kwargs):
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    board = Board(broker, tmp_path, **kwargs)
    listener.wait(lambda: board.link.link.connected, step=board.step)
    return broker, listener, board


def test_state_events_and_status_follow_the_contract(mosquitto, tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    board.step(20.0)
    listener.wait(lambda: board.link.link.idle() and len(listener.on(board.topics.state)) >= 15,
                  step=board.step)
    state = listener.on(board.topics.state)[-1]
    contract = {"mode", "setpoint_w", "setpoint_source", "power_w", "command_w", "selected",
                "soc_c", "oil_c", "water_in_c", "water_out_c", "flow_l_per_min", "heat_w",
                "min_w", "max_w", "faults", "energy_electric_wh", "energy_heat_wh", "overruns"}
    assert contract <= state.keys() and {"v", "boot", "seq", "ts"} <= state.keys()
    assert state["mode"] == "NORMAL" and state["setpoint_source"] == "fallback"
    assert 2.0 < state["power_w"] < 6.5 and state["energy_electric_wh"] > 0
    events = listener.on(board.topics.event)
    assert [e["cause"] for e in events] == [e.cause for e in board.raised]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (board.topics.status, b"online") in listener.received
    board.link.close()
    listener.wait(lambda: listener.received[-1] == (board.topics.status, b"offline"))
    listener.close()


def test_leader_setpoint_and_interlock_reach_the_agent(mosquitto, tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    leader = _link(broker, tmp_path, "leader")
    leader.start()
    board.step(30.0)
    assert board.agent.supervisor.mode.value == "NORMAL"
    leader.publish(board.topics.setpoint, {"setpoint_w": 4.5}, qos=1)
    listener.wait(lambda: board.agent.setpoints.status == "leader", step=board.step)
    assert board.agent.setpoint_w == 4.5
    leader.publish(board.topics.interlock, {"active": True, "reason": "module flow lost"},
                   qos=1, retain=True)
    reports = []
    while not board.agent.supervisor.interlock_reason:
        assert len(reports) < 100, "the interlock never reached the agent"
        reports.append(board.agent.tick())
        time.sleep(0.01)
    # The tick that took the message in was already SAFE: within one loop period.
    assert board.agent.supervisor.interlock_reason == "module flow lost"
    assert reports[-1].mode == "SAFE" and reports[-1].command_w == 0.0
    assert all(report.mode == "NORMAL" for report in reports[:-1])
    leader.publish(board.topics.interlock, {"active": False, "reason": ""}, qos=1, retain=True)
    listener.wait(lambda: not board.agent.supervisor.interlock_reason, step=board.step)
    for link in (leader, board.link, listener):
        link.close()


def _openssl(*arguments) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True)


def _tls_material(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as a site has."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", directory / "ca.key", "-out", directory / "ca.crt",
             "-days", "2", "-subj", "/CN=test site CA")
    for name, extensions in (("server", "subjectAltName=IP:127.0.0.1"),
                             ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(extensions + "\n")
        _openssl("req", *ec, "-keyout", directory / f"{name}.key", "-out",
                 directory / f"{name}.csr", "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", directory / f"{name}.csr", "-CA", directory / "ca.crt",
                 "-CAkey", directory / "ca.key", "-CAcreateserial", "-days", "2", "-out",
                 directory / f"{name}.crt", "-extfile", directory / f"{name}.ext")


def _authenticated_broker(directory: Path, passwords: dict[str, str]) -> Mosquitto:
    """Mosquitto as a site runs it: TLS with client certificates, accounts, an ACL keeping the
    board to its own topics."""
    _tls_material(directory)
    (directory / "passwd").write_text("".join(f"{user}:{mosquitto_hash(password)}\n"
                                              for user, password in passwords.items()))
    (directory / "acl").write_text("user m1.b01\ntopic readwrite hearth/v1/s1/m1/b01/#\n"
                                   "user operator\ntopic read hearth/#\n")
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous false", "persistence false",
        f"password_file {directory}/passwd", f"acl_file {directory}/acl",
        f"cafile {directory}/ca.crt", f"certfile {directory}/server.crt",
        f"keyfile {directory}/server.key", "require_certificate true",
        f"log_dest file {directory}/mosquitto.log", *(["user root"] if os.geteuid() == 0 else [])
    ]) + "\n")
    return Mosquitto(config, port, directory / "mosquitto.log").start()


def _board_config(directory: Path, broker: Mosquitto, password: str) -> Path:
    """The [mqtt] and [identity] a deployed board has, its password in a credentials file."""
    credentials = directory / f"credentials-{password}.toml"
    credentials.write_text(f'[mqtt]\nusername = "m1.b01"\npassword = "{password}"\n')
    config = directory / f"hearth-{password}.toml"
    config.write_text(f'[identity]\nsite = "s1"\nmodule = "m1"\nboard = "b01"\n[mqtt]\n'
                      f'brokers = ["127.0.0.1:{broker.port}"]\nusername = "m1.b01"\n'
                      f'password_file = "{credentials}"\nca_file = "{directory}/ca.crt"\n'
                      f'cert_file = "{directory}/client.crt"\n'
                      f'key_file = "{directory}/client.key"\n')
    return config


def test_a_simulated_board_logs_in_to_an_authenticated_tls_broker_with_its_config(tmp_path):
    """`hearth agent --sim --config` takes the config's [mqtt] account, password file and
    certificates, as a deployed board does; with a wrong password it says that the broker
    refused the login, once, instead of retrying in silence."""
    broker = _authenticated_broker(tmp_path, {"m1.b01": "right", "operator": "op"})
    try:
        operator = Link(LinkSettings("127.0.0.1", broker.port, ca_file=str(tmp_path / "ca.crt"),
                                     cert_file=str(tmp_path / "client.crt"),
                                     key_file=str(tmp_path / "client.key"),
                                     username="operator", password="op", reconnect_max_s=1),
                        client_id="operator", outbox=Outbox(tmp_path / "operator"), boot="op")
        heard: list[tuple[str, bytes]] = []
        operator.subscribe("hearth/v1/s1/m1/b01/#",
                           lambda message: heard.append((message.topic, message.payload)))
        operator.start()
        topics = BoardTopics("s1", "m1", "b01")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "agent", "--sim", "--quiet", "--config",
             str(_board_config(tmp_path, broker, "right")), "--sim-dir", str(tmp_path / "sim")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not any(topic == topics.state for topic, _ in heard):
                assert time.monotonic() < deadline, f"no state from the board; heard {heard}"
                operator.poll(0.1)
            assert (topics.status, b"online") in heard
        finally:
            agent.terminate()
            agent.wait(timeout=10)
        refused = subprocess.run(
            [sys.executable, "-m", "agent", "agent", "--sim", "--quiet", "--duration", "6",
             "--config", str(_board_config(tmp_path, broker, "wrong")), "--sim-dir",
             str(tmp_path / "sim2")], capture_output=True, text=True, timeout=60)
        said = refused.stdout + refused.stderr
        lines = [line for line in said.splitlines()
                 if "refused the login of MQTT account m1.b01" in line]
        # Said once as the board's event and once in the log, for all of its retries.
        assert len(lines) == 2 and sum(LOGIN_REFUSED in line for line in lines) == 1, said
        assert "password_file" in lines[0] and "hearth-s1-m1-b01" in lines[0]
        attempts = (tmp_path / "mosquitto.log").read_text().count("not authorised")
        assert attempts >= 2, "the board did not retry, so once proves nothing"
        operator.close()
    finally:
        broker.stop()


def test_sigkill_leaves_offline_from_the_last_will(mosquitto, tmp_path):
    broker = mosquitto()
    status = BoardTopics("sim", "m1", "b09").status
    listener = Listener(broker, tmp_path, status)
    listener.wait(lambda: listener.link.connected)
    time.sleep(0.2)  # the subscription goes out on connect
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--sim", "--quiet", "--mqtt",
         f"{broker.host}:{broker.port}", "--identity", "sim/m1/b09", "--sim-dir",
         str(tmp_path / "sim")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listener.wait(lambda: listener.received[-1:] == [(status, b"online")], timeout_s=30)
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        killed_at = time.monotonic()
        listener.wait(lambda: listener.received[-1] == (status, b"offline"), timeout_s=15)
        print(f"Last Will seen {time.monotonic() - killed_at:.2f} s after SIGKILL")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    late = Listener(broker, tmp_path, status, name="late")
    late.wait(lambda: late.received == [(status, b"offline")])  # retained
    assert agent.returncode == -signal.SIGKILL
    listener.close()
    late.close()


def test_ten_minute_broker_outage_loses_no_event_and_shows_telemetry_gaps(mosquitto, tmp_path):
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    boards = [Board(broker, tmp_path, f"b{n:02d}", keep_ram=16) for n in (1, 2)]

    def step_all(seconds=0.1):
        for board in boards:
            board.step(seconds)

    listener.wait(lambda: all(b.link.link.connected for b in boards), step=step_all)
    step_all(10.0)
    listener.wait(lambda: all(b.link.link.idle() for b in boards), step=step_all)
    broker.stop()
    listener.wait(lambda: not any(b.link.link.connected for b in boards), step=step_all)
    outage_start = [EPOCH + b.clock() for b in boards]
    for second in range(600):
        step_all(1.0)
        if second % 10 == 0:
            for board in boards:  # each a real "setpoint_rejected" safety event
                board.agent.set_setpoint(99.0, "leader")
    assert all(b.link.link.outbox.spilled > 0 for b in boards)  # RAM held 16, the rest spilled
    outage_end = [EPOCH + b.clock() for b in boards]
    broker.start()
    listener.ready("hearth/probe2")
    # every board's backlog acknowledged by the broker, and through to the listener
    listener.wait(lambda: all(b.link.link.idle() for b in boards)
                  and all(len(listener.on(b.topics.event)) >= len(b.raised) for b in boards),
                  step=step_all, timeout_s=60)
    for board, start, end in zip(boards, outage_start, outage_end):
        events = listener.on(board.topics.event)
        assert [e["cause"] for e in events] == [e.cause for e in board.raised]
        assert [e["seq"] for e in events] == list(range(1, len(board.raised) + 1))
        during = [e for e in events if start < e["ts"] <= end]
        assert len(during) >= 60 and all(e.get("hist") is True for e in during)
        states = listener.on(board.topics.state)
        seqs = [s["seq"] for s in states]
        assert seqs == sorted(set(seqs))
        gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:]) if b - a > 1]
        # Telemetry RAM holds the newest 64 states; each dropped one is a gap in seq, no more.
        dropped = board.link.link.outbox.telemetry_dropped
        assert sum(gaps) == dropped > 400
        assert any(s.get("hist") for s in states)
        print(f"{board.topics.board}: {len(events)} events, {len(during)} raised during the "
              f"outage, all delivered once in order; {len(states)} states received, "
              f"{sum(gaps)} missing by seq")
    for link in [b.link for b in boards] + [listener]:
        link.close()


_BASE = {"v": 1, "boot": "fuzz", "id": "c1", "by": "operator"}
_NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.text(),
                     st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@st.composite
def _bad_commands(draw):
    """(command name, raw payload or envelope fields) pairs that must each be rejected, never
    run; the test adds a fresh seq and the board's time to the fields."""
    kind = draw(st.sampled_from(["garbage", "json", "envelope", "sender", "args", "range",
                                 "unknown", "hist"]))
    name = draw(st.sampled_from(["setpoint", "mode", "reset", "identify", "tune"]))
    body = dict(_BASE)
    if kind == "garbage":
        return name, draw(st.binary(max_size=64))
    if kind == "json":
        return name, json.dumps(draw(st.one_of(_NUMBERS, st.lists(_NUMBERS))))
    if kind == "envelope":
        key = draw(st.sampled_from(["v", "id"]))
        bad = draw(_NUMBERS.filter(lambda value: value != 1 and not isinstance(value, str)
                                   or key == "v" and value != 1))
        if key == "id" and isinstance(bad, str):
            bad = None
        body[key] = bad
        if key == "v" and bad is None:
            del body["v"]
    elif kind == "sender":
        body["by"] = draw(st.one_of(st.sampled_from(["leader", "site", "", "serial"]), _NUMBERS))
        if body["by"] == "leader":
            name = draw(st.sampled_from(["mode", "reset", "tune"]))  # operator-only
    elif kind == "args":
        body["args"] = draw(st.one_of(_NUMBERS, st.lists(_NUMBERS)))
    elif kind == "range":
        name, args = draw(st.sampled_from([
            ("setpoint", {"watts": draw(st.one_of(st.floats(min_value=15.01, max_value=1e9),
                                                  st.floats(max_value=-0.01, min_value=-1e9),
                                                  st.text(max_size=5), st.booleans()))}),
            ("setpoint", {"watts": 4.0, "extra": draw(_NUMBERS)}),
            ("mode", {"mode": draw(st.text(max_size=8).filter(
                lambda text: text not in ("auto", "safe", "hold")))}),
            ("tune", {"loop": draw(st.text(max_size=8).filter(
                lambda text: text not in ("power", "soc", "stop")))}),
            ("identify", {"seconds": draw(st.one_of(st.floats(min_value=600.5, max_value=1e9),
                                                    st.floats(max_value=0.99,
                                                              min_value=-1e9)))}),
        ]))
        body["args"] = args
    elif kind == "unknown":
        name = draw(st.sampled_from(["shutdown", "reboot", "selftest", "help", "nope",
                                     "config show"]))
        body["args"] = {}
    else:
        body["args"] = {"watts": 4.0}
        body["hist"] = True
    return name, body


def _board_state(board):
    agent, processor = board.agent, board.processor
    return (agent.setpoints._leader_w, agent.setpoints._local_w, agent.supervisor.interlock_reason,
            dict(agent.supervisor.latched), processor.request.source, processor.override_until,
            processor.tune is None, processor.led is None)


def test_fuzzed_commands_are_each_rejected_with_a_reason_and_change_nothing(mosquitto,
                                                                           tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    sender = listener.link
    board.step(10.0)
    before = _board_state(board)
    counted = [0]

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_bad_commands())
    def check(command):
        name, payload = command
        counted[0] += 1
        if isinstance(payload, dict):
            payload = json.dumps({"seq": counted[0], "ts": EPOCH + board.clock(), **payload})
        sender._client.publish(board.topics.command(name), payload, qos=1)
        listener.wait(lambda: len(listener.on(board.topics.reply)) == counted[0],
                      step=board.step)
        reply = listener.on(board.topics.reply)[-1]
        assert reply["status"] == "rejected", (name, payload, reply)
        assert len(reply["reason"]) > 5
        assert _board_state(board) == before

    check()
    assert board.link.link.connected and board.agent.supervisor.mode.value == "NORMAL"
    for link in (board.link, listener):
        link.close()


# -- hostile and stale input: decoded once at the boundary, rejected there, never fatal ---------

def _command(board, *, seq, id="c1", by="operator", args=None, boot="operator-boot",
             age_s=0.0, **fields) -> bytes:
    """A command as an operator's tool sends it: json.dumps escapes (ensure_ascii) what it
    cannot write, so a lone surrogate travels as the six characters \\ud800."""
    body = {"v": 1, "boot": boot, "seq": seq, "ts": EPOCH + board.clock() - age_s, "id": id,
            "by": by, "args": {"watts": 4.0} if args is None else args, **fields}
    return json.dumps(body).encode()


def _replies(listener, board):
    return listener.on(board.topics.reply)


def test_a_lone_surrogate_is_rejected_at_the_envelope_and_the_board_keeps_running(mosquitto,
                                                                                 tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    board.step(5.0)
    setpoint_before = board.agent.setpoint_w
    sender = listener.link._client
    payloads = [_command(board, seq=1, id="\ud800"),
                _command(board, seq=2, id="ok-1", args={"watts": 4.0, "\udc00": 1}),
                _command(board, seq=3, id="ok-2", by="operator\udfff")]
    for payload in payloads:
        assert b"\\ud" in payload
        sender.publish(board.topics.command("setpoint"), payload, qos=1)
    listener.wait(lambda: len(_replies(listener, board)) == 3, step=board.step)
    for reply in _replies(listener, board):
        assert reply["status"] == "rejected" and reply["id"] is None
        assert "surrogate" in reply["reason"], reply
    assert board.agent.setpoint_w == setpoint_before
    assert board.link.rejected["command"] == 3
    board.step(2.0)  # ticks on, nothing poisoned waits in the outbox
    assert board.link.link.outbox.unencodable == 0
    for link in (board.link, listener):
        link.close()


def test_an_interlock_or_setpoint_that_cannot_be_represented_changes_nothing(mosquitto,
                                                                            tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    leader = _link(broker, tmp_path, "leader")
    leader.start()
    board.step(30.0)
    listener.wait(lambda: leader.connected)
    raw = leader._client
    raw.publish(board.topics.interlock, b'{"v":1,"boot":"l","seq":1,"ts":1,"active":true,'
                b'"reason":"\\ud800 flow lost"}', qos=1)
    raw.publish(board.topics.setpoint, b'{"v":1,"boot":"l","seq":2,"ts":1,"setpoint_w":1'
                + b"0" * 400 + b"}", qos=1)
    raw.publish(board.topics.setpoint, b'{"v":1,"boot":"l","seq":3,"ts":1,"setpoint_w":1e400}',
                qos=1)
    listener.wait(lambda: sum(board.link.rejected.values()) == 3, step=board.step)
    assert board.link.rejected == {"interlock": 1, "setpoint": 2}
    assert board.agent.supervisor.interlock_reason == ""
    assert board.agent.setpoints.status == "fallback"
    assert board.link.link.handler_errors == 0
    listener.wait(lambda: any(e["cause"] == "mqtt:rejected"
                              for e in listener.on(board.topics.event)), step=board.step)
    board.step(2.0)
    assert board.agent.supervisor.mode.value == "NORMAL"
    for link in (leader, board.link, listener):
        link.close()


def test_a_retained_or_stale_command_is_never_run(mosquitto, tmp_path):
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    topics = BoardTopics("s1", "m1", "b01")
    # Left retained on the broker years ago: it must not run at this (or any) start.
    retained = json.dumps({"v": 1, "boot": "op", "seq": 1, "ts": 1_000_000_000.0, "id": "old-1",
                           "by": "operator", "args": {"watts": 4.0}}).encode()
    listener.link._client.publish(topics.command("setpoint"), retained, qos=1, retain=True)
    listener.link._client.publish(topics.setpoint, b'{"v":1,"boot":"l","seq":1,"ts":1,'
                                  b'"setpoint_w":4.5}', qos=1, retain=True)
    listener.wait(lambda: len(listener.on(topics.command("setpoint"))) == 1)
    board = Board(broker, tmp_path)
    listener.wait(lambda: len(_replies(listener, board)) == 1, step=board.step)
    reply = _replies(listener, board)[0]
    assert reply["status"] == "rejected" and "retained" in reply["reason"], reply
    assert board.agent.setpoints.status == "fallback"  # the retained leader setpoint ignored
    sender = listener.link._client
    sender.publish(board.topics.command("setpoint"),
                   _command(board, seq=1, id="late-1", age_s=3600.0), qos=1)
    sender.publish(board.topics.command("setpoint"),
                   _command(board, seq=2, id="no-ts-1", ts=None), qos=1)
    listener.wait(lambda: len(_replies(listener, board)) == 3, step=board.step)
    late, no_ts = _replies(listener, board)[1:]
    assert late["status"] == "rejected" and "old" in late["reason"], late
    assert no_ts["status"] == "rejected" and "'ts'" in no_ts["reason"], no_ts
    assert board.agent.setpoints._local_w is None
    board.step(3.0)
    assert len(_replies(listener, board)) == 3
    for link in (board.link, listener):
        link.close()


def test_a_repeated_boot_and_seq_is_dropped_and_a_reused_id_is_not_run(mosquitto, tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    board.step(5.0)
    sender = listener.link._client
    topic = board.topics.command("setpoint")
    sender.publish(topic, _command(board, seq=5, id="a1", args={"watts": 4.0}), qos=1)
    listener.wait(lambda: len(_replies(listener, board)) == 1, step=board.step)
    assert _replies(listener, board)[0]["status"] == "accepted"
    assert board.agent.setpoint_w == 4.0
    # the same (boot, seq) again with a new id: a duplicate on the wire, dropped unanswered
    sender.publish(topic, _command(board, seq=5, id="a2", args={"watts": 5.0}), qos=1)
    # the same id with other content: not run, and said so
    sender.publish(topic, _command(board, seq=6, id="a1", args={"watts": 5.0}), qos=1)
    # the same id with the same content (a retry): the first answer again, not run twice
    sender.publish(topic, _command(board, seq=7, id="a1", args={"watts": 4.0}), qos=1)
    listener.wait(lambda: len(_replies(listener, board)) == 3, step=board.step)
    board.step(2.0)
    first, reused, retried = _replies(listener, board)
    assert [r["id"] for r in (first, reused, retried)] == ["a1", "a1", "a1"]
    assert reused["status"] == "rejected" and "duplicate id" in reused["reason"], reused
    assert retried["status"] == "accepted" and retried["data"] == first["data"]
    assert board.agent.setpoint_w == 4.0
    assert board.link.duplicates == 1
    for link in (board.link, listener):
        link.close()


class _BrokenRunner:
    """A command runner that fails the way a bug would (the console's processor promises
    never to raise; this is the guard for when a promise breaks)."""

    def execute(self, name, args, source, confirmed=False):
        raise RuntimeError("processor bug \ud800")


def test_a_failing_command_handler_becomes_a_rejected_reply_and_an_event(mosquitto, tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    board.link.commands = _BrokenRunner()
    board.step(5.0)
    listener.link._client.publish(board.topics.command("setpoint"), _command(board, seq=1),
                                  qos=1)
    listener.wait(lambda: len(_replies(listener, board)) == 1, step=board.step)
    reply = _replies(listener, board)[0]
    assert reply["status"] == "rejected" and "RuntimeError" in reply["reason"], reply
    assert "\\ud800" in reply["reason"]  # the unencodable part shown, not sent raw
    listener.wait(lambda: any(e["cause"] == "mqtt:handler_failed"
                              for e in listener.on(board.topics.event)), step=board.step)
    board.step(1.0)
    for link in (board.link, listener):
        link.close()


def test_a_poisoned_outbox_file_does_not_stop_the_next_start(mosquitto, tmp_path):
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    outbox_dir = tmp_path / "b01" / "outbox"
    outbox_dir.mkdir(parents=True)
    stamp = {"v": 1, "boot": "before", "ts": EPOCH - 60}
    (outbox_dir / "outbox.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [
        {"topic": "hearth/v1/s1/m1/b01/event", "qos": 1, "retain": False,
         "message": {**stamp, "seq": 1, "cause": "before-1"}},
        {"topic": "hearth/v1/s1/m1/b01/reply", "qos": 1, "retain": False,  # the old poison
         "message": {**stamp, "seq": 1, "id": "\ud800", "status": "rejected"}},
        {"topic": "hearth/v1/s1/m1/b01/event", "qos": 1, "retain": False,
         "message": {**stamp, "seq": 2, "cause": "before-2"}}]))
    board = Board(broker, tmp_path)
    listener.wait(lambda: board.link.link.connected, step=board.step)
    listener.wait(lambda: any(e["cause"] == "mqtt:outbox_damaged"
                              for e in listener.on(board.topics.event)), step=board.step)
    causes = [e["cause"] for e in listener.on(board.topics.event)]
    assert causes[:2] == ["before-1", "before-2"]
    assert not any(t == board.topics.reply for t, _ in listener.received)
    board.step(2.0)
    for link in (board.link, listener):
        link.close()


def test_an_event_that_cannot_be_encoded_is_dropped_with_an_event_of_its_own(mosquitto,
                                                                            tmp_path):
    broker, listener, board = _board_and_listener(mosquitto, tmp_path)
    board.step(2.0)
    agent = board.agent
    # Whatever raised it (a reason quoted from outside, a bug): UTF-8 cannot carry it.
    agent.events.record(Event(agent.clock(), "poisoned", "\ud800", "reason \udfff quoted",
                              agent.supervisor.mode.value, "warning"))
    board.step(2.0)  # ticks on: the outbox refused it instead of failing at its turn
    listener.wait(lambda: any(e["cause"] == "mqtt:unencodable"
                              for e in listener.on(board.topics.event)), step=board.step)
    assert "poisoned" not in [e["cause"] for e in listener.on(board.topics.event)]
    dropped = [e for e in listener.on(board.topics.event) if e["cause"] == "mqtt:unencodable"]
    assert "surrogate" in dropped[0]["message"] and board.topics.event in dropped[0]["message"]
    assert board.link.link.outbox.unencodable == 1
    board.link.close()
    assert not (tmp_path / "b01" / "outbox" / "outbox.jsonl").exists()  # nothing kept of it
    listener.close()
