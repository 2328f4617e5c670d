"""A small MQTT 3.1.1 broker in the standard library, so `hearth sim` needs nothing installed.

It serves the simulator: hundreds of Links in the same process, on loopback, for minutes to
hours. A `selectors` loop over non-blocking sockets runs either on a daemon thread of its own
(`start()`), with the public methods handing their work to it through a queue, or on the
caller's thread (`start(threaded=False)`, then `run_once()` as often as the caller likes):
the site simulator drives it that way between its steps, because a second busy Python
thread costs the simulator far more in contention for the interpreter than its own work.
Either way one thread touches every socket, the subscription tree and the retained store.

What it does (docs/builtin-broker.md has the whole list):
* CONNECT is checked (protocol name and level, flags, will, client id); every session is
  clean, so CONNACK always says "no session present", even to a client asking for a persistent
  session. Username and password are read and ignored: there is no authentication and no TLS.
* PUBLISH in at QoS 0, 1 and 2 (QoS 2 with the PUBREC/PUBREL/PUBCOMP handshake, delivered once).
  Subscriptions are granted at most QoS 1, so nothing goes out at QoS 2; a subscriber receives
  a message once, at the highest QoS of its matching filters, capped by the publish's QoS.
* Retained messages (an empty retained payload deletes), the Last Will (on an abrupt close, a
  keepalive overrun at 1.5 x, a protocol error, a dropped slow consumer or a client-id takeover;
  never after DISCONNECT), $-topics hidden from filters that start with a wildcard.
* A malformed packet closes that connection only; a client whose unsent output passes
  `max_outbound_bytes` is dropped rather than buffered without limit.

`pause()` simulates an outage: the listening socket is closed (connects are refused) and every
connection is dropped without wills, as if the broker process died. Retained messages are kept,
because the process lives on: after `resume()` the site looks like a broker restarted with its
retained store persisted. Nothing survives `stop()`.
"""

import collections
import itertools
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable

from agent.mqtt.topics import topic_matches

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    8, 9, 10, 11, 12, 13, 14)

PROTOCOL_LEVEL = 4
"""MQTT 3.1.1; anything else gets CONNACK return code 1."""
REFUSED_PROTOCOL, REFUSED_IDENTIFIER = 1, 2
MAX_GRANTED_QOS = 1
SUBSCRIBE_FAILURE = 0x80
KEEPALIVE_GRACE = 1.5
"""The spec's "one and a half times the Keep Alive" before the server drops a silent client."""
MAX_PACKET_ID = 65535

_FIXED_FLAGS = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}
"""Packets whose fixed-header flags are not zero; PUBLISH's carry DUP, QoS and RETAIN."""
_FROM_CLIENT = {CONNECT, PUBLISH, PUBACK, PUBREL, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT}
"""What a client may send us. PUBREC and PUBCOMP would answer an outbound QoS 2 we never send."""


class _ProtocolError(Exception):
    """The client broke the protocol; its connection is closed (with its will)."""


def encode_remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _packet(kind_and_flags: int, body: bytes = b"") -> bytes:
    return bytes([kind_and_flags]) + encode_remaining_length(len(body)) + body


def valid_topic_name(topic: str) -> bool:
    """A name to publish to: not empty, no wildcards, no NUL."""
    return bool(topic) and not any(c in topic for c in "+#\0")


def valid_topic_filter(topic_filter: str) -> bool:
    """Not empty, no NUL; `+` and `#` fill a whole level, `#` only the last."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[Any, int] = {}


class _SubscriptionTree:
    """Filters stored level by level, so a publish walks its own levels rather than every
    subscription of every client. The answer for a topic is kept until the subscriptions
    change: a site publishes to the same few topics every second."""

    CACHE_MAX = 10_000

    def __init__(self):
        self.root = _Node()
        self._matches: dict[str, dict[Any, int]] = {}

    def add(self, topic_filter: str, subscriber: Any, qos: int) -> None:
        self._matches = {}
        node = self.root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[subscriber] = qos

    def remove(self, topic_filter: str, subscriber: Any) -> None:
        self._matches = {}
        path = [self.root]
        for level in topic_filter.split("/"):
            node = path[-1].children.get(level)
            if node is None:
                return
            path.append(node)
        path[-1].subscribers.pop(subscriber, None)
        for level, parent, node in zip(reversed(topic_filter.split("/")), reversed(path[:-1]),
                                       reversed(path[1:])):
            if node.subscribers or node.children:
                return
            del parent.children[level]

    def match(self, topic: str) -> dict[Any, int]:
        """Each matching subscriber once, with the highest QoS among its matching filters (the
        caller must not change it)."""
        found = self._matches.get(topic)
        if found is None:
            if len(self._matches) >= self.CACHE_MAX:
                self._matches = {}
            found = self._matches[topic] = self._walk(topic)
        return found

    def _walk(self, topic: str) -> dict[Any, int]:
        found: dict[Any, int] = {}
        levels = topic.split("/")

        def take(node: _Node) -> None:
            for subscriber, qos in node.subscribers.items():
                if found.get(subscriber, -1) < qos:
                    found[subscriber] = qos

        def walk(node: _Node, index: int) -> None:
            if index == len(levels):
                take(node)
                if "#" in node.children:  # "a/#" also matches "a"
                    take(node.children["#"])
                return
            if index > 0 or not topic.startswith("$"):
                if "#" in node.children:
                    take(node.children["#"])
                if "+" in node.children:
                    walk(node.children["+"], index + 1)
            if levels[index] in node.children:
                walk(node.children[levels[index]], index + 1)

        walk(self.root, 0)
        return found


class _Reader:
    """Fields of one packet's variable header and payload; running short is a protocol error."""

    def __init__(self, data: bytes):
        self.data = data
        self.offset = 0

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, count: int) -> bytes:
        if self.remaining() < count:
            raise _ProtocolError("packet shorter than its fields")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def text(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise _ProtocolError("a string is not valid UTF-8")
        if "\0" in text:
            raise _ProtocolError("a string contains U+0000")
        return text

    def packet_id(self) -> int:
        packet_id = self.uint16()
        if packet_id == 0:
            raise _ProtocolError("packet id 0")
        return packet_id

    def end(self) -> None:
        if self.remaining():
            raise _ProtocolError(f"{self.remaining()} bytes after the last field")


class _Will:
    __slots__ = ("topic", "payload", "qos", "retain")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


class _Connection:
    """One client socket: its buffers and, after CONNECT, its (always clean) session."""

    def __init__(self, sock: socket.socket, address: Any, now_s: float):
        self.sock = sock
        self.address = address
        self.inbound = bytearray()
        self.outbound = bytearray()
        self.events = selectors.EVENT_READ
        self.open = True
        self.closing = False
        """Sending its last packets (a refusing CONNACK); nothing more is read."""
        self.client_id = ""
        self.connected = False
        self.keepalive_s = 0
        self.last_heard_s = now_s
        self.accepted_s = now_s
        self.will: _Will | None = None
        self.subscriptions: dict[str, int] = {}
        self.awaiting_release: set[int] = set()
        """Inbound QoS 2 packet ids delivered and waiting for PUBREL: a re-send is not delivered
        again."""
        self.in_flight: dict[int, str] = {}
        """Outbound QoS 1 packet id -> topic, until the client's PUBACK."""
        self.next_packet_id = 1

    def name(self) -> str:
        return self.client_id or f"{self.address[0]}:{self.address[1]}"

    def take_packet_id(self) -> int | None:
        if len(self.in_flight) >= MAX_PACKET_ID:
            return None
        while self.next_packet_id in self.in_flight:
            self.next_packet_id = self.next_packet_id % MAX_PACKET_ID + 1
        packet_id = self.next_packet_id
        self.next_packet_id = packet_id % MAX_PACKET_ID + 1
        return packet_id


class Broker:
    """An in-process MQTT 3.1.1 broker for the simulator (not for production: use Mosquitto).

    Broker(port=0) picks a free port at start(); `port` then says which. Use it as a context
    manager, or start() and stop(). pause() and resume() take it away and bring it back on the
    same port. Username and password are accepted and ignored.
    """

    TICK_S = 0.1
    """How often keepalives and CONNECT timeouts are checked when nothing happens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 log: logging.Logger | None = None, max_packet_bytes: int = 1 << 20,
                 max_outbound_bytes: int = 4 << 20, connect_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.port = port
        self.log = log or logging.getLogger(__name__)
        self.max_packet_bytes = max_packet_bytes
        self.max_outbound_bytes = max_outbound_bytes
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inline = False
        """Started with threaded=False: the caller runs the loop (run_once)."""
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._running = False
        self._paused = False
        self._connections: set[_Connection] = set()
        self._sessions: dict[str, _Connection] = {}
        self._tree = _SubscriptionTree()
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._wills: collections.deque[_Will] = collections.deque()
        self._unflushed: set[_Connection] = set()
        self._auto_ids = itertools.count(1)
        self._timeouts_checked_s = 0.0

    # -- the caller's side -----------------------------------------------------------------

    def start(self, threaded: bool = True) -> "Broker":
        """Listen, and serve on a daemon thread (or, threaded=False, in run_once); returns
        self."""
        if self._thread is not None or self._inline:
            return self
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        try:
            self._listen()
        except OSError:
            self._close_all()
            raise
        self._running = True
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"mqtt-broker:{self.port}",
                                            daemon=True)
            self._thread.start()
        else:
            self._inline = True
        self.log.info("built-in MQTT broker listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every connection and the listener, and join the thread. Safe to call twice."""
        if self._inline:
            self._inline = self._running = False
            self._close_all()
            return
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self._call(self._request_stop, timeout_s)
            thread.join(timeout_s)
        self._thread = None

    def pause(self) -> None:
        """Simulate an outage: refuse connections and drop every client (no wills)."""
        self._call(self._pause)

    def resume(self) -> None:
        """End the outage: listen again on the same port; clients reconnect with their backoff."""
        self._call(self._resume)

    @property
    def paused(self) -> bool:
        return self._paused

    def client_ids(self) -> list[str]:
        """Client ids with a live session, sorted (for tests and the simulator's status)."""
        return self._call(lambda: sorted(self._sessions))

    def retained(self) -> dict[str, bytes]:
        """The retained store: topic -> payload."""
        return self._call(lambda: {topic: payload
                                   for topic, (payload, _) in self._retained.items()})

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _call(self, function: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run function on the broker's thread, which owns all state, and return its result."""
        if self._inline:
            return function()
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the built-in broker is not running; call start() first")
        if threading.current_thread() is self._thread:
            return function()
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = function()
            except Exception as error:
                outcome["error"] = error
            finally:
                done.set()

        self._commands.put(run)
        self._wake()
        if not done.wait(timeout_s):
            raise TimeoutError(f"the built-in broker did not answer within {timeout_s} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe has woken the loop already

    # -- the broker's thread ---------------------------------------------------------------

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Serve whatever is ready, waiting up to timeout_s for something; returns how many
        sockets had something. Called by the broker's thread, or by the owner of a broker
        started with threaded=False."""
        events = self._selector.select(timeout_s)
        for key, mask in events:
            if key.data == "wake":
                self._run_commands()
            elif key.data == "listener":
                self._accept()
            else:
                self._service(key.data, mask)
            self._publish_wills()
        if self.clock() - self._timeouts_checked_s >= self.TICK_S:
            self._check_timeouts()
            self._publish_wills()
        self._flush()
        return len(events)

    def _run(self) -> None:
        try:
            while self._running:
                self.run_once(self.TICK_S)
        except Exception:
            self.log.exception("built-in MQTT broker loop failed; every client is dropped")
        finally:
            self._running = False
            self._close_all()
            self._run_leftover_commands()

    def _run_commands(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._run_leftover_commands()

    def _run_leftover_commands(self) -> None:
        """Also run after the loop ended, so a caller racing stop() gets an answer, not a hang."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _request_stop(self) -> None:
        self._running = False

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(1024)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "listener")

    def _pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None
        dropped = list(self._connections)
        for connection in dropped:
            self._drop(connection, "the broker is paused (simulated outage)", will=False)
        self.log.warning("built-in MQTT broker paused: %d clients dropped, port %d refuses "
                         "connections until resume()", len(dropped), self.port)

    def _resume(self) -> None:
        if not self._paused:
            return
        self._listen()
        self._paused = False
        self.log.warning("built-in MQTT broker resumed on port %d", self.port)

    def _close_all(self) -> None:
        for connection in list(self._connections):
            self._drop(connection, "the broker stopped", will=False)
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        self._listener = None
        if self._selector is not None:
            self._selector.close()
        self._wills.clear()

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.log.warning("accept failed (%s); the broker keeps listening", error)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, address, self.clock())
            self._connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _service(self, connection: _Connection, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._write(connection)
            if mask & selectors.EVENT_READ and connection.open and not connection.closing:
                self._read(connection)
        except _ProtocolError as error:
            self._drop(connection, f"protocol error: {error}", will=True)
        except Exception:
            self.log.exception("%s: broker failed handling this client; it is dropped",
                               connection.name())
            self._drop(connection, "broker error", will=True)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(connection, f"read failed ({error})", will=True)
            return
        if not data:
            self._drop(connection, "closed without DISCONNECT", will=True)
            return
        connection.last_heard_s = self.clock()
        connection.inbound += data
        buffer = connection.inbound
        start = 0
        while connection.open and not connection.closing:
            header = self._parse_fixed_header(buffer, start)
            if header is None:
                break
            first, body_start, length = header
            self._handle(connection, first, bytes(buffer[body_start:body_start + length]))
            start = body_start + length
        del buffer[:start]

    def _parse_fixed_header(self, buffer: bytearray, start: int) -> tuple[int, int, int] | None:
        """(first byte, body offset, body length) of the next whole packet, else None."""
        length = 0
        for index in range(4):
            position = start + 1 + index
            if position >= len(buffer):
                return None
            digit = buffer[position]
            length += (digit & 0x7F) << (7 * index)
            if not digit & 0x80:
                break
        else:
            raise _ProtocolError("remaining length longer than four bytes")
        if length > self.max_packet_bytes:
            raise _ProtocolError(f"a {length}-byte packet (limit {self.max_packet_bytes})")
        body_start = position + 1
        if len(buffer) - body_start < length:
            return None
        return buffer[start], body_start, length

    def _handle(self, connection: _Connection, first: int, body: bytes) -> None:
        kind, flags = first >> 4, first & 0x0F
        if kind not in _FROM_CLIENT:
            raise _ProtocolError(f"packet type {kind} is not one a client sends")
        if kind != PUBLISH and flags != _FIXED_FLAGS.get(kind, 0):
            raise _ProtocolError(f"packet type {kind} with flags {flags:#x}")
        if kind == CONNECT:
            if connection.connected:
                raise _ProtocolError("a second CONNECT")
            self._on_connect(connection, _Reader(body))
            return
        if not connection.connected:
            raise _ProtocolError(f"packet type {kind} before CONNECT")
        reader = _Reader(body)
        if kind == PUBLISH:
            self._on_publish(connection, flags, reader)
        elif kind == PUBACK:
            packet_id = reader.packet_id()
            reader.end()
            connection.in_flight.pop(packet_id, None)
        elif kind == PUBREL:
            packet_id = reader.packet_id()
            reader.end()
            connection.awaiting_release.discard(packet_id)
            self._send(connection, _packet(PUBCOMP << 4, struct.pack("!H", packet_id)))
        elif kind == SUBSCRIBE:
            self._on_subscribe(connection, reader)
        elif kind == UNSUBSCRIBE:
            self._on_unsubscribe(connection, reader)
        elif kind == PINGREQ:
            reader.end()
            self._send(connection, _packet(PINGRESP << 4))
        elif kind == DISCONNECT:
            reader.end()
            self._drop(connection, "DISCONNECT", will=False)

    def _on_connect(self, connection: _Connection, reader: _Reader) -> None:
        protocol = reader.text()
        level = reader.byte()
        if protocol not in ("MQTT", "MQIsdp"):  # MQIsdp: MQTT 3.1, refused politely below
            raise _ProtocolError(f"protocol name {protocol!r}")
        if protocol != "MQTT" or level != PROTOCOL_LEVEL:
            self.log.info("%s:%d asked for protocol level %d; only 4 (MQTT 3.1.1) is served",
                          *connection.address[:2], level)
            self._refuse(connection, REFUSED_PROTOCOL)
            return
        flags = reader.byte()
        keepalive_s = reader.uint16()
        has_will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
        has_username, has_password = bool(flags & 0x80), bool(flags & 0x40)
        if flags & 0x01:
            raise _ProtocolError("reserved CONNECT flag set")
        if will_qos == 3 or (not has_will and (will_qos or will_retain)):
            raise _ProtocolError(f"will flags {flags:#x}")
        if has_password and not has_username:
            raise _ProtocolError("a password without a username")
        client_id = reader.text()
        will = None
        if has_will:
            will_topic = reader.text()
            if not valid_topic_name(will_topic):
                raise _ProtocolError(f"will topic {will_topic!r}")
            will = _Will(will_topic, reader.binary(), will_qos, will_retain)
        if has_username:
            reader.text()
        if has_password:
            reader.binary()
        reader.end()
        if not client_id:
            if not flags & 0x02:
                self._refuse(connection, REFUSED_IDENTIFIER)
                return
            client_id = f"hearth-auto-{next(self._auto_ids)}"
        previous = self._sessions.get(client_id)
        if previous is not None:
            self._drop(previous, f"client id {client_id!r} taken over by a new connection",
                       will=True)
        connection.client_id = client_id
        connection.connected = True
        connection.keepalive_s = keepalive_s
        connection.will = will
        self._sessions[client_id] = connection
        self._send(connection, _packet(CONNACK << 4, bytes([0, 0])))
        self.log.debug("%s connected (keepalive %d s)", client_id, keepalive_s)

    def _refuse(self, connection: _Connection, return_code: int) -> None:
        self._send(connection, _packet(CONNACK << 4, bytes([0, return_code])))
        connection.closing = True

    def _on_publish(self, connection: _Connection, flags: int, reader: _Reader) -> None:
        qos, retain, duplicate = (flags >> 1) & 3, bool(flags & 1), bool(flags & 8)
        if qos == 3:
            raise _ProtocolError("PUBLISH with QoS 3")
        if qos == 0 and duplicate:
            raise _ProtocolError("PUBLISH with DUP at QoS 0")
        topic = reader.text()
        if not valid_topic_name(topic):
            raise _ProtocolError(f"publish to {topic!r}")
        packet_id = reader.packet_id() if qos else 0
        payload = reader.take(reader.remaining())
        if qos == 1:
            self._send(connection, _packet(PUBACK << 4, struct.pack("!H", packet_id)))
        elif qos == 2:
            self._send(connection, _packet(PUBREC << 4, struct.pack("!H", packet_id)))
            if packet_id in connection.awaiting_release:
                return  # a re-send before PUBREL: delivered already
            connection.awaiting_release.add(packet_id)
        self._publish(topic, payload, qos, retain)

    def _on_subscribe(self, connection: _Connection, reader: _Reader) -> None:
        packet_id = reader.packet_id()
        requests = []
        while reader.remaining():
            topic_filter = reader.text()
            options = reader.byte()
            if options > 2:
                raise _ProtocolError(f"requested QoS byte {options:#x}")
            requests.append((topic_filter, options))
        if not requests:
            raise _ProtocolError("SUBSCRIBE without a topic filter")
        granted = []
        for topic_filter, requested_qos in requests:
            if not valid_topic_filter(topic_filter):
                self.log.info("%s: refused subscription to %r (not a valid filter)",
                              connection.name(), topic_filter)
                granted.append(SUBSCRIBE_FAILURE)
                continue
            qos = min(requested_qos, MAX_GRANTED_QOS)
            connection.subscriptions[topic_filter] = qos
            self._tree.add(topic_filter, connection, qos)
            granted.append(qos)
        self._send(connection, _packet(SUBACK << 4, struct.pack("!H", packet_id)
                                       + bytes(granted)))
        for (topic_filter, _), qos in zip(requests, granted):
            if qos == SUBSCRIBE_FAILURE:
                continue
            for topic, (payload, stored_qos) in list(self._retained.items()):
                if connection.open and topic_matches(topic_filter, topic):
                    self._deliver(connection, topic, payload, min(qos, stored_qos), retain=True)

    def _on_unsubscribe(self, connection: _Connection, reader: _Reader) -> None:
        packet_id = reader.packet_id()
        topic_filters = []
        while reader.remaining():
            topic_filters.append(reader.text())
        if not topic_filters:
            raise _ProtocolError("UNSUBSCRIBE without a topic filter")
        for topic_filter in topic_filters:
            if connection.subscriptions.pop(topic_filter, None) is not None:
                self._tree.remove(topic_filter, connection)
        self._send(connection, _packet(UNSUBACK << 4, struct.pack("!H", packet_id)))

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
        for subscriber, granted_qos in self._tree.match(topic).items():
            if subscriber.open:
                self._deliver(subscriber, topic, payload, min(qos, granted_qos), retain=False)

    def _deliver(self, connection: _Connection, topic: str, payload: bytes, qos: int,
                 retain: bool) -> None:
        body = _utf8(topic)
        if qos:
            packet_id = connection.take_packet_id()
            if packet_id is None:
                self._drop(connection, f"{MAX_PACKET_ID} messages unacknowledged (a slow "
                           "consumer)", will=True)
                return
            connection.in_flight[packet_id] = topic
            body += struct.pack("!H", packet_id)
        self._send(connection, _packet(PUBLISH << 4 | qos << 1 | int(retain), body + payload))

    def _send(self, connection: _Connection, packet: bytes) -> None:
        if not connection.open:
            return
        connection.outbound += packet
        if len(connection.outbound) > self.max_outbound_bytes:
            self._drop(connection, f"more than {self.max_outbound_bytes} bytes waiting to be "
                       "sent (a slow consumer)", will=True)
            return
        self._unflushed.add(connection)

    def _flush(self) -> None:
        while self._unflushed:
            connection = self._unflushed.pop()
            if connection.open:
                self._write(connection)

    def _write(self, connection: _Connection) -> None:
        if connection.outbound:
            try:
                sent = connection.sock.send(connection.outbound)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._drop(connection, f"write failed ({error})", will=True)
                return
            del connection.outbound[:sent]
        if not connection.outbound and connection.closing:
            self._drop(connection, "refused at CONNECT", will=False)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outbound else 0)
        if wanted != connection.events:
            connection.events = wanted
            self._selector.modify(connection.sock, wanted, connection)

    def _check_timeouts(self) -> None:
        now_s = self._timeouts_checked_s = self.clock()
        for connection in list(self._connections):
            if not connection.open:
                continue
            if connection.connected:
                limit_s = connection.keepalive_s * KEEPALIVE_GRACE
                if connection.keepalive_s and now_s - connection.last_heard_s > limit_s:
                    self._drop(connection, f"silent for more than {limit_s:g} s (keepalive "
                               f"{connection.keepalive_s} s)", will=True)
            elif now_s - connection.accepted_s > self.connect_timeout_s:
                self._drop(connection, f"no CONNECT within {self.connect_timeout_s:g} s",
                           will=False)

    def _drop(self, connection: _Connection, reason: str, will: bool) -> None:
        """Close a connection now; its will, if due, is published once the current packet is
        handled (never from inside another client's delivery)."""
        if not connection.open:
            return
        connection.open = False
        self._connections.discard(connection)
        self._unflushed.discard(connection)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        connection.sock.close()
        for topic_filter in connection.subscriptions:
            self._tree.remove(topic_filter, connection)
        connection.subscriptions.clear()
        if connection.connected and self._sessions.get(connection.client_id) is connection:
            del self._sessions[connection.client_id]
        if will and connection.will is not None:
            self._wills.append(connection.will)
        # A clean leave, an outage or a stop is expected; a will-worthy drop is worth a line.
        log = self.log.info if will else self.log.debug
        log("%s disconnected: %s%s", connection.name(), reason,
            "; its will is published" if will and connection.will else "")

    def _publish_wills(self) -> None:
        while self._wills:
            will = self._wills.popleft()
            self._publish(will.topic, will.payload, will.qos, will.retain)
