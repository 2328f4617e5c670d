"""The link to an MQTT broker: with network_loop.py, the only place the roles use paho; everyone
else sends messages (the fleet uplink keeps a session of its own, agent/fleet/uplink.py says why).

One Link is one connection (a board, a leader, a test's listener); hundreds live in one process
in the simulator, so everything it needs - broker, credentials, boot id, clock, outbox, and how
its network I/O runs - comes in through the constructor. paho's callbacks only record what
happened (connected, a message arrived, a publish was acknowledged). Handlers run in `poll()`,
on the caller's thread: a board calls it from its control loop, so the agent is only ever
touched by that thread.

Network I/O (connect, read, write, keepalive, reconnect with exponential backoff) is the `io`
given to the Link, a LinkIo: ThreadedIo, paho's own loop thread, for a board, leader or site in
the field (the default), or a NetworkLoop (agent/mqtt/network_loop.py) that runs many Links on
one thread for the simulator and the benchmarks. The Link never asks which one it has.

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
MQTT 5 would name the reason (0x8E, session taken over), but paho builds reason codes and
properties for every v5 message, and telemetry is most of what a Link sends.

Brokers: a site runs one broker and may run a standby. The Link takes them as a list and, each
time it connects again after a connection was refused, dropped or never made, tries the next one
(wrapping around), after the usual backoff; it says which broker it left and why, and which one
it is on (`broker`). The move happens in paho's pre-connect callback, which both kinds of LinkIo
go through, so the Link never asks which one it has.

No state lives only in a broker: the status, the newest message published with retain=True on
each topic (freshly stamped) and every asserted payload are published again at every connect,
so a standby, or a broker restarted without its database, learns them back.
"""

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, NamedTuple, Protocol

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
DUPLICATE_IDENTITY = "mqtt:duplicate_identity"
TWIN_LOSSES = 3
"""Connections in a row closed by the broker within the twin window of being accepted, before
the Link concludes that another client logs in with its identity."""
LOGIN_REFUSED = "mqtt:login_refused"
LOGIN_REFUSED_CODES = (134, 135)
"""CONNACK reasons (as paho names MQTT 3.1.1's 4 and 5) that mean the account, not the broker:
bad user name or password, not authorised."""
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
    more_brokers: tuple[tuple[str, int], ...] = ()
    """(host, port) of the brokers to try after host:port, in order: the site's standby."""

    @property
    def brokers(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *self.more_brokers)


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


class LinkIo(Protocol):
    """What runs a Link's network I/O. The Link calls these and nothing else of it; paho's
    callbacks (on_connect, on_message, ...) come from whichever thread serves the client."""

    def add(self, client: paho.Client, reconnect_min_s: float, reconnect_max_s: float) -> None:
        """Start connecting `client` (after connect_async) and keep it connected: a connection
        refused or lost is retried reconnect_min_s later, doubling up to reconnect_max_s."""

    def flush(self, client: paho.Client) -> None:
        """Have what this thread just queued on `client` written now, not at the next wake."""

    def connected(self, client: paho.Client) -> None:
        """`client` is connected: its reconnect backoff starts over."""

    def backoff(self, client: paho.Client, reconnect_min_s: float,
                reconnect_max_s: float) -> None:
        """Change `client`'s reconnect backoff from its next lost connection on."""

    def wait_for_publish(self, info: paho.MQTTMessageInfo, timeout_s: float) -> None:
        """Return when `info`'s message is acknowledged or timeout_s has passed; may raise
        RuntimeError or ValueError for a message paho did not queue."""

    def remove(self, client: paho.Client, timeout_s: float) -> None:
        """Stop serving `client` (disconnected, or abandoned); wait up to timeout_s for its
        DISCONNECT to be written."""


class ThreadedIo:
    """paho's own loop thread (`loop_start`), one per client, and paho's own backoff: the
    runtime's default, for a board, leader or site with one Link. paho's thread wakes itself
    for what other threads queue, and restarts its backoff when a connection succeeds."""

    def add(self, client: paho.Client, reconnect_min_s: float, reconnect_max_s: float) -> None:
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        client.loop_start()

    def flush(self, client: paho.Client) -> None:
        pass

    def connected(self, client: paho.Client) -> None:
        pass

    def backoff(self, client: paho.Client, reconnect_min_s: float,
                reconnect_max_s: float) -> None:
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)

    def wait_for_publish(self, info: paho.MQTTMessageInfo, timeout_s: float) -> None:
        info.wait_for_publish(timeout_s)

    def remove(self, client: paho.Client, timeout_s: float) -> None:
        client.loop_stop()


class Link:
    def __init__(self, settings: LinkSettings, *, client_id: str, outbox: Outbox, boot: str,
                 wall_clock: Callable[[], float] = time.time, status_topic: str = "",
                 log: logging.Logger | None = None, window: int = 10, inbox_max: int = 1000,
                 io: LinkIo | None = None):
        self.settings = settings
        self.io: LinkIo = ThreadedIo() if io is None else io
        """Runs this link's network I/O (default: paho's own loop thread)."""
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
        self._asserted: dict[str, bytes] = {}
        """topic -> the plain retained payload this Link re-sends at every connect."""
        self._retained: dict[str, tuple[dict[str, Any], int, bool]] = {}
        """topic -> (payload, qos, keep) of the newest publish(retain=True), stamped afresh and
        published again after every reconnect."""
        self._broker_index = 0
        self._attempted = False
        self._failures = 0
        """Connection attempts since the last connection held (the drop of that one first)."""
        self._loss = ""
        """Why the last connection or attempt ended, as the broker said it, for the log."""
        self._login_reported = False
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
        client.max_inflight_messages_set(self.window * 2)
        if settings.ca_file:
            client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file or None,
                           keyfile=settings.key_file or None)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if self.status_topic:
            client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message  # on_publish: see _awaiting_acks
        return client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def broker(self) -> str:
        """`host:port` of the broker this Link is connected or connecting to (for status)."""
        host, port = self.settings.brokers[self._broker_index]
        return f"{host}:{port}"

    def start(self) -> None:
        """Connect in the background; a broker that is not there yet is retried with backoff."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.settings.host, self.settings.port,
                                   self.settings.keepalive_s)
        self.io.add(self._client, self.settings.reconnect_min_s, self.settings.reconnect_max_s)

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
            if retain:
                self._retained[topic] = (dict(payload), qos, keep)
            message = self.envelope.stamp(topic, payload)
            self.outbox.put(Pending(topic, message, qos, retain), keep)
            self._pump()
        return message

    def assert_retained(self, topic: str, payload: bytes) -> None:
        """Own a plain (no envelope) retained message: sent now if connected and again at every
        connect, so it survives a broker that lost it (a restart without persistence, a move to
        the standby). For payloads in another system's format, such as Home Assistant's
        discovery: the bytes go out exactly as given, so they are identical across restarts
        while nothing changed. An empty payload clears the topic and forgets it."""
        with self._subscriptions_lock:
            if payload:
                self._asserted[topic] = payload
            else:
                self._asserted.pop(topic, None)
        if self._connected:
            self._client.publish(topic, payload, qos=1, retain=True)
            self.io.flush(self._client)

    def subscribe(self, pattern: str, handler: Handler) -> None:
        """Call handler(message) from poll() for each message matching pattern (MQTT wildcards);
        the subscription is renewed on every reconnect."""
        with self._subscriptions_lock:
            self._subscriptions.append((pattern, handler))
            self._handlers = {}
        if self._connected:
            self._client.subscribe(pattern, qos=1)
            self.io.flush(self._client)

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
                self.io.flush(self._client)
                try:
                    self.io.wait_for_publish(info, timeout_s)
                except (RuntimeError, ValueError) as error:
                    self.log.warning("%s: offline status not confirmed: %s", self.client_id,
                                     error)
            self._started = False
            self._client.disconnect()
            self.io.flush(self._client)
            self.io.remove(self._client, timeout_s)
        with self._lock:
            self._drain_acks()
            self.outbox.persist([pending for _, pending in self._in_flight.values()])
            self._in_flight.clear()

    def abort(self) -> None:
        """Drop the connection the way a crashed process does, with no DISCONNECT, so the
        broker publishes the Last Will; the simulator's leader crash. The Link is dead after."""
        if self._started:
            self._started = False
            sock = self._client.socket()
            self.io.remove(self._client, timeout_s=0.0)
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

    def _pump(self) -> None:
        """Hand waiting messages to paho while connected (caller holds self._lock)."""
        self._drain_acks()
        if not self._connected:
            return
        if self._hand_over():
            self.io.flush(self._client)

    def _hand_over(self) -> bool:
        """Give paho what it may send now; True if it took anything."""
        handed = False
        generation = self._generation
        if generation != self._pumped_generation:
            reconnected = self._pumped_generation > 0
            self._pumped_generation = generation
            self.outbox.mark_backlog()
            if reconnected:  # before the first connect, all of them still wait in the outbox
                self._reassert_retained()
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

    def _reassert_retained(self) -> None:
        """Queue the newest retained message of each topic again, freshly stamped, behind what
        waited through the reconnect: the broker may have lost it, and the last one wins."""
        for topic, (payload, qos, keep) in self._retained.items():
            self.outbox.put(Pending(topic, self.envelope.stamp(topic, payload), qos, True), keep)

    # -- paho's thread: record and return; never let an exception escape -------------------

    def _on_pre_connect(self, client, userdata) -> None:
        """Every connect attempt after the first follows one that was refused, dropped or never
        made: try the next broker of the list."""
        try:
            if self._attempted:
                self._failures += 1
                if len(self.settings.brokers) > 1:
                    self._move(client)
            self._attempted = True
        except Exception:
            self.log.exception("%s: choosing the next broker failed", self.client_id)

    def _move(self, client: paho.Client) -> None:
        brokers = self.settings.brokers
        left, why = self.broker, self._loss or "could not be reached"
        self._loss = ""
        self._broker_index = (self._broker_index + 1) % len(brokers)
        host, port = brokers[self._broker_index]
        # connect_async only sets where the next connect goes (paho allows that while closed).
        client.connect_async(host, port, self.settings.keepalive_s)
        if self._failures < len(brokers):
            self.log.warning("%s: broker %s %s; moving to %s (broker %d of %d)", self.client_id,
                             left, why, self.broker, self._broker_index + 1, len(brokers))
        elif self._failures == len(brokers):
            self.log.error(
                "%s: no broker answers: %s each tried since the last connection, the last (%s) "
                "%s. Going on through the list, up to %d s between tries. Check that the site "
                "broker runs (`systemctl status mosquitto` on its host) and that this host "
                "reaches it (name, port, firewall).", self.client_id,
                ", ".join(f"{h}:{p}" for h, p in brokers), left, why,
                self.settings.reconnect_max_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._refused(reason_code)
                return
            self.connects += 1
            self._failures, self._login_reported = 0, False
            if len(self.settings.brokers) > 1:
                self.log.info("%s: connected to broker %s (broker %d of %d)", self.client_id,
                              self.broker, self._broker_index + 1, len(self.settings.brokers))
            self._connected_at_s = time.monotonic()
            self.io.connected(client)
            if self.status_topic:
                client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            with self._subscriptions_lock:
                patterns = sorted({pattern for pattern, _ in self._subscriptions})
                asserted = list(self._asserted.items())
            for topic, payload in asserted:
                client.publish(topic, payload, qos=1, retain=True)
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
            self._loss = f"dropped the connection ({reason_code})"
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
            if len(self.settings.brokers) == 1:
                self.log.warning("%s: lost broker %s (%s); reconnecting with backoff",
                                 self.client_id, self.broker, reason_code)
        except Exception:
            self.log.exception("%s: on_disconnect failed", self.client_id)

    def _refused(self, reason_code) -> None:
        """A CONNACK that refused us: a login the broker will not take is said once (it needs
        an operator), anything else is a warning; either way the next attempt moves on."""
        self._loss = f"refused the connection ({reason_code})"
        if reason_code.value not in LOGIN_REFUSED_CODES:
            self.log.warning("%s: broker %s refused the connection: %s", self.client_id,
                             self.broker, reason_code)
            return
        if self._login_reported:
            return
        self._login_reported = True
        username = self.settings.username
        if username:
            check = (f"check [mqtt] username and the password in its password_file against "
                     f"the broker's accounts (the credentials `hearth broker-config` wrote for "
                     f"this role), and that the account may log in as client id "
                     f"{self.client_id}")
        else:
            check = ("the broker takes no anonymous logins: set [mqtt] username and "
                     "password_file to this role's account")
        message = (f"{self.client_id}: broker {self.broker} refused the login of MQTT account "
                   f"{username or '(anonymous)'} ({reason_code}): {check}. Retrying, up to "
                   f"{self.settings.reconnect_max_s} s between tries.")
        self.log.error("%s", message)
        self._problems.put(LinkProblem(LOGIN_REFUSED, self.client_id, message))

    def _reconnect_delays(self, first_s: int) -> None:
        """Wait first_s before each reconnect (then doubling, up to reconnect_max_s)."""
        self.io.backoff(self._client, first_s, self.settings.reconnect_max_s)

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

