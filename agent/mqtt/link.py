"""The link to an MQTT broker: the only module that imports paho; everyone else sends messages.

One Link is one connection (a board, a leader, a test's listener); hundreds live in one process
in the simulator, so everything it needs - broker, credentials, boot id, clock, outbox - comes
in through the constructor. paho runs its network loop on its own thread (`loop_start`) and
reconnects with exponential backoff; its callbacks only record what happened (connected, a
message arrived, a publish was acknowledged). Handlers run in `poll()`, on the caller's thread:
a board calls it from its control loop, so the agent is only ever touched by that thread.

Many Links in one process (the simulator, scripts/bench-mqtt-scale) share a NetworkLoop instead:
paho's own loop thread waits in select(), which cannot watch a file descriptor above 1023, and
each threaded client holds three (its socket and a wake-up socket pair), so about 340 threaded
Links fit in a process; the NetworkLoop runs any number of them on one thread with epoll, one
descriptor each, and saves a thread per connection. Its reconnect backoff is paho's.

Delivery: kept messages (QoS 1) are handed to paho a window at a time and forgotten only when the
broker acknowledges them. paho itself re-sends what was in flight when a connection dropped, so
after a reconnect nothing new is handed over until that re-send is acknowledged: order holds
and no message is sent twice by us (QoS 1 can still duplicate on the wire; receivers drop a
(boot, seq) they have seen).

Identity: the broker gives a client id one connection and closes the older one when another
logs in with it (with the generated broker config, a client id is the account's username). Two
boards flashed with one identity therefore take the connection from each other at every
reconnect, and over MQTT 3.1.1 the one closed learns no reason, only that the connection is
gone. So the Link counts connections the broker closed soon after accepting them: TWIN_LOSSES
in a row are reported once (DUPLICATE_IDENTITY, to `problem_listeners` from poll() and to the
log), and the Link then reconnects only every reconnect_max_s until a connection holds again.
MQTT 5 would name the reason (0x8E, session taken over), but the built-in broker of the
simulator speaks 3.1.1 only, and paho builds reason codes and properties for every v5 message.
"""

import array
import dataclasses
import fcntl
import logging
import queue
import select
import socket
import termios
import threading
import time
from typing import Any, Callable, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.errors import MessageError
from agent.identity import IDENTITY_FILE, IDENTITY_TABLE
from agent.mqtt import envelope
from agent.mqtt.outbox import Outbox, Pending
from agent.mqtt.topics import topic_matches

ONLINE = "online"
OFFLINE = "offline"
HANDLER_CACHE_MAX = 10_000
READS_PER_WAKE = 256
"""Packets a NetworkLoop reads from one ready socket before it serves the others."""
DUPLICATE_IDENTITY = "mqtt:duplicate_identity"
TWIN_LOSSES = 3
"""Connections in a row closed by the broker within the twin window of being accepted, before
the Link concludes that another client logs in with its identity."""
TWIN_WINDOW_STEPS = 3
"""The twin window, in reconnect_min_s: a twin takes the connection back after its own first
backoff step (reconnect_min_s), so a connection it closes has lasted about that long."""


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    """Where the broker is and how to prove who we are (the config's [mqtt] section)."""

    host: str
    port: int = 1883
    keepalive_s: int = 60
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60


class Message(NamedTuple):
    """A message as received; `data()` checks the envelope, `text()` is for plain payloads.
    Immutable; a tuple because a leader receives one per board per second."""

    topic: str
    payload: bytes
    retained: bool = False

    def data(self) -> dict[str, Any]:
        return envelope.decode(self.payload)

    def text(self) -> str:
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MessageError(f"payload is not UTF-8 ({error.reason})")


Handler = Callable[[Message], None]


class LinkProblem(NamedTuple):
    """Something about the connection that an operator must act on; an agent makes it an
    event. `value` is the client id."""

    cause: str
    value: str
    message: str


class Link:
    def __init__(self, settings: LinkSettings, *, client_id: str, outbox: Outbox, boot: str,
                 wall_clock: Callable[[], float] = time.time, status_topic: str = "",
                 log: logging.Logger | None = None, window: int = 10, inbox_max: int = 1000,
                 network: "NetworkLoop | None" = None):
        self.settings = settings
        self.network = network
        """Runs this link's network I/O; None: paho's own loop thread."""
        self.client_id = client_id
        self.outbox = outbox
        self.envelope = envelope.Envelope(boot, wall_clock)
        self.status_topic = status_topic
        self.log = log or logging.getLogger("hearth.mqtt")
        self.window = window
        self.handler_errors = 0
        """Exceptions raised by handlers (each logged, none stopped the link)."""
        self.inbox_dropped = 0
        """Received messages dropped because poll() fell behind by inbox_max."""
        self.connects = 0
        """Successful connections so far (1 after the first; more after reconnects)."""
        self.problem_listeners: list[Callable[[LinkProblem], None]] = []
        """Called from poll(), on the caller's thread, with each LinkProblem found."""
        self._problems: queue.SimpleQueue[LinkProblem] = queue.SimpleQueue()
        self._connected_at_s = 0.0
        self._quick_losses = 0
        """Connections in a row that the broker closed within the twin window."""
        self._twin_reported = False
        self._connected = False
        self._generation = 0
        self._pumped_generation = 0
        self._lock = threading.RLock()
        self._subscriptions: list[tuple[str, Handler]] = []
        self._subscriptions_lock = threading.Lock()
        self._handlers: dict[str, list[Handler]] = {}
        """topic -> its handlers, kept until the subscriptions change (a leader hears the same
        topics every second)."""
        self._in_flight: dict[int, tuple[int, Pending]] = {}
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.inbox_max = inbox_max
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._started = False
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        settings = self.settings
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=paho.MQTTv311)
        # A second guard: our callbacks catch their own errors, paho's must not kill its thread.
        client.suppress_exceptions = True
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        client.max_inflight_messages_set(self.window * 2)
        if settings.ca_file:
            client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file or None,
                           keyfile=settings.key_file or None)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if self.status_topic:
            client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message  # on_publish: see _awaiting_acks
        return client

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        """Connect in the background; a broker that is not there yet is retried with backoff."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.settings.host, self.settings.port,
                                   self.settings.keepalive_s)
        if self.network is not None:
            self.network.add(self._client, self.settings.reconnect_min_s,
                             self.settings.reconnect_max_s)
        else:
            self._client.loop_start()

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0, retain: bool = False,
                keep: bool | None = None) -> dict[str, Any]:
        """Stamp `payload` with the envelope and queue it; returns the stamped message.

        `keep` (default: QoS 1 and above) puts it in the never-dropped class; otherwise it is
        telemetry, dropped oldest first while the broker is away.
        """
        keep = qos >= 1 if keep is None else keep
        if keep and qos < 1:
            raise ValueError(f"a kept message needs QoS 1 or 2, not {qos}: paho drops QoS 0 "
                             "while disconnected")
        with self._lock:
            self._pump()  # first, so a reconnect marks only what waited through it as hist
            message = self.envelope.stamp(topic, payload)
            self.outbox.put(Pending(topic, message, qos, retain), keep)
            self._pump()
        return message

    def subscribe(self, pattern: str, handler: Handler) -> None:
        """Call handler(message) from poll() for each message matching pattern (MQTT wildcards);
        the subscription is renewed on every reconnect."""
        with self._subscriptions_lock:
            self._subscriptions.append((pattern, handler))
            self._handlers = {}
        if self._connected:
            self._client.subscribe(pattern, qos=1)
            self._flush()

    def poll(self, timeout_s: float = 0.0, max_messages: int = 100) -> int:
        """Send what waits, then run handlers for received messages; returns how many.

        Waits up to timeout_s for the first message. Never raises because of a handler.
        """
        with self._lock:
            self._pump()
        self._report_problems()
        handled = 0
        wait_s = timeout_s
        while handled < max_messages:
            try:
                message = self._inbox.get(timeout=wait_s) if wait_s > 0 else (
                    self._inbox.get_nowait())
            except queue.Empty:
                break
            wait_s = 0.0
            handled += 1
            self._dispatch(message)
        return handled

    def idle(self) -> bool:
        """Nothing waiting and nothing unacknowledged: what a clean stop or a test waits for."""
        with self._lock:
            self._pump()
            return not self._in_flight and len(self.outbox) == 0

    def close(self, timeout_s: float = 2.0) -> None:
        """Say `offline`, disconnect cleanly (no Last Will), and keep unsent kept messages."""
        if self._started:
            if self._connected and self.status_topic:
                info = self._client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
                self._flush()
                try:
                    self._wait_for_publish(info, timeout_s)
                except (RuntimeError, ValueError) as error:
                    self.log.warning("%s: offline status not confirmed: %s", self.client_id,
                                     error)
            self._started = False
            self._client.disconnect()
            self._flush()
            if self.network is not None:
                self.network.remove(self._client, timeout_s)
            else:
                self._client.loop_stop()
        with self._lock:
            self._drain_acks()
            self.outbox.persist([pending for _, pending in self._in_flight.values()])
            self._in_flight.clear()

    def _wait_for_publish(self, info: paho.MQTTMessageInfo, timeout_s: float) -> None:
        if self.network is None:
            info.wait_for_publish(timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        while not info.is_published() and time.monotonic() < deadline:
            self.network.wait(0.01)

    def abort(self) -> None:
        """Drop the connection the way a crashed process does, with no DISCONNECT, so the
        broker publishes the Last Will; the simulator's leader crash. The Link is dead after."""
        if self._started:
            self._started = False
            sock = self._client.socket()
            if self.network is not None:
                self.network.remove(self._client, timeout_s=0.0)
            else:
                self._client.loop_stop()
            if sock is not None:
                sock.close()

    # -- the loop side -------------------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        handlers = self._handlers.get(message.topic)
        if handlers is None:
            with self._subscriptions_lock:
                handlers = [handler for pattern, handler in self._subscriptions
                            if topic_matches(pattern, message.topic)]
                if len(self._handlers) >= HANDLER_CACHE_MAX:
                    self._handlers = {}
                self._handlers[message.topic] = handlers
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                self.handler_errors += 1
                self.log.exception("%s: handler for %s failed; the link goes on",
                                   self.client_id, message.topic)

    def _report_problems(self) -> None:
        while not self._problems.empty():  # one consumer: the thread that polls
            problem = self._problems.get_nowait()
            for listener in self.problem_listeners:
                try:
                    listener(problem)
                except Exception:
                    self.handler_errors += 1
                    self.log.exception("%s: problem listener failed; the link goes on",
                                       self.client_id)

    def _drain_acks(self) -> None:
        acks = self._acks
        while not acks.empty():  # one consumer (under self._lock): not empty means one waits
            self._in_flight.pop(acks.get_nowait(), None)
        if not self._in_flight and self._client.on_publish is not None:
            self._awaiting_acks(False)

    def _awaiting_acks(self, awaiting: bool) -> None:
        """Have paho report acknowledgements only while kept messages are in flight: with
        on_publish set, paho also builds a ReasonCode and a Properties for every QoS 0 message
        it writes, and telemetry is most of what a Link sends."""
        self._client.on_publish = self._on_publish if awaiting else None

    def _flush(self) -> None:
        """On a NetworkLoop, have it write what this thread just queued (see NetworkLoop)."""
        if self.network is not None:
            self.network.flush(self._client)

    def _pump(self) -> None:
        """Hand waiting messages to paho while connected (caller holds self._lock)."""
        self._drain_acks()
        if not self._connected:
            return
        if self._hand_over():
            self._flush()

    def _hand_over(self) -> bool:
        """Give paho what it may send now; True if it took anything."""
        handed = False
        generation = self._generation
        if generation != self._pumped_generation:
            self._pumped_generation = generation
            self.outbox.mark_backlog()
        if not len(self.outbox):
            return False
        # paho re-sends what was in flight before the reconnect; newer messages wait for it.
        resending = any(sent != generation for sent, _ in self._in_flight.values())
        while not resending and len(self._in_flight) < self.window:
            pending = self.outbox.peek_kept()
            if pending is None:
                break
            if self._client.on_publish is None:
                self._awaiting_acks(True)
            info = self._client.publish(pending.topic, pending.payload(), pending.qos,
                                        pending.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.log.warning("%s: paho refused a message (%s); retrying later",
                                 self.client_id, paho.error_string(info.rc))
                break
            # On NO_CONN paho has queued it and sends it after the reconnect.
            self.outbox.pop_kept()
            self._in_flight[info.mid] = (generation, pending)
            handed = True
        telemetry = self.outbox.take_telemetry()
        for index, pending in enumerate(telemetry):
            info = self._client.publish(pending.topic, pending.payload(), pending.qos,
                                        pending.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.outbox.return_telemetry(telemetry[index:])
                break
            handed = True
        return handed

    # -- paho's thread: record and return; never let an exception escape -------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self.log.warning("%s: broker %s:%d refused the connection: %s", self.client_id,
                                 self.settings.host, self.settings.port, reason_code)
                return
            self.connects += 1
            self._connected_at_s = time.monotonic()
            if self.network is not None:
                self.network.connected(client)
            if self.status_topic:
                client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            with self._subscriptions_lock:
                patterns = sorted({pattern for pattern, _ in self._subscriptions})
            if patterns:
                client.subscribe([(pattern, 1) for pattern in patterns])
            self._generation += 1
            self._connected = True
        except Exception:
            self.log.exception("%s: on_connect failed", self.client_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            was_connected, self._connected = self._connected, False
            if not (was_connected and self._started):
                return
            held_s = time.monotonic() - self._connected_at_s
            if held_s >= TWIN_WINDOW_STEPS * self.settings.reconnect_min_s:
                if self._quick_losses >= TWIN_LOSSES:
                    self._reconnect_delays(self.settings.reconnect_min_s)
                self._quick_losses, self._twin_reported = 0, False
            else:
                self._quick_losses += 1
            if self._quick_losses >= TWIN_LOSSES:
                self._reconnect_delays(self.settings.reconnect_max_s)
                if not self._twin_reported:
                    self._twin_reported = True
                    self._report_twin(held_s)
                return  # said once; the losses that follow are the twin's logins
            self.log.warning("%s: lost the broker (%s); reconnecting with backoff",
                             self.client_id, reason_code)
        except Exception:
            self.log.exception("%s: on_disconnect failed", self.client_id)

    def _reconnect_delays(self, first_s: int) -> None:
        """Wait first_s before each reconnect (then doubling, up to reconnect_max_s)."""
        if self.network is not None:
            self.network.backoff(self._client, first_s, self.settings.reconnect_max_s)
        else:
            self._client.reconnect_delay_set(first_s, self.settings.reconnect_max_s)

    def _report_twin(self, held_s: float) -> None:
        account = f" (MQTT account {self.settings.username})" if self.settings.username else ""
        message = (f"{self.client_id}{account}: the broker closed this connection "
                   f"{self._quick_losses} times in a row, the last after {held_s:.1f} s: "
                   "another client is logging in with the same identity, and the broker keeps "
                   "the newest. Two boards were most likely flashed with the same identity: "
                   "find the other one (the broker's log shows the address of each login) and "
                   f"give it its own ({IDENTITY_FILE} on its boot partition, or its slot or "
                   f"serial in {IDENTITY_TABLE}). Reconnecting only every "
                   f"{self.settings.reconnect_max_s} s until a connection holds.")
        self.log.error("%s", message)
        self._problems.put(LinkProblem(DUPLICATE_IDENTITY, self.client_id, message))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho holds its message lock here: only a lock-free hand-over, never self._lock.
        try:
            self._acks.put(mid)
        except Exception:
            self.log.exception("%s: on_publish failed", self.client_id)

    def _on_message(self, client, userdata, message) -> None:
        try:
            inbox = self._inbox
            while inbox.qsize() >= self.inbox_max:  # poll() fell behind: drop the oldest
                try:
                    inbox.get_nowait()
                    self.inbox_dropped += 1
                except queue.Empty:
                    break
            inbox.put(Message(message.topic, bytes(message.payload), bool(message.retain)))
        except Exception:
            self.log.exception("%s: on_message failed", self.client_id)


class NetworkLoop:
    """One thread running the network I/O of many Links' paho clients with epoll.

    The thread is its own (default), or the owner's: made with threaded=False, the loop runs
    only inside run_once() and wait(), which the site simulator calls between its steps, so a
    whole simulated site is one busy thread and does not pay for contention over the GIL.

    paho's external-loop interface: the socket callbacks tell us which sockets to watch;
    loop_read, loop_write and, once a second, loop_misc (keepalive) run on this thread only. A
    connection that fails or drops is retried after paho's backoff (reconnect_min_s doubling up
    to reconnect_max_s), reset by a successful connection. `client.reconnect()` connects with a
    blocking TCP connect, which is immediate on the loopback and LAN brokers this is for.

    Two gaps in paho's interface are closed here. A publish from another thread asks for a write
    through on_socket_register_write only when paho's `_registered_write` flag is clear, and
    this thread clears that flag after it has found the queue empty: a packet queued in between
    waits unsent until the next keepalive. So the Link tells the loop after every publish
    (`flush`), and the loop writes for it. And a keepalive that times out inside loop_misc
    closes the socket but returns success, so the loop checks for a closed socket itself.
    """

    MISC_PERIOD_S = 1.0
    BESIDE_SLICE_S = 0.002
    """While waiting, how long the loop beside may block before this one looks again."""

    def __init__(self, name: str = "mqtt-network", log: logging.Logger | None = None,
                 threaded: bool = True, beside: Callable[[float], int] | None = None):
        self.log = log or logging.getLogger("hearth.mqtt")
        self._epoll = select.epoll()
        self._by_fd: dict[int, paho.Client] = {}
        self._clients: dict[paho.Client, list[float]] = {}
        """client -> [backoff s, min s, max s]"""
        self._retry_at: dict[paho.Client, float] = {}
        """client -> its next connect attempt (monotonic), for clients not connected"""
        self._lock = threading.Lock()
        self._flush_due: set[paho.Client] = set()
        self._wake_r, self._wake_w = _socketpair()
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._stopping = False
        self._next_misc_s = time.monotonic() + self.MISC_PERIOD_S
        self._thread: threading.Thread | None = None
        self._beside = beside
        """threaded=False: another loop on the owner's thread that must run whenever this one
        waits (an in-process broker's run_once); it returns how many sockets it served."""
        if threaded:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def add(self, client: paho.Client, reconnect_min_s: float, reconnect_max_s: float) -> None:
        """Start connecting `client` (after connect_async) and keep it connected."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients[client] = [0.0, float(reconnect_min_s), float(reconnect_max_s)]
            self._retry_at[client] = time.monotonic()
        self._wake()

    def remove(self, client: paho.Client, timeout_s: float = 2.0) -> None:
        """Stop reconnecting `client`; wait until its DISCONNECT is written and the socket closed
        (the caller has called client.disconnect())."""
        with self._lock:
            self._clients.pop(client, None)
            self._retry_at.pop(client, None)
        self._wake()
        deadline = time.monotonic() + timeout_s
        while client.socket() is not None and time.monotonic() < deadline:
            self.wait(0.01)
        sock = client.socket()
        if sock is not None:  # never answered: close it here, the loop forgets the descriptor
            self._forget(sock)

    def flush(self, client: paho.Client) -> None:
        """Write what `client` has queued, from this loop's thread (any thread may call)."""
        with self._lock:
            wake = not self._flush_due and self._thread is not None
            self._flush_due.add(client)
        if wake:
            self._wake()

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho's socket callbacks (any thread) ------------------------------------------------

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._by_fd[sock.fileno()] = client
        try:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except (OSError, ValueError):
            self._epoll.modify(sock.fileno(), select.EPOLLIN)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._forget(sock)

    def _on_register_write(self, client, userdata, sock) -> None:
        try:
            self._epoll.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        except (OSError, ValueError):
            pass  # closed meanwhile: the reconnect writes what waits

    def _on_unregister_write(self, client, userdata, sock) -> None:
        try:
            self._epoll.modify(sock.fileno(), select.EPOLLIN)
        except (OSError, ValueError):
            pass

    def _forget(self, sock) -> None:
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return
        if fd < 0:
            return
        self._by_fd.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    # -- the loop thread -------------------------------------------------------------------

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Connect what is due, write what was flushed, and serve the sockets that are ready,
        waiting up to timeout_s for one; returns how many clients had something to do. Run by
        the loop's thread, or by the owner of a NetworkLoop made with threaded=False."""
        now = time.monotonic()
        with self._lock:
            due = [c for c, at in self._retry_at.items() if at <= now] if self._retry_at else []
            waits = list(self._retry_at.values())
        for client in due:
            self._connect(client)
        busy = self._write_flushed()
        if busy:
            timeout_s = 0.0
        timeout_s = max(0.0, min([now + timeout_s, self._next_misc_s, *waits])
                        - time.monotonic())
        try:
            events = self._epoll.poll(timeout_s)
        except InterruptedError:
            events = []
        for fd, mask in events:
            if fd == self._wake_r.fileno():
                try:
                    self._wake_r.recv(4096)
                except (BlockingIOError, OSError):
                    pass
                continue
            client = self._by_fd.get(fd)
            if client is None:
                continue
            busy += 1
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                rc = self._read(client)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mask & select.EPOLLOUT:
                rc = self._guarded(client.loop_write)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(client)
        if time.monotonic() >= self._next_misc_s:
            self._next_misc_s = time.monotonic() + self.MISC_PERIOD_S
            with self._lock:
                clients = list(self._clients)
            for client in clients:
                if client.socket() is not None:
                    self._guarded(client.loop_misc)
                if client.socket() is None:  # lost, and loop_misc may have said success
                    self._lost_unless_retrying(client)
        return busy + self._write_flushed()

    def wait(self, seconds: float) -> None:
        """Let time pass for the loop: sleep while its thread works, or run it meanwhile."""
        if self._thread is not None:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._beside is None:
                self.run_once(left)
            else:
                self.run_once(0.0)
                self._beside(min(left, self.BESIDE_SLICE_S))

    def settle(self, max_rounds: int = 20) -> None:
        """threaded=False: move what is ready until nothing moves (clients write, the broker
        beside routes, clients read into their Links' inboxes). A bound on rounds, so a client
        that always has something cannot hold the owner."""
        for _ in range(max_rounds):
            moved = self.run_once(0.0)
            if self._beside is not None:
                moved += self._beside(0.0)
            if not moved:
                return

    def _run(self) -> None:
        while not self._stopping:
            self.run_once(self.MISC_PERIOD_S)

    def _read(self, client: paho.Client) -> MQTTErrorCode:
        """Read what the socket holds. paho's loop_read reads one packet of QoS 0 traffic
        (it ignores its argument), so without this a leader hearing 64 boards would take 64
        rounds of the loop for one second's states."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READS_PER_WAKE):
            rc = self._guarded(client.loop_read)
            sock = client.socket()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None or not _unread(sock):
                break
        return rc

    def _write_flushed(self) -> int:
        with self._lock:
            if not self._flush_due:
                return 0
            clients, self._flush_due = self._flush_due, set()
        for client in clients:
            if client.want_write() and client.socket() is not None:
                if self._guarded(client.loop_write) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost(client)
        return len(clients)

    def _guarded(self, call, *args) -> MQTTErrorCode:
        try:
            return call(*args)
        except Exception:
            self.log.exception("paho failed in the network loop; reconnecting that client")
            return MQTTErrorCode.MQTT_ERR_UNKNOWN

    def _connect(self, client: paho.Client) -> None:
        try:
            client.reconnect()
        except Exception as error:  # refused, unreachable, TLS: try again after the backoff
            self.log.debug("connect failed: %s", error)
            self._lost(client)
            return
        with self._lock:
            self._retry_at.pop(client, None)
        self._wake()

    def _lost(self, client: paho.Client) -> None:
        """Schedule the next attempt, unless the link was closed (then paho disconnected it)."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is None:
                return
            retry[0] = retry[1] if retry[0] == 0 else min(retry[0] * 2, retry[2])
            self._retry_at[client] = time.monotonic() + retry[0]

    def _lost_unless_retrying(self, client: paho.Client) -> None:
        with self._lock:
            if client not in self._clients or client in self._retry_at:
                return
        self._lost(client)

    def backoff(self, client: paho.Client, reconnect_min_s: float,
                reconnect_max_s: float) -> None:
        """Change `client`'s reconnect backoff from its next lost connection on."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is not None:
                retry[1], retry[2] = float(reconnect_min_s), float(reconnect_max_s)

    def connected(self, client: paho.Client) -> None:
        """Called by the Link on a successful connection: the backoff starts over."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is not None:
                retry[0] = 0.0


def _unread(sock) -> bool:
    """Whether bytes wait in `sock` (or, for TLS, in its decrypted buffer)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except (OSError, ValueError):
        return False
    return count[0] > 0


def _socketpair() -> tuple[socket.socket, socket.socket]:
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    return reader, writer
