"""The built-in MQTT broker (agent/sim/broker.py) with real clients: our Link (paho), raw
sockets for what paho would never send, and the contract tests Mosquitto passes."""

import socket
import struct
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from hypothesis import given, strategies as st

import test_leader_mqtt
import test_mqtt_board
import test_mqtt_link
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import topic_matches
from agent.sim.broker import Broker, valid_topic_filter, valid_topic_name


def wait_for(condition, timeout_s=10.0, what="a condition", step=None):
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.01)


# -- a raw client, written from the spec independently of the broker's encoder -------------

def remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def packet(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(client_id: str, keepalive_s: int = 60, will: tuple | None = None,
                   clean: bool = True, level: int = 4, name: str = "MQTT") -> bytes:
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += mqtt_string(topic) + mqtt_string(message)
    return packet(0x10, mqtt_string(name) + bytes([level, flags]) + struct.pack("!H", keepalive_s)
                  + payload)


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 0, retain: bool = False,
                   packet_id: int = 1, dup: bool = False) -> bytes:
    body = mqtt_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(0x30 | (0x08 if dup else 0) | qos << 1 | int(retain), body)


def subscribe_packet(*filters: tuple[str, int], packet_id: int = 1) -> bytes:
    return packet(0x82, struct.pack("!H", packet_id)
                  + b"".join(mqtt_string(f) + bytes([qos]) for f, qos in filters))


class RawClient:
    """A blocking socket speaking MQTT by hand: it sends exactly the bytes a test asks for."""

    def __init__(self, broker, client_id: str | None = "raw", **connect):
        self.sock = socket.create_connection((broker.host, broker.port), timeout=10)
        self.buffer = b""
        if client_id is not None:
            self.send(connect_packet(client_id, **connect))
            assert self.read() == (0x20, b"\x00\x00")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk

    def read(self) -> tuple[int, bytes]:
        """(first byte, body) of the next packet from the broker."""
        self._fill(2)
        length, multiplier, index = 0, 1, 1
        while True:
            self._fill(index + 1)
            digit = self.buffer[index]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not digit & 0x80:
                break
        self._fill(index + length)
        first, body = self.buffer[0], self.buffer[index:index + length]
        self.buffer = self.buffer[index + length:]
        return first, body

    def read_publish(self) -> tuple[str, bytes, int, bool]:
        """(topic, payload, qos, retain) of the next PUBLISH, acknowledged at QoS 1."""
        first, body = self.read()
        assert first >> 4 == 3, f"expected PUBLISH, got {first:#x}"
        qos, retain = (first >> 1) & 3, bool(first & 1)
        topic_length = struct.unpack("!H", body[:2])[0]
        topic, rest = body[2:2 + topic_length].decode(), body[2 + topic_length:]
        if qos:
            self.send(packet(0x40, rest[:2]))
            rest = rest[2:]
        return topic, rest, qos, retain

    def subscribe(self, *filters: tuple[str, int], packet_id: int = 1) -> bytes:
        self.send(subscribe_packet(*filters, packet_id=packet_id))
        first, body = self.read()
        assert first == 0x90 and body[:2] == struct.pack("!H", packet_id)
        return body[2:]

    def closed_by_broker(self, timeout_s: float = 10.0) -> bool:
        self.sock.settimeout(timeout_s)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


class Recorder:
    """A Link subscribed to a pattern, keeping every Message (with its retain flag)."""

    def __init__(self, broker, tmp_path, pattern="#", name=None, **link):
        name = name or f"recorder-{uuid.uuid4().hex[:8]}"
        self.link = Link(LinkSettings(broker.host, broker.port, reconnect_min_s=1,
                                      reconnect_max_s=1), client_id=name,
                         outbox=Outbox(tmp_path / name), boot=name, **link)
        self.messages = []
        self.link.subscribe(pattern, self.messages.append)
        self.link.start()

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    def wait(self, condition, what="messages", timeout_s=10.0, step=None):
        def poll():
            self.link.poll(0.01)
            if step is not None:
                step()
        return wait_for(condition, timeout_s, f"{what}; got {self.topics()[-8:]}", step=poll)

    def ready(self) -> None:
        """Our subscription is live on the broker: a probe through it came back."""
        probe = f"probe/{uuid.uuid4().hex}"
        # Only once connected: Link.subscribe() during its on_connect could miss the snapshot
        # of patterns it subscribes to and the connected flag both.
        self.wait(lambda: self.link.connected, "connected")
        self.link.subscribe(probe, self.messages.append)
        self.link.publish(probe, {}, qos=1)
        self.wait(lambda: probe in self.topics(), "the probe")

    def close(self) -> None:
        self.link.close()


def _link(broker, tmp_path, name, **kwargs) -> Link:
    return Link(LinkSettings(broker.host, broker.port, reconnect_min_s=1, reconnect_max_s=1),
                client_id=name, outbox=Outbox(tmp_path / name), boot=name, **kwargs)


# -- topic rules ----------------------------------------------------------------------------

def test_topic_filters_follow_the_spec_examples():
    assert topic_matches("sport/tennis/player1/#", "sport/tennis/player1")
    assert topic_matches("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon")
    assert topic_matches("sport/#", "sport")
    assert topic_matches("sport/+", "sport/") and not topic_matches("sport/+", "sport")
    assert topic_matches("+/+", "/finance") and topic_matches("/+", "/finance")
    assert not topic_matches("+", "/finance")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("+/monitor", "$SYS/monitor")
    assert topic_matches("$SYS/#", "$SYS/x") and topic_matches("$SYS/+", "$SYS/x")
    assert all(valid_topic_filter(f) for f in ("#", "+", "a/+/b", "a/#", "/", "+/+"))
    assert not any(valid_topic_filter(f) for f in ("", "a#", "a/#/b", "a+", "a/b+/c", "a\0"))
    assert valid_topic_name("a/b") and not any(valid_topic_name(t) for t in ("", "a/+", "#"))


_level = st.sampled_from(["a", "b", "", "$x"])


@given(filter_levels=st.lists(st.sampled_from(["a", "b", "", "$x", "+"]), min_size=1,
                              max_size=4),
       hash_end=st.booleans(), topic_levels=st.lists(_level, min_size=1, max_size=5))
def test_topic_matching_agrees_with_paho(filter_levels, hash_end, topic_levels):
    topic_filter = "/".join(filter_levels + (["#"] if hash_end else []))
    topic = "/".join(topic_levels)
    assert topic_matches(topic_filter, topic) == paho.topic_matches_sub(topic_filter, topic)


# -- publish and subscribe --------------------------------------------------------------------

def test_wildcard_subscriptions_each_get_exactly_their_topics(builtin_broker, tmp_path):
    patterns = {"plus": "site/+/temp", "hash": "site/#", "all": "#", "exact": "site/b1/temp"}
    recorders = {name: Recorder(builtin_broker, tmp_path, pattern)
                 for name, pattern in patterns.items()}
    for recorder in recorders.values():
        recorder.ready()
    sender = _link(builtin_broker, tmp_path, "sender")
    sender.start()
    wait_for(lambda: sender.connected, what="the sender")
    topics = ["site/b1/temp", "site/b2/temp", "site", "site/b1/temp/raw", "other/temp", "site/"]
    for topic in topics:
        sender.publish(topic, {}, qos=1)
    sender.publish("end", {}, qos=1)
    recorders["all"].wait(lambda: "end" in recorders["all"].topics(), step=sender.poll)
    expected = {name: [t for t in topics if topic_matches(pattern, t)]
                for name, pattern in patterns.items()}
    for name, recorder in recorders.items():
        recorder.wait(lambda: len([t for t in recorder.topics() if not t.startswith("probe/")])
                      >= len(expected[name]), f"{name}'s messages")
    time.sleep(0.2)  # nothing more is due; give a wrong extra message the chance to show
    for name, recorder in recorders.items():
        recorder.link.poll()
        got = [t for t in recorder.topics() if not t.startswith("probe/") and t != "end"]
        assert got == expected[name], name
    assert expected["hash"] == ["site/b1/temp", "site/b2/temp", "site", "site/b1/temp/raw",
                                "site/"]
    for link in [sender] + [r.link for r in recorders.values()]:
        link.close()


def test_overlapping_filters_deliver_once_at_the_highest_granted_qos(builtin_broker):
    subscriber = RawClient(builtin_broker, "sub")
    assert subscriber.subscribe(("q/#", 0), ("q/+", 1), ("q/2", 2), ("bad/#/x", 1)) == (
        bytes([0, 1, 1, 0x80]))  # QoS 2 is granted as 1; an invalid filter fails alone
    publisher = RawClient(builtin_broker, "pub")
    publisher.send(publish_packet("q/a", b"one", qos=1, packet_id=9))
    assert publisher.read() == (0x40, b"\x00\x09")
    publisher.send(publish_packet("q/a/deep", b"two", qos=1, packet_id=10))
    assert subscriber.read_publish() == ("q/a", b"one", 1, False)
    assert subscriber.read_publish() == ("q/a/deep", b"two", 0, False)  # only q/# (QoS 0)
    subscriber.close()
    publisher.close()


def test_qos1_end_to_end_every_kept_message_acknowledged_in_order(builtin_broker, tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "k/#")
    recorder.ready()
    sender = _link(builtin_broker, tmp_path, "sender")
    sender.start()
    wait_for(lambda: sender.connected, what="the sender")
    for n in range(200):
        sender.publish("k/event", {"n": n}, qos=1)
    recorder.wait(lambda: len(recorder.topics()) >= 201, "200 events", step=sender.poll)
    wait_for(sender.idle, what="every kept message acknowledged", step=lambda: sender.poll(0.01))
    assert [m.data()["n"] for m in recorder.messages if m.topic == "k/event"] == list(range(200))
    sender.close()
    recorder.close()


def test_qos2_is_delivered_once_through_the_whole_handshake(builtin_broker, tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "e/#")
    recorder.ready()
    sender = RawClient(builtin_broker, "qos2")
    sender.send(publish_packet("e/once", b"x", qos=2, packet_id=7))
    assert sender.read() == (0x50, b"\x00\x07")  # PUBREC
    sender.send(publish_packet("e/once", b"x", qos=2, packet_id=7, dup=True))  # PUBREC lost
    assert sender.read() == (0x50, b"\x00\x07")
    sender.send(packet(0x62, b"\x00\x07"))  # PUBREL
    assert sender.read() == (0x70, b"\x00\x07")  # PUBCOMP
    sender.send(publish_packet("e/once", b"y", qos=2, packet_id=7))  # the id is free again
    assert sender.read() == (0x50, b"\x00\x07")
    sender.send(publish_packet("e/end", b"z"))
    recorder.wait(lambda: "e/end" in recorder.topics())
    assert [m.payload for m in recorder.messages if m.topic == "e/once"] == [b"x", b"y"]
    paho_sender = _link(builtin_broker, tmp_path, "paho-qos2")  # paho's own QoS 2 flow
    paho_sender.start()
    wait_for(lambda: paho_sender.connected, what="the paho sender")
    for n in range(20):
        paho_sender.publish("e/paho", {"n": n}, qos=2)
    recorder.wait(lambda: recorder.topics().count("e/paho") >= 20, step=paho_sender.poll)
    wait_for(paho_sender.idle, what="paho's QoS 2 completed", step=paho_sender.poll)
    assert [m.data()["n"] for m in recorder.messages if m.topic == "e/paho"] == list(range(20))
    sender.close()
    paho_sender.close()
    recorder.close()


def test_unsubscribe_stops_only_that_filter(builtin_broker):
    subscriber = RawClient(builtin_broker, "sub")
    assert subscriber.subscribe(("u/a", 1), ("u/b", 1)) == b"\x01\x01"
    subscriber.send(packet(0xA2, b"\x00\x05" + mqtt_string("u/a") + mqtt_string("u/never")))
    assert subscriber.read() == (0xB0, b"\x00\x05")
    publisher = RawClient(builtin_broker, "pub")
    publisher.send(publish_packet("u/a", b"gone") + publish_packet("u/b", b"kept"))
    assert subscriber.read_publish() == ("u/b", b"kept", 0, False)
    subscriber.send(packet(0xC0))
    assert subscriber.read() == (0xD0, b"")  # nothing from u/a came before the PINGRESP
    subscriber.close()
    publisher.close()


def test_who_gets_a_topic_follows_subscriptions_made_after_it_was_used(builtin_broker):
    """The broker keeps each topic's subscribers until the subscriptions change."""
    first = RawClient(builtin_broker, "first")
    assert first.subscribe(("c/t", 1)) == b"\x01"
    publisher = RawClient(builtin_broker, "pub")
    publisher.send(publish_packet("c/t", b"one"))
    assert first.read_publish() == ("c/t", b"one", 0, False)
    second = RawClient(builtin_broker, "second")
    assert second.subscribe(("c/+", 1)) == b"\x01"
    publisher.send(publish_packet("c/t", b"two"))
    assert first.read_publish() == ("c/t", b"two", 0, False)
    assert second.read_publish() == ("c/t", b"two", 0, False)
    first.send(packet(0xA2, b"\x00\x07" + mqtt_string("c/t")))
    assert first.read() == (0xB0, b"\x00\x07")
    publisher.send(publish_packet("c/t", b"three"))
    assert second.read_publish() == ("c/t", b"three", 0, False)
    first.send(packet(0xC0))
    assert first.read() == (0xD0, b"")  # "three" did not reach the unsubscribed client
    for client in (first, second, publisher):
        client.close()


def test_dollar_topics_are_hidden_from_leading_wildcards(builtin_broker, tmp_path):
    everything = RawClient(builtin_broker, "everything")
    everything.subscribe(("#", 0), ("+/status", 0))
    system = RawClient(builtin_broker, "system")
    system.subscribe(("$SYS/#", 0))
    publisher = RawClient(builtin_broker, "pub")
    publisher.send(publish_packet("$SYS/status", b"s") + publish_packet("$x/status", b"x")
                   + publish_packet("plain/status", b"p"))
    assert everything.read_publish() == ("plain/status", b"p", 0, False)
    assert system.read_publish() == ("$SYS/status", b"s", 0, False)
    for client in (everything, system, publisher):
        client.close()


# -- retained messages ---------------------------------------------------------------------

def test_retained_messages_reach_new_subscribers_and_an_empty_one_deletes(builtin_broker,
                                                                          tmp_path):
    live = Recorder(builtin_broker, tmp_path, "r/#")
    live.ready()
    sender = _link(builtin_broker, tmp_path, "sender")
    sender.start()
    wait_for(lambda: sender.connected, what="the sender")
    sender.publish("r/a", {"x": 1}, qos=1, retain=True)
    sender.publish("r/b", {"x": 2}, qos=0, retain=True)
    live.wait(lambda: {"r/a", "r/b"} <= set(live.topics()), step=sender.poll)
    assert not any(m.retained for m in live.messages)  # forwarded live: retain flag 0
    late = Recorder(builtin_broker, tmp_path, "r/#")
    late.wait(lambda: {"r/a", "r/b"} <= set(late.topics()))
    assert all(m.retained for m in late.messages if m.topic.startswith("r/"))
    assert builtin_broker.retained().keys() == {"r/a", "r/b"}
    deleter = RawClient(builtin_broker, "deleter")
    deleter.send(publish_packet("r/a", b"", qos=1, retain=True))
    assert deleter.read() == (0x40, b"\x00\x01")
    assert builtin_broker.retained().keys() == {"r/b"}
    after = RawClient(builtin_broker, "after")
    after.subscribe(("r/#", 1))
    assert after.read_publish() == ("r/b", payload_on(late, "r/b"), 0, True)
    after.send(packet(0xC0))
    assert after.read() == (0xD0, b"")  # and nothing for r/a
    for link in (sender, live.link, late.link):
        link.close()
    deleter.close()
    after.close()


def payload_on(recorder: Recorder, topic: str) -> bytes:
    return next(m.payload for m in recorder.messages if m.topic == topic)


# -- Last Will ------------------------------------------------------------------------------

def test_last_will_on_an_abrupt_close_is_published_and_retained(builtin_broker, tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "w/#")
    recorder.ready()
    dying = RawClient(builtin_broker, "dying", will=("w/dying", b"offline", 1, True))
    dying.close()
    recorder.wait(lambda: "w/dying" in recorder.topics(), "the will")
    assert payload_on(recorder, "w/dying") == b"offline"
    assert builtin_broker.retained() == {"w/dying": b"offline"}
    recorder.close()


def test_last_will_after_keepalive_times_out_at_one_and_a_half(builtin_broker, tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "w/#")
    recorder.ready()
    silent = RawClient(builtin_broker, "silent", keepalive_s=1,
                       will=("w/silent", b"offline", 0, False))
    connected_at = time.monotonic()
    recorder.wait(lambda: "w/silent" in recorder.topics(), "the will", timeout_s=10)
    waited_s = time.monotonic() - connected_at
    assert 1.3 < waited_s < 5.0, waited_s
    assert silent.closed_by_broker()
    assert builtin_broker.retained() == {}  # that will was not retained
    silent.close()
    recorder.close()


def test_no_will_after_a_clean_disconnect(builtin_broker, tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "w/#")
    recorder.ready()
    leaving = RawClient(builtin_broker, "leaving", will=("w/leaving", b"offline", 1, True))
    leaving.send(packet(0xE0))
    assert leaving.closed_by_broker()
    wait_for(lambda: "leaving" not in builtin_broker.client_ids(), what="the disconnect")
    recorder.ready()  # the probe comes after anything the disconnect published
    assert "w/leaving" not in recorder.topics() and builtin_broker.retained() == {}
    leaving.close()
    recorder.close()


def test_a_new_connection_takes_over_the_client_id_and_the_old_will_goes_out(builtin_broker,
                                                                          tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "w/#")
    recorder.ready()
    first = RawClient(builtin_broker, "board-1", will=("w/board-1", b"first gone", 0, False))
    second = RawClient(builtin_broker, "board-1", will=("w/board-1", b"second gone", 0, False))
    assert first.closed_by_broker()
    recorder.wait(lambda: "w/board-1" in recorder.topics(), "the first will")
    assert payload_on(recorder, "w/board-1") == b"first gone"
    second.send(packet(0xC0))
    assert second.read() == (0xD0, b"")
    assert builtin_broker.client_ids().count("board-1") == 1
    first.close()
    second.close()
    recorder.close()


# -- CONNECT answers and malformed packets --------------------------------------------------

def test_connect_refusals_and_generated_client_ids(builtin_broker):
    for level, name in ((3, "MQTT"), (5, "MQTT"), (3, "MQIsdp")):
        old = RawClient(builtin_broker, None)
        old.send(connect_packet("old", level=level, name=name))
        assert old.read() == (0x20, b"\x00\x01")  # unacceptable protocol version
        assert old.closed_by_broker()
        old.close()
    anonymous = RawClient(builtin_broker, "")  # an empty id with a clean session is given one
    assert len(builtin_broker.client_ids()) == 1
    persistent = RawClient(builtin_broker, None)
    persistent.send(connect_packet("", clean=False))
    assert persistent.read() == (0x20, b"\x00\x02")  # identifier rejected
    assert persistent.closed_by_broker()
    asks_session = RawClient(builtin_broker, None)
    asks_session.send(connect_packet("keeper", clean=False))
    assert asks_session.read() == (0x20, b"\x00\x00")  # every session is clean: none present
    anonymous.close()
    persistent.close()
    asks_session.close()


MALFORMED_AFTER_CONNECT = {
    "five-byte remaining length": b"\x30\xff\xff\xff\xff\x7f",
    "a second CONNECT": connect_packet("again"),
    "SUBSCRIBE with reserved flags 0": packet(0x80, b"\x00\x01" + mqtt_string("a") + b"\x01"),
    "SUBSCRIBE without a filter": packet(0x82, b"\x00\x01"),
    "SUBSCRIBE asking QoS 3": subscribe_packet(("a", 3)),
    "PUBLISH to a wildcard topic": publish_packet("a/+", b"x"),
    "PUBLISH with a non-UTF-8 topic": publish_packet(b"a/\xff", b"x"),
    "PUBLISH at QoS 3": packet(0x36, mqtt_string("a") + b"\x00\x01"),
    "PUBLISH with packet id 0": publish_packet("a", b"x", qos=1, packet_id=0),
    "CONNACK from a client": packet(0x20, b"\x00\x00"),
    "PINGREQ with a body": packet(0xC0, b"\x00"),
    "a topic length past the packet": packet(0x30, b"\x00\x09ab"),
    "a packet over max_packet_bytes": b"\x30\x80\x80\x80\x01",
}
MALFORMED_BEFORE_CONNECT = {
    "PUBLISH before CONNECT": publish_packet("a", b"x"),
    "CONNECT with the reserved flag": packet(0x10, mqtt_string("MQTT") + b"\x04\x03\x00\x3c"
                                             + mqtt_string("x")),
    "CONNECT for another protocol": connect_packet("x", name="HTTP"),
    "CONNECT with will QoS but no will": packet(0x10, mqtt_string("MQTT") + b"\x04\x0a\x00\x3c"
                                                + mqtt_string("x")),
    "CONNECT with bytes after its fields": packet(0x10, mqtt_string("MQTT") + b"\x04\x02\x00\x3c"
                                                  + mqtt_string("x") + b"!"),
}


@pytest.mark.parametrize("bad", sorted(MALFORMED_AFTER_CONNECT))
def test_a_malformed_packet_closes_that_connection_only_and_publishes_its_will(
        builtin_broker, tmp_path, bad):
    recorder = Recorder(builtin_broker, tmp_path, "w/#")
    recorder.ready()
    offender = RawClient(builtin_broker, "offender", will=("w/offender", b"gone", 1, False))
    offender.send(MALFORMED_AFTER_CONNECT[bad])
    assert offender.closed_by_broker()
    recorder.wait(lambda: "w/offender" in recorder.topics(), "the offender's will")
    recorder.ready()  # the others carry on, on their first connection
    assert recorder.link.connects == 1
    offender.close()
    recorder.close()


@pytest.mark.parametrize("bad", sorted(MALFORMED_BEFORE_CONNECT))
def test_a_malformed_first_packet_closes_the_connection(builtin_broker, tmp_path, bad):
    bystander = RawClient(builtin_broker, "bystander")
    offender = RawClient(builtin_broker, None)
    offender.send(MALFORMED_BEFORE_CONNECT[bad])
    assert offender.closed_by_broker()
    assert builtin_broker.client_ids() == ["bystander"]
    bystander.send(packet(0xC0))
    assert bystander.read() == (0xD0, b"")
    offender.close()
    bystander.close()


def test_a_packet_split_into_single_bytes_is_reassembled(builtin_broker):
    subscriber = RawClient(builtin_broker, "sub")
    subscriber.subscribe(("s/#", 0))
    trickle = RawClient(builtin_broker, None)
    for byte in connect_packet("trickle") + publish_packet("s/x", b"slowly"):
        trickle.send(bytes([byte]))
    assert trickle.read() == (0x20, b"\x00\x00")
    assert subscriber.read_publish() == ("s/x", b"slowly", 0, False)
    trickle.close()
    subscriber.close()


def test_a_slow_consumer_is_dropped_instead_of_buffered_without_limit(tmp_path):
    with Broker(max_outbound_bytes=256 * 1024) as broker:
        recorder = Recorder(broker, tmp_path, "w/#")
        recorder.ready()
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((broker.host, broker.port))
        stuck.sendall(connect_packet("stuck", will=("w/stuck", b"dropped", 0, False))
                      + subscribe_packet(("flood", 0)))  # and never reads again
        wait_for(lambda: "stuck" in broker.client_ids(), what="the stuck client")
        flooder = RawClient(broker, "flooder")
        chunk = publish_packet("flood", b"x" * 65536)
        sent = 0
        while "w/stuck" not in recorder.topics():
            assert sent < 4000, "256 MB sent and the stuck client is still connected"
            flooder.send(chunk)
            sent += 1
            recorder.link.poll()
        assert "stuck" not in broker.client_ids()
        flooder.send(packet(0xC0))
        assert flooder.read() == (0xD0, b"")
        stuck.close()
        flooder.close()
        recorder.close()


# -- outages, scale, lifecycle --------------------------------------------------------------

def test_pause_drops_everyone_and_after_resume_they_reconnect_and_publish(builtin_broker,
                                                                         tmp_path):
    recorder = Recorder(builtin_broker, tmp_path, "p/#")
    recorder.ready()
    boards = [_link(builtin_broker, tmp_path, f"b{n}", status_topic=f"p/b{n}/status")
              for n in range(3)]
    for board in boards:
        board.start()
    wait_for(lambda: all(b.connected for b in boards), what="three boards")
    builtin_broker.pause()
    assert builtin_broker.paused and builtin_broker.client_ids() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((builtin_broker.host, builtin_broker.port), timeout=5)
    wait_for(lambda: not any(b.connected for b in boards + [recorder.link]),
             what="every client to see the outage")
    for board in boards:
        board.publish("p/event", {"during": "outage"}, qos=1)  # kept in the outbox
    builtin_broker.resume()
    wait_for(lambda: all(link.connects == 2 and link.connected
                         for link in boards + [recorder.link]),
             timeout_s=15, what="every client back", step=lambda: recorder.link.poll(0.01))
    recorder.ready()
    for board in boards:
        board.publish("p/event", {"during": "after"}, qos=1)
    recorder.wait(lambda: recorder.topics().count("p/event") >= 6,
                  step=lambda: [b.poll() for b in boards])
    assert all(builtin_broker.retained()[f"p/b{n}/status"] == b"online" for n in range(3))
    for link in boards + [recorder.link]:
        link.close()
    assert all(builtin_broker.retained()[f"p/b{n}/status"] == b"offline" for n in range(3))


def test_two_hundred_links_each_receive_their_own_message(builtin_broker, tmp_path):
    count = 200
    received: list[list] = [[] for _ in range(count)]
    links = []
    for n in range(count):
        link = _link(builtin_broker, tmp_path, f"many-{n}")
        link.subscribe(f"many/{n}/#", received[n].append)
        link.start()
        links.append(link)

    def poll_all():
        for link in links:
            link.poll()

    wait_for(lambda: all(link.connected for link in links), 30, "200 connections",
             step=poll_all)
    for n, link in enumerate(links):
        link.publish(f"many/{n}/probe", {}, qos=1)  # after its SUBSCRIBE, on its connection
    wait_for(lambda: all(box for box in received), 30, "every probe back", step=poll_all)
    sender = RawClient(builtin_broker, "sender")
    sender.send(b"".join(publish_packet(f"many/{n}/mine", str(n).encode(), qos=1,
                                        packet_id=n + 1) for n in range(count)))
    wait_for(lambda: all(len(box) == 2 for box in received), 30, "every own message",
             step=poll_all)
    assert all(box[1].topic == f"many/{n}/mine" and box[1].payload == str(n).encode()
               for n, box in enumerate(received))
    closers = [threading.Thread(target=link.close) for link in links]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(30)
    sender.close()


def test_stop_closes_every_connection_and_joins_the_thread(tmp_path):
    broker = Broker().start()
    client = RawClient(broker, "client")
    thread_name = f"mqtt-broker:{broker.port}"
    assert thread_name in [thread.name for thread in threading.enumerate()]
    broker.stop()
    assert thread_name not in [thread.name for thread in threading.enumerate()]
    assert client.closed_by_broker()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((broker.host, broker.port), timeout=5)
    broker.stop()  # twice is harmless
    with pytest.raises(RuntimeError, match="not running"):
        broker.pause()
    client.close()


# -- the contract tests Mosquitto passes, on the built-in broker ---------------------------

class _StoppableBuiltin:
    """The built-in broker shaped like the Mosquitto fixture's broker: stop() and start() take
    it away and bring it back on the same port (pause and resume)."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.host, self.port = broker.host, broker.port

    def stop(self) -> None:
        self.broker.pause()

    def start(self) -> None:
        self.broker.resume()


def test_contract_link_messages_in_order_with_envelope_and_status(builtin_broker, tmp_path):
    test_mqtt_link.test_messages_arrive_in_order_with_envelope_and_status(
        lambda: builtin_broker, tmp_path)


def test_contract_link_backlog_after_an_outage(builtin_broker, tmp_path):
    test_mqtt_link.test_backlog_after_an_outage_is_sent_once_in_order_marked_hist(
        lambda: _StoppableBuiltin(builtin_broker), tmp_path)


def test_contract_board_state_events_and_status(builtin_broker, tmp_path):
    test_mqtt_board.test_state_events_and_status_follow_the_contract(
        lambda: builtin_broker, tmp_path)


def test_contract_leader_redistributes_after_a_board_is_killed(builtin_broker, tmp_path,
                                                               sim_dir):
    """Boards and a leader over MQTT, one board a separate process killed with SIGKILL: its
    Last Will reaches the leader and the budget is split again within one leader period."""
    test_leader_mqtt.test_sigkill_board_redistributed_within_one_leader_period(
        builtin_broker, tmp_path, sim_dir)
