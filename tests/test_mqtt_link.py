"""The MQTT link and outbox: envelope, ordering, drops, spill, reconnect backlog and guarded
handlers, against a real Mosquitto."""

import json
import time

import pytest

from agent.errors import MessageError
from agent.mqtt import envelope
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.outbox import SPILL_FILE, Outbox, Pending


def _pending(n: int, qos: int = 1) -> Pending:
    return Pending("t/x", {"v": 1, "seq": n}, qos)


def _drain_kept(outbox: Outbox) -> list[int]:
    seqs = []
    while outbox.peek_kept() is not None:
        seqs.append(outbox.pop_kept().message["seq"])
    return seqs


def test_telemetry_drops_oldest_first_and_counts_it(tmp_path):
    outbox = Outbox(tmp_path, telemetry_ram=3)
    for n in range(1, 6):
        outbox.put(_pending(n, qos=0), keep=False)
    assert [p.message["seq"] for p in outbox.take_telemetry()] == [3, 4, 5]
    assert outbox.telemetry_dropped == 2


def test_kept_messages_spill_to_a_file_and_come_back_in_order(tmp_path):
    outbox = Outbox(tmp_path, keep_ram=4)
    for n in range(1, 21):
        outbox.put(_pending(n), keep=True)
    assert outbox.spilled == 16 and (tmp_path / SPILL_FILE).exists()
    assert _drain_kept(outbox) == list(range(1, 21))
    assert not (tmp_path / SPILL_FILE).exists()


def test_unsent_kept_messages_survive_a_restart_oldest_first(tmp_path):
    outbox = Outbox(tmp_path, keep_ram=4)
    for n in range(2, 8):
        outbox.put(_pending(n), keep=True)
    outbox.persist(unacknowledged=[_pending(1)])
    again = Outbox(tmp_path, keep_ram=4)
    assert len(again) == 7
    first = again.peek_kept()
    assert first.hist is True
    assert _drain_kept(again) == list(range(1, 8))


def test_a_torn_last_line_in_the_spill_file_is_skipped_not_fatal(tmp_path):
    outbox = Outbox(tmp_path, keep_ram=1)
    for n in range(1, 4):
        outbox.put(_pending(n), keep=True)
    with open(tmp_path / SPILL_FILE, "a") as spill:
        spill.write('{"topic": "t/x", "mess')
    again = Outbox(tmp_path, keep_ram=1)
    assert _drain_kept(again) == [2, 3]
    assert again.spill_damaged >= 1


def test_envelope_numbers_each_topic_from_one_and_refuses_bad_payloads():
    stamp = envelope.Envelope("boot-1", lambda: 12.5)
    stamped = stamp.stamp("a", {"x": 1, "seq": 99})
    assert stamped == {"v": 1, "boot": "boot-1", "seq": 1, "ts": 12.5, "x": 1}
    assert list(stamped) == ["v", "boot", "seq", "ts", "x"]  # the envelope first
    assert stamp.stamp("a", {})["seq"] == 2
    assert stamp.stamp("b", {})["seq"] == 1
    assert json.loads(envelope.encode({"x": float("nan")}, hist=True)) == {"x": None,
                                                                            "hist": True}
    for raw, words in [(b"\xff", "UTF-8"), (b"{", "not JSON"), (b"[1]", "list"),
                       (b'{"v": 2}', "version 2"), (b'{"v": true}', "schema version"),
                       (b'{"v": 1, "x": NaN}', "NaN")]:
        with pytest.raises(MessageError, match=words):
            envelope.decode(raw)


class Listener:
    """A Link subscribed to a pattern, recording what arrives (decoded when possible)."""

    def __init__(self, broker, tmp_path, pattern="#", name="listener"):
        self.link = Link(LinkSettings(broker.host, broker.port, reconnect_max_s=1),
                         client_id=name, outbox=Outbox(tmp_path / name), boot=name)
        self.received: list[tuple[str, bytes]] = []
        self.link.subscribe(pattern, lambda message: self.received.append(
            (message.topic, message.payload)))
        self.link.start()

    def on(self, topic: str) -> list[dict]:
        return [json.loads(payload) for t, payload in self.received if t == topic]

    def wait(self, condition, timeout_s=30.0, step=None) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; received {[t for t, _ in self.received][-8:]}")
            self.link.poll(0.02)
            if step is not None:
                step()

    def ready(self, probe_topic: str) -> None:
        """Wait until our subscription is live on the broker (a probe comes back)."""
        self.wait(lambda: self.link.connected)
        self.link.publish(probe_topic, {"probe": True}, qos=1)
        self.wait(lambda: any(t == probe_topic for t, _ in self.received))

    def close(self) -> None:
        self.link.close()


def _link(broker, tmp_path, name, **kwargs) -> Link:
    return Link(LinkSettings(broker.host, broker.port, reconnect_max_s=1), client_id=name,
                outbox=Outbox(tmp_path / name), boot=f"boot-{name}", **kwargs)


def _start_with_listener_and_sender(broker, tmp_path, receiver: Link, pattern: str,
                                    probe_topic: str) -> tuple[Listener, Link]:
    """Start `receiver` (subscribed already) beside a Listener on `pattern` and a sender,
    and return once all are connected and the receiver's subscription is live."""
    receiver.start()
    listener = Listener(broker, tmp_path, pattern)
    listener.ready(probe_topic)
    sender = _link(broker, tmp_path, "sender")
    sender.start()
    listener.wait(lambda: sender.connected and receiver.connected)
    time.sleep(0.2)  # the receiver's subscription is sent on connect
    return listener, sender


def test_messages_arrive_in_order_with_envelope_and_status(mosquitto, tmp_path):
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "t/#")
    listener.ready("t/probe")
    sender = _link(broker, tmp_path, "sender", status_topic="t/sender/status")
    sender.start()
    listener.wait(lambda: sender.connected)
    for n in range(50):
        sender.publish("t/sender/event", {"n": n}, qos=1)
    listener.wait(lambda: len(listener.on("t/sender/event")) == 50, step=sender.poll)
    events = listener.on("t/sender/event")
    assert [e["seq"] for e in events] == list(range(1, 51))
    assert [e["n"] for e in events] == list(range(50))
    assert all(e["boot"] == "boot-sender" and e["v"] == 1 and "hist" not in e for e in events)
    assert (("t/sender/status", b"online")) in listener.received
    sender.close()
    listener.wait(lambda: listener.received[-1] == ("t/sender/status", b"offline"))
    listener.close()


def test_an_exception_in_a_handler_never_stops_the_link(mosquitto, tmp_path):
    broker = mosquitto()
    receiver = _link(broker, tmp_path, "receiver")
    seen = []

    def broken(message):
        raise RuntimeError("a handler bug")

    receiver.subscribe("t/in", broken)
    receiver.subscribe("t/in", lambda message: seen.append(message.data()["n"]))
    listener, sender = _start_with_listener_and_sender(broker, tmp_path, receiver, "t/out",
                                                       "t/out")
    for n in range(5):
        sender.publish("t/in", {"n": n}, qos=1)

    def step():
        sender.poll()
        receiver.poll()

    listener.wait(lambda: len(seen) == 5, step=step)
    assert seen == list(range(5)) and receiver.handler_errors == 5
    receiver.publish("t/out", {"still": "alive"}, qos=1)
    listener.wait(lambda: len(listener.on("t/out")) == 2, step=step)
    assert receiver.connected
    for link in (sender, receiver, listener):
        link.close()


def test_a_receiver_that_falls_behind_keeps_the_newest_messages_and_counts_the_rest(
        mosquitto, tmp_path):
    broker = mosquitto()
    receiver = _link(broker, tmp_path, "receiver", inbox_max=5)
    seen = []
    receiver.subscribe("t/in", lambda message: seen.append(message.data()["n"]))
    listener, sender = _start_with_listener_and_sender(broker, tmp_path, receiver, "t/#",
                                                       "t/probe")
    for n in range(20):
        sender.publish("t/in", {"n": n}, qos=1)
    listener.wait(lambda: len(listener.on("t/in")) == 20, step=sender.poll)
    deadline = time.monotonic() + 5
    while receiver.inbox_dropped < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    receiver.poll()  # only now: the receiver was busy while all 20 arrived
    assert seen == list(range(15, 20)) and receiver.inbox_dropped == 15
    for link in (sender, receiver, listener):
        link.close()


def test_backlog_after_an_outage_is_sent_once_in_order_marked_hist(mosquitto, tmp_path):
    broker = mosquitto()
    clock = [1000.0]
    sender = _link(broker, tmp_path, "sender", wall_clock=lambda: clock[0])
    sender.start()
    listener = Listener(broker, tmp_path, "t/#")
    listener.ready("t/probe")
    listener.wait(lambda: sender.connected)
    sender.publish("t/event", {"n": 0}, qos=1)
    listener.wait(lambda: sender.idle())
    broker.stop()
    listener.wait(lambda: not sender.connected)
    for n in range(1, 31):
        clock[0] += 1.0
        sender.publish("t/event", {"n": n}, qos=1)
        sender.publish("t/state", {"n": n}, qos=0)
    broker.start()
    listener.ready("t/probe2")
    listener.wait(lambda: len(listener.on("t/event")) == 31 and sender.idle(),
                  step=sender.poll)
    before, *events = listener.on("t/event")
    assert before["seq"] == 1 and "hist" not in before
    assert [e["seq"] for e in events] == list(range(2, 32))
    assert all(e["hist"] is True for e in events)
    assert [e["ts"] for e in events] == [1000.0 + n for n in range(1, 31)]
    states = listener.on("t/state")
    assert len(states) == 30 and all(s["hist"] for s in states)  # 30 fit in telemetry RAM
    sender.publish("t/event", {"n": 31}, qos=1)
    listener.wait(lambda: len(listener.on("t/event")) == 32, step=sender.poll)
    assert "hist" not in listener.on("t/event")[-1]
    sender.close()
    listener.close()


def test_an_asserted_retained_message_is_sent_as_given_and_again_after_the_broker_lost_it(
        mosquitto, tmp_path):
    broker = mosquitto()  # no persistence: a restart loses every retained message
    owner = _link(broker, tmp_path, "owner")
    payload = b'{"dev": {"ids": ["x"]}, "cmps": {}}'
    owner.assert_retained("ha/device/x/config", payload)
    owner.assert_retained("ha/device/gone/config", b"{}")
    owner.assert_retained("ha/device/gone/config", b"")  # cleared before it was ever sent
    owner.start()
    late = Listener(broker, tmp_path, "ha/#")  # subscribes after: hears it only if retained
    late.wait(lambda: late.link.connected and owner.connected)
    late.wait(lambda: ("ha/device/x/config", payload) in late.received)
    broker.stop()
    late.wait(lambda: not owner.connected)
    broker.start()
    again = Listener(broker, tmp_path, "ha/#", name="again")
    again.wait(lambda: owner.connected and again.link.connected)
    again.wait(lambda: ("ha/device/x/config", payload) in again.received)
    time.sleep(0.3)
    assert [t for t, _ in again.received] == ["ha/device/x/config"]  # the cleared one never
    for link in (owner, late, again):
        link.close()


def _failover_settings(first, second) -> LinkSettings:
    return LinkSettings(first.host, first.port, more_brokers=((second.host, second.port),),
                        reconnect_min_s=1, reconnect_max_s=1)


@pytest.mark.parametrize("io", ["threaded", "network-loop"])
def test_a_link_moves_to_the_next_broker_and_back_and_keeps_its_kept_messages(
        mosquitto, tmp_path, caplog, io):
    """The site broker killed: the Link says why it moved and to which broker, is on the
    standby, and what it kept through the move arrives there in order; the standby killed
    later (the first one back): the list wraps around."""
    caplog.set_level("INFO", logger="hearth.mqtt")
    primary, standby = mosquitto(), mosquitto()
    network = NetworkLoop() if io == "network-loop" else None
    sender = Link(_failover_settings(primary, standby), client_id="mover", boot="boot-mover",
                  outbox=Outbox(tmp_path / "mover"), io=network)
    sender.start()
    on_standby = Listener(standby, tmp_path, "t/#", name="on-standby")
    on_standby.ready("t/probe")
    on_standby.wait(lambda: sender.connected)
    assert sender.broker == f"{primary.host}:{primary.port}"
    primary.process.kill()  # no goodbye, as when the box loses power
    primary.process.wait()
    on_standby.wait(lambda: not sender.connected)
    for n in range(1, 31):
        sender.publish("t/event", {"n": n}, qos=1)
    on_standby.wait(lambda: len(on_standby.on("t/event")) == 30 and sender.idle(),
                    step=sender.poll)
    assert [event["n"] for event in on_standby.on("t/event")] == list(range(1, 31))
    assert sender.broker == f"{standby.host}:{standby.port}"
    moved = [r.getMessage() for r in caplog.records if "moving to" in r.getMessage()]
    assert moved and f"{primary.host}:{primary.port}" in moved[0]
    assert f"{standby.host}:{standby.port} (broker 2 of 2)" in moved[0]
    assert any(f"connected to broker {standby.host}:{standby.port}" in r.getMessage()
               for r in caplog.records)

    primary.start()
    on_primary = Listener(primary, tmp_path, "t/#", name="on-primary")
    on_primary.ready("t/probe")
    standby.stop()
    on_primary.wait(lambda: sender.broker == f"{primary.host}:{primary.port}" and
                    sender.connected, timeout_s=15, step=sender.poll)
    sender.publish("t/event", {"n": 31}, qos=1)
    on_primary.wait(lambda: [e["n"] for e in on_primary.on("t/event")] == [31],
                    step=sender.poll)
    for link in (sender, on_standby, on_primary):
        link.close()
    if network is not None:
        network.close()


def test_the_newest_retained_message_of_each_topic_is_published_again_at_every_connect(
        mosquitto, tmp_path):
    """No state lives only in a broker: a broker restarted without persistence has lost the
    interlock, and the owner's Link puts its newest one back, freshly stamped."""
    broker = mosquitto()  # no persistence
    clock = [1000.0]
    owner = _link(broker, tmp_path, "leader", wall_clock=lambda: clock[0])
    owner.start()
    first = Listener(broker, tmp_path, "t/#", name="first")
    first.ready("t/probe")
    first.wait(lambda: owner.connected)
    owner.publish("t/interlock", {"active": True, "reason": "flow lost"}, qos=1, retain=True)
    owner.publish("t/interlock", {"active": False, "reason": ""}, qos=1, retain=True)
    owner.publish("t/event", {"n": 1}, qos=1)  # not retained: never repeated
    first.wait(lambda: len(first.on("t/interlock")) == 2 and owner.idle(), step=owner.poll)
    broker.stop()
    first.wait(lambda: not owner.connected)
    clock[0] = 2000.0
    broker.start()
    late = Listener(broker, tmp_path, "t/#", name="late")  # hears only what is retained
    late.wait(lambda: late.link.connected and owner.connected and late.on("t/interlock"),
              step=owner.poll)
    (interlock,) = late.on("t/interlock")
    assert (interlock["active"], interlock["seq"], interlock["ts"]) == (False, 3, 2000.0)
    assert "hist" not in interlock
    time.sleep(0.3)
    late.link.poll()
    assert [t for t, _ in late.received] == ["t/interlock"]
    for link in (owner, first, late):
        link.close()


def test_one_broker_settings_name_it_and_a_list_of_them(tmp_path):
    one = LinkSettings("hearth-broker.local")
    assert one.brokers == (("hearth-broker.local", 1883),)
    two = LinkSettings("a.local", 8883, more_brokers=(("b.local", 8884),))
    assert two.brokers == (("a.local", 8883), ("b.local", 8884))
    link = Link(two, client_id="x", outbox=Outbox(tmp_path), boot="b")
    assert link.broker == "a.local:8883"
