"""`hearth uplink`: the site broker's telemetry, events and ledgers into the site's JetStream
stream on its leaf node, from where the hub sources them (docs/fleet.md).

Nothing lost, nothing doubled: the uplink holds a persistent MQTT session (clean session off,
QoS 1), so what arrives while it is away waits in the site broker; it acknowledges a message to
the broker only after JetStream has stored it, so a crash in between means the broker sends it
again; and every message goes in with the id `<boot>:<seq>:<topic>` from its envelope, so
JetStream drops the copy (within the stream's duplicate window). Messages are written one at a
time in the order they arrived, which is each sender's order.

paho is used here directly, not through agent/mqtt/link.py: a Link acknowledges on receipt and
starts a clean session, which is right for a role that acts on messages and wrong for one that
must not let go of a message before it is stored elsewhere.
"""

import asyncio
import dataclasses
import logging
import ssl
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as paho
from nats.errors import Error as NatsError
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import MessageError
from agent.schema import Field
from agent.tables import TableCheck
from agent.fleet import streams
from agent.fleet.subjects import MSG_ID_HEADER, message_id, site_domain, subject_for_topic
from agent.mqtt import envelope
from agent.mqtt.link import LinkSettings
from agent.mqtt.topics import LEADER, site_prefix

SKIPPED_LEVELS = ("cmd", "setpoint")
"""Commands into the site and the leader's per-board setpoints (a heartbeat every period) are
control traffic, not the site's record: not carried."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
PUBLISH_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class NatsSettings:
    """The leaf node at the site and the uplink's login there (`hearth uplink nats-config`)."""

    server: str
    username: str
    password: str
    max_store_bytes: int = 8 * 2**30


NATS_FIELDS = {
    "server": Field(str, "the site's leaf node, nats://HOST:PORT", pattern=r"nats://\S+",
                    example="nats://127.0.0.1:4222"),
    "username": Field(str, "the uplink's login on the leaf node", pattern=r"\S+",
                      example="uplink"),
    "password": Field(str, "its password", pattern=r"\S+", example="..."),
    "max_store_bytes": Field(int, "the most the site's stream keeps on disk",
                             default=8 * 2**30, min=2**20),
}


def load_nats_settings(path: Path) -> NatsSettings:
    """The [nats] section that `hearth uplink nats-config` writes for the site."""
    check = TableCheck()
    document = check.read_toml(path, "pass the uplink.toml hearth uplink nats-config wrote")
    if document is not None:
        section = check.table(document.get("nats"), str(path), "nats", "a [nats] table")
        if section is not None:
            values = check.fields(section, NATS_FIELDS, str(path), "nats.", "[nats]")
    check.raise_problems("the uplink's NATS settings")
    return NatsSettings(**values)


def carried(topic: str) -> bool:
    """Whether a topic of the site goes up: everything but commands, setpoints and the boards'
    own `state`. A board's state is its telemetry once a second: 512 boards send 512 messages a
    second, some 140 times all else the site sends, and the centre's ledger and metrics read the
    leaders' states, which sum their boards (docs/benchmarks.md "Fleet hub"); it stays at the
    site, where Prometheus and Home Assistant read it."""
    levels = topic.split("/")[3:]
    if any(level in SKIPPED_LEVELS for level in levels):
        return False
    return not (len(levels) == 3 and levels[1] != LEADER and levels[2] == "state")


class Uplink:
    """One site's uplink: create it, then `await run()` until `stop()`."""

    def __init__(self, site: str, mqtt: LinkSettings, nats_settings: NatsSettings,
                 log: logging.Logger):
        self.site = site
        self.mqtt = mqtt
        self.nats_settings = nats_settings
        self.log = log
        self.forwarded = 0
        self.duplicates = 0
        self.skipped: dict[str, str] = {}
        """Topic -> why its messages are not carried (each said once in the log)."""
        self._stopping = asyncio.Event()
        self._received: asyncio.Queue = asyncio.Queue()
        self._client: paho.Client | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Connect to the leaf node, make the site's stream, then read the site broker."""
        connection = await nats.connect(
            self.nats_settings.server, user=self.nats_settings.username,
            password=self.nats_settings.password, max_reconnect_attempts=-1,
            reconnect_time_wait=1)
        jetstream = connection.jetstream(domain=site_domain(self.site))
        try:
            await self._retrying("create the site's stream", lambda: streams.ensure_stream(
                jetstream, streams.site_stream_config(self.site,
                                                      self.nats_settings.max_store_bytes)))
            self._client = self._mqtt_client(asyncio.get_running_loop())
            self._client.loop_start()
            while not self._stopping.is_set():
                receiving = asyncio.ensure_future(self._received.get())
                stopping = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait((receiving, stopping), return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not receiving.done():
                    receiving.cancel()
                    break
                await self._forward(jetstream, receiving.result())
        finally:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
            await connection.close()

    def _mqtt_client(self, loop: asyncio.AbstractEventLoop) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.mqtt.username,
                             clean_session=False, manual_ack=True)
        if self.mqtt.username:
            client.username_pw_set(self.mqtt.username, self.mqtt.password)
        if self.mqtt.ca_file:
            client.tls_set(ca_certs=self.mqtt.ca_file, certfile=self.mqtt.cert_file or None,
                           keyfile=self.mqtt.key_file or None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
        topic_filter = f"{site_prefix(self.site)}/#"

        def connected(client, userdata, flags, reason, properties) -> None:
            if reason.is_failure:
                self.log.warning("uplink: the site broker %s:%s refused the login (%s); check "
                                 "the uplink account's password", self.mqtt.host,
                                 self.mqtt.port, reason)
                return
            client.subscribe(topic_filter, qos=1)
            self.log.info("uplink: reading %s on %s:%s (session %s)", topic_filter,
                          self.mqtt.host, self.mqtt.port,
                          "resumed" if flags.session_present else "new")

        client.on_connect = connected
        client.on_message = lambda client, userdata, message: loop.call_soon_threadsafe(
            self._received.put_nowait, message)
        client.connect_async(self.mqtt.host, self.mqtt.port, self.mqtt.keepalive_s)
        return client

    async def _forward(self, jetstream, message: Any) -> None:
        """Store one message (or decide it is not carried), then acknowledge it to the broker."""
        headers = self._headers(message.topic, message.payload)
        if headers is not None:
            subject = subject_for_topic(message.topic)
            ack = await self._retrying(f"store {message.topic}", lambda: jetstream.publish(
                subject, message.payload, timeout=PUBLISH_TIMEOUT_S, headers=headers))
            if ack is None:
                return  # stopping: not acknowledged, so the broker sends it again
            self.forwarded += 1
            self.duplicates += bool(ack.duplicate)
        self._client.ack(message.mid, message.qos)

    def _headers(self, topic: str, payload: bytes) -> dict[str, str] | None:
        """The message id from the envelope, or None (said once per topic) when the message is
        not carried: a topic outside the record, no envelope (plain `online`), no subject."""
        if not carried(topic):
            return None
        try:
            data = envelope.decode(payload)
            boot, seq = data.get("boot"), data.get("seq")
            if not isinstance(boot, str) or isinstance(seq, bool) or not isinstance(seq, int):
                raise MessageError(f"no boot/seq in the envelope (boot {boot!r}, seq {seq!r})")
        except MessageError as error:
            reason = str(error)
        else:
            if subject_for_topic(topic) is not None:
                return {MSG_ID_HEADER: message_id(boot, seq, topic)}
            reason = "a level of the topic cannot be a NATS subject token"
        if topic not in self.skipped:
            self.skipped[topic] = reason
            self.log.info("uplink: %s not carried: %s", topic, reason)
        return None

    async def _retrying(self, what: str, attempt) -> Any:
        """Await `attempt()` until it succeeds or the uplink stops (then None): while the leaf
        node is away nothing is acknowledged, so the site broker keeps the backlog."""
        wait_s = RETRY_MIN_S
        while True:
            try:
                return await attempt()
            except (NatsError, asyncio.TimeoutError) as error:
                self.log.warning("uplink: cannot %s on the leaf node %s (%s); retrying in "
                                 "%.1f s; check that the site's nats-server runs and what its "
                                 "log says", what, self.nats_settings.server,
                                 error or type(error).__name__, wait_s)
            try:
                await asyncio.wait_for(self._stopping.wait(), wait_s)
                return None
            except asyncio.TimeoutError:
                wait_s = min(wait_s * 2, RETRY_MAX_S)
