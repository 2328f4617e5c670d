"""The fleet ledger: each site's ledger made again at the centre from the hub's stream
SITE_<site>, by the site's own code (agent/fleet/ledger.py), so the centre bills what the site's
statement says (docs/fleet.md "The fleet ledger").

Why rows close on the senders' time (the envelope's `ts`) and not on arrival: a site whose link
was cut for a day sends that day in a minute, and its quarter hours must still be its own.

Why each row carries `hub_seq`, the stream sequence of the last message it covers: the row and
the consumer's position are then one checksummed line, written together or not at all. At
every start the durable consumer is made again at the message after the last row's `hub_seq`,
and it is acknowledged (AckPolicy ALL) only up to the last message of a row already on disk, so
a crash anywhere replays exactly what no written row holds. The row also keeps when each
leader was last heard (`seen_s`), so the uptime across a restart is what it would have been
without one.
"""

import logging
from typing import Any, Callable

from nats.errors import TimeoutError as NatsTimeoutError

from agent.errors import MessageError
from agent.fleet.ledger import ROW_S, SiteLedger, month_of, row_end_s
from agent.fleet.ledger_file import LedgerDamaged, LedgerFile
from agent.fleet.streams import resumed_consumer
from agent.fleet.subjects import site_subjects
from agent.mqtt import envelope
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER

CONSUMER = "ledger"
"""The durable consumer's name on every SITE_<site> stream."""
FETCH_BATCH = 500


class FleetLedger:
    """One site's ledger fed with the hub stream's messages in order; no I/O but its file."""

    def __init__(self, site: str, ledger_file: LedgerFile, wall_clock: Callable[[], float],
                 log: logging.Logger, leader_timeout_s: float = 30.0, row_s: float = ROW_S):
        self.site = site
        self.file = ledger_file
        self.log = log
        self.row_s = row_s
        self.rows_written = 0
        self.rejected_messages = 0
        last, repaired = ledger_file.recover_last_row(wall_clock())
        if repaired is not None:
            log.warning("%s", repaired)
        self.ledger = SiteLedger(leader_timeout_s)
        self.hub_seq = 0
        """The stream sequence of the last message taken into the ledger."""
        self.row_start_s: float | None = None
        self.row_end_s: float | None = None
        if last is not None:
            try:
                self.ledger = SiteLedger.resume(last, leader_timeout_s)
            except ValueError as error:
                raise LedgerDamaged(
                    f"fleet ledger of {site}: its last row cannot be resumed from ({error}); "
                    "restore the file from a backup, or move it aside to rebuild the site's "
                    "ledger from the hub's stream") from None
            self.hub_seq = int(last.get("hub_seq", 0))
            self.ledger.seen_s.update(last.get("seen_s", {}))
            self.row_start_s, self.row_end_s = last["end_s"], last["end_s"] + row_s

    def offer(self, subject: str, payload: bytes, hub_seq: int) -> bool:
        """Take one message of the site's stream; True when rows were written before it (they
        cover every message up to the one before this)."""
        tokens = subject.split(".")
        written = False
        if len(tokens) == 5 and tokens[1] == self.site and (
                (tokens[3] == LEADER and tokens[4] == "state") or tokens[4] == "event"):
            try:
                data = envelope.decode(payload)
            except MessageError:
                data = None
            sent_s = finite_number(data.get("ts")) if data is not None else None
            if sent_s is None:
                self.rejected_messages += 1
            else:
                written = self._close_rows(sent_s)
                module, sender, kind = tokens[2:]
                if kind == "state":
                    self.ledger.leader_state(module, data, sent_s)
                else:
                    self.ledger.event(module, sender, data, sent_s)
        self.hub_seq = hub_seq
        return written

    def _close_rows(self, now_s: float) -> bool:
        """As LedgerRecorder.tick, on the senders' clock: a gap's energy is in the next row."""
        if self.row_end_s is None:
            self.row_start_s, self.row_end_s = now_s, row_end_s(now_s, self.row_s)
        written = False
        while now_s >= self.row_end_s:
            row = self.ledger.close_row(self.row_start_s, self.row_end_s)
            row["hub_seq"] = self.hub_seq
            row["seen_s"] = dict(self.ledger.seen_s)
            self.file.append(month_of(self.row_start_s), row)
            self.rows_written += 1
            written = True
            next_end_s = max(self.row_end_s + self.row_s, row_end_s(now_s, self.row_s))
            self.row_start_s, self.row_end_s = next_end_s - self.row_s, next_end_s
        return written


class SiteConsumer:
    """The durable pull consumer `ledger` on one site's hub stream, feeding a FleetLedger."""

    def __init__(self, jetstream, ledger: FleetLedger, fetch_timeout_s: float = 1.0):
        self.jetstream = jetstream
        self.ledger = ledger
        self.fetch_timeout_s = fetch_timeout_s
        self.subscription = None
        self.previous: Any = None
        """The message before the one being taken: what a row written now covers last."""

    async def start(self) -> None:
        """Make the consumer again at the message after the ledger's last row."""
        self.subscription = await resumed_consumer(
            self.jetstream, self.ledger.site, CONSUMER, self.ledger.hub_seq,
            site_subjects(self.ledger.site))

    async def pump(self, max_messages: int | None = None) -> int:
        """Take messages until none came for a fetch timeout (or `max_messages`): how many."""
        taken = 0
        while max_messages is None or taken < max_messages:
            batch = FETCH_BATCH if max_messages is None else min(FETCH_BATCH,
                                                                  max_messages - taken)
            try:
                messages = await self.subscription.fetch(batch, timeout=self.fetch_timeout_s)
            except (NatsTimeoutError, TimeoutError):
                break
            for message in messages:
                if self.ledger.offer(message.subject, message.data,
                                     message.metadata.sequence.stream) and self.previous is not None:
                    await self.previous.ack()
                self.previous = message
                taken += 1
        return taken
