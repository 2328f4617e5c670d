"""Property-based fuzzing of the board's command path, end to end: hypothesis builds hostile
messages (arbitrary JSON, lone surrogates as the six-character escapes a JSON encoder with
ensure_ascii writes, huge and tiny numbers, deep nesting) and delivers them through a real
Mosquitto to a real Link of a simulated board, live, twice, with a reused (boot, seq), or
retained (left on the broker while the board was not subscribed, then delivered by a new
subscription, as at a start).

Properties, checked after every example:
* the agent never raises out of tick() (the board is stepped by the test, so a raise fails it),
  and the link's command thread is still alive at the end;
* every well-formed command (an id, not retained, not a duplicate) gets exactly one reply, a
  second delivery of a (boot, seq) none, a retained command never an `accepted`;
* a rejected command, setpoint or interlock changes nothing (setpoints, SAFE request and
  override, interlock, latched faults);
* the power command never exceeds the board's limit, nor what the supervisor allowed.

One broker, one board and one sender for all examples; each example ends with a sentinel
command (an unknown name, always answered) whose reply proves everything before it was handled.
"""

import json
import math

from hypothesis import HealthCheck, example, given, settings, strategies as st

from test_mqtt_board import EPOCH, Board
from test_mqtt_link import Listener

NAMES = ["setpoint", "mode", "reset", "identify", "tune", "status", "shutdown", "reboot"]
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
CLEAN_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
TEXT = st.one_of(CLEAN_TEXT, CLEAN_TEXT, st.lists(st.one_of(st.characters(), SURROGATES),
                                                  min_size=1, max_size=10).map("".join))
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=2**53 - 2, max_value=2**64),
    st.floats(), st.sampled_from([1e308, -1e308, 5e-324, 1e-320, 0.0, -0.0, 2.0**53]))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(TEXT, inner, max_size=3)),
                    max_leaves=10)
VALID_ARGS = {"setpoint": st.builds(lambda w: {"watts": w, "minutes": 60.0},
                                    st.floats(0.0, 8.0).map(lambda w: round(w, 2))),
              "mode": st.sampled_from([{"mode": "auto"}, {"mode": "safe"}]),
              "reset": st.just({})}
DELIVERIES = ["once", "once", "once", "twice", "same seq new id", "retained"]


def representable(value, depth=0) -> bool:
    """The test's own idea of what the envelope must accept: text UTF-8 can carry, numbers a
    double holds (integers exactly), at most 16 levels of nesting."""
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) <= 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= 16:
        return False
    if isinstance(value, list):
        return all(representable(item, depth + 1) for item in value)
    return all(representable(key) and representable(item, depth + 1)
               for key, item in value.items())


def topic_level(text: str) -> bool:
    """What Mosquitto takes in a topic level (it drops a client that sends a control
    character, a surrogate or a noncharacter): the fuzzing is of payloads, not of the broker."""
    return not any(c in "/+#" or ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F
                   or 0xD800 <= ord(c) <= 0xDFFF or 0xFDD0 <= ord(c) <= 0xFDEF
                   or ord(c) & 0xFFFE == 0xFFFE for c in text)


@st.composite
def commands(draw):
    """(topic name, envelope fields or raw payload, delivery); a str id is made unique by
    the test."""
    kind = draw(st.sampled_from(["command", "command", "valid", "valid", "raw", "deep",
                                 "setpoint", "interlock"]))
    delivery = draw(st.sampled_from(DELIVERIES))
    if kind == "raw":
        raw = draw(st.one_of(st.binary(max_size=40), JSON.map(json.dumps).map(str.encode)))
        return "cmd/" + draw(st.sampled_from(NAMES)), raw, delivery
    if kind == "deep":
        depth = draw(st.integers(10, 3000))
        return "cmd/setpoint", ("[" * depth + "]" * depth).encode(), delivery
    if kind == "setpoint":
        return "setpoint", {"setpoint_w": draw(st.one_of(st.floats(0.0, 20.0), NUMBERS, JSON)),
                            "reason": draw(TEXT)}, delivery
    if kind == "interlock":
        return "interlock", {"active": draw(st.one_of(st.just(False), st.booleans(), JSON)),
                             "reason": draw(TEXT)}, delivery
    name = draw(st.sampled_from(NAMES) if kind == "valid" else st.one_of(
        st.sampled_from(NAMES), st.text(min_size=1, max_size=10).filter(topic_level)))
    fields = {"by": draw(st.sampled_from(["operator", "operator", "leader"]))
              if kind == "valid" else
              draw(st.one_of(st.sampled_from(["operator", "leader"]), JSON)),
              "args": draw(VALID_ARGS[name]) if kind == "valid" and name in VALID_ARGS else
              draw(st.one_of(st.dictionaries(TEXT, JSON, max_size=3), JSON))}
    fields["id"] = draw(CLEAN_TEXT if kind == "valid" else st.one_of(TEXT, TEXT, JSON))
    if kind != "valid" and draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(["v", "ts", "boot", "hist"]))] = draw(JSON)
    if draw(st.booleans()):
        fields[draw(CLEAN_TEXT if kind == "valid" else TEXT)] = draw(
            st.one_of(st.none(), st.booleans(), CLEAN_TEXT) if kind == "valid" else JSON)
    return "cmd/" + name, fields, delivery


def _state(board):
    agent, processor = board.agent, board.processor
    return (agent.setpoints._leader_w, agent.setpoints._local_w,
            agent.supervisor.interlock_reason, dict(agent.supervisor.latched),
            processor.request.source, processor.override_until)


class Harness:
    """The board, a sender (raw paho publishes on a Link's connection) and the replies seen."""

    def __init__(self, broker, tmp_path):
        self.listener = Listener(broker, tmp_path, "hearth/#")
        self.listener.ready("hearth/probe")
        self.board = Board(broker, tmp_path)
        self.topics = self.board.topics
        self.replies: list[dict] = []
        self.seen = 0
        self.seq = 0
        self.ticks = 0
        self.listener.wait(lambda: self.board.link.link.connected, step=self.step)
        self.step(5.0)

    def step(self, seconds=0.1) -> None:
        agent = self.board.agent

        def within_limit(report):
            self.ticks += 1
            assert report.command_w <= agent.setpoints.power_max_w + 1e-9, report
            if report.allowed_w is not None:
                assert report.command_w <= report.allowed_w + 1e-9, report

        self.board.sim.run_for(seconds, on_tick=within_limit)

    def collect(self) -> None:
        received = self.listener.received
        for topic, payload in received[self.seen:]:
            if topic == self.topics.reply:
                self.replies.append(json.loads(payload))
        self.seen = len(received)

    def wait_for(self, condition, what) -> None:
        for _ in range(400):
            self.collect()
            if condition():
                return
            self.listener.link.poll(0.005)
            self.step()
        raise AssertionError(f"timed out waiting for {what}")

    def publish(self, topic, payload: bytes, retain=False) -> None:
        self.listener.link._client.publish(topic, payload, qos=1, retain=retain)

    def envelope(self, fields: dict, seq=None) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        body = {"v": 1, "boot": "fuzz-sender", "seq": seq,
                "ts": EPOCH + self.board.clock(), **fields}
        return json.dumps(body).encode()  # ensure_ascii: a surrogate travels as \udxxx

    def deliver_retained(self, topic: str, payload: bytes, subscription: str) -> None:
        """Leave `payload` retained while the board is not subscribed, then subscribe it again,
        as a board that starts finds it: delivered with the retain flag. Then clear it (the
        empty message reaches the board live, and is rejected)."""
        client = self.board.link.link._client
        client.unsubscribe(subscription)
        self._probe(client, "unsubscribed")
        self.publish(topic, payload, retain=True)
        self.wait_for(lambda: (topic, payload) in self.listener.received[-50:], "retained")
        client.subscribe(subscription, qos=1)
        self._probe(client, "subscribed")
        self.publish(topic, b"", retain=True)
        if subscription != self.topics.commands:  # no reply: wait until it is counted
            kind = "setpoint" if subscription == self.topics.setpoint else "interlock"
            rejected = self.board.link.rejected[kind]
            self.wait_for(lambda: self.board.link.rejected[kind] > rejected, "the clearing")

    def _probe(self, client, text: str) -> None:
        """The broker takes a client's packets in order: once a probe published after an
        (un)subscribe is back, the (un)subscribe is in force."""
        probe = (self.topics.base + "/fuzz-probe", f"{text} {self.seq}".encode())
        client.publish(*probe, qos=1)
        self.wait_for(lambda: probe in self.listener.received[-50:], f"the {text} probe")

    def sentinel(self) -> None:
        self.seq += 1
        sentinel_id = f"sentinel-{self.seq}"
        self.publish(self.topics.command("ping"), self.envelope(
            {"id": sentinel_id, "by": "operator", "args": {}}, seq=self.seq))
        self.wait_for(lambda: any(r["id"] == sentinel_id for r in self.replies[-5:]),
                      "the sentinel's reply")


def test_fuzzed_command_path_never_crashes_answers_once_and_changes_nothing_rejected(
        mosquitto, tmp_path):
    harness = Harness(mosquitto(), tmp_path)
    board, topics = harness.board, harness.topics
    counter = [0]

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(commands())
    @example(("cmd/setpoint", {"by": "operator", "id": "set", "args": {"watts": 4.5}}, "twice"))
    @example(("cmd/setpoint", {"by": "leader", "id": "lead", "args": {"watts": 5.0}},
              "same seq new id"))
    @example(("cmd/setpoint", {"by": "operator", "id": "kept", "args": {"watts": 3.0}},
              "retained"))
    @example(("cmd/mode", {"by": "operator", "id": "safe", "args": {"mode": "safe"}}, "once"))
    @example(("cmd/mode", {"by": "operator", "id": "kept", "args": {"mode": "auto"}},
              "retained"))
    @example(("cmd/mode", {"by": "operator", "id": "auto", "args": {"mode": "auto"}}, "once"))
    @example(("cmd/reset", {"by": "operator", "id": "reset", "args": {}}, "twice"))
    @example(("interlock", {"active": True, "reason": "flow lost"}, "retained"))
    @example(("interlock", {"active": False, "reason": ""}, "once"))
    @example(("setpoint", {"setpoint_w": 4.0}, "retained"))
    @example(("setpoint", {"setpoint_w": 4.0}, "twice"))
    def check(case):
        kind, fields, delivery = case
        counter[0] += 1
        before, replies_before = _state(board), len(harness.replies)
        rejected_before = board.link.rejected[kind]
        command_id = None
        if isinstance(fields, bytes):
            payload = fields
        else:
            fields = dict(fields)
            if isinstance(fields.get("id"), str):
                fields["id"] = f"{counter[0]}:{fields['id']}"[:64]
                command_id = fields["id"]
            payload = harness.envelope(fields)
        topic, subscription = {"setpoint": (topics.setpoint, topics.setpoint),
                               "interlock": (topics.interlock, topics.interlock)}.get(
            kind, (topics.base + "/" + kind, topics.commands))
        # as any JSON decoder reads it: an escaped surrogate pair is one character
        sent = json.loads(payload) if command_id is not None else None
        command_id = sent["id"] if sent is not None else None
        well_formed = (command_id is not None and kind.startswith("cmd/")
                       and representable(sent) and type(sent.get("v")) is int and sent["v"] == 1
                       and isinstance(sent.get("boot"), str) and sent["boot"]
                       and delivery != "retained")
        if delivery == "retained":
            harness.deliver_retained(topic, payload, subscription)
        else:
            harness.publish(topic, payload)
        if delivery == "twice":
            harness.publish(topic, payload)
        other_id = None
        if delivery == "same seq new id" and command_id is not None:
            other_id = f"{command_id}-again"[:64] if len(command_id) < 58 else f"{counter[0]}:x"
            harness.publish(topic, harness.envelope({**fields, "id": other_id}, seq=harness.seq))
        harness.sentinel()
        new = harness.replies[replies_before:]
        mine = [r for r in new if command_id is not None and r["id"] == command_id]
        if well_formed:
            assert len(mine) == 1, (kind, payload, new)
        if other_id is not None:
            assert not [r for r in new if r["id"] == other_id], (payload, new)
        if delivery == "retained":
            assert all(r["status"] == "rejected" for r in mine), (payload, mine)
        accepted = any(r["status"] == "accepted" and not str(r["id"]).startswith("sentinel-")
                       for r in new)
        if kind.startswith("cmd/") and not accepted:
            assert _state(board) == before, (kind, payload, new)
        if kind == "setpoint" and delivery == "retained" or delivery != "retained" and (
                kind in ("setpoint", "interlock") and board.link.rejected[kind] > rejected_before):
            assert _state(board) == before, (kind, payload, delivery)
        assert all(r["status"] in ("accepted", "rejected") and isinstance(r["reason"], str)
                   for r in new)

    check()
    assert board.link._command_thread.is_alive()
    assert board.link.link.connected and board.link.link.handler_errors == 0
    assert board.link.link.outbox.unencodable == 0
    accepted = sum(r["status"] == "accepted" for r in harness.replies)
    assert accepted >= 5  # the path that runs commands was exercised too
    print(f"{counter[0]} examples, {len(harness.replies)} replies ({accepted} accepted), "
          f"{harness.ticks} ticks, "
          f"rejected {dict(board.link.rejected)}, {board.link.duplicates} duplicates dropped")
    for link in (board.link, harness.listener):
        link.close()
