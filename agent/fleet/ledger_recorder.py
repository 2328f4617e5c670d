"""Writes the site's ledger from the site broker: `hearth report --record` runs one per site,
beside the site role.

Why a process of its own and not part of the site role: the ledger is for billing and the
statement, the site role is what keeps a building warm; a full SD card or a bug here must not
stop budgets going out, and the site role's restarts must not cut a row short. It reads only
what any subscriber of the site broker reads (`leader/state`, `leader/status`, every `event`).
"""

import logging
from typing import Any, Callable

from agent.errors import MessageError
from agent.fleet.ledger import ROW_S, SiteLedger, month_of, row_end_s
from agent.fleet.ledger_file import LedgerFile
from agent.mqtt.topics import LEADER, site_prefix


class LedgerRecorder:
    def __init__(self, site: str, link, ledger_file: LedgerFile,
                 wall_clock: Callable[[], float], log: logging.Logger | None = None,
                 leader_timeout_s: float = 30.0, row_s: float = ROW_S):
        """`link` is an agent.mqtt Link to the site broker (subscribe, poll); rows end on
        multiples of `row_s` of `wall_clock`."""
        self.site = site
        self.link = link
        self.file = ledger_file
        self.wall_clock = wall_clock
        self.log = log or logging.getLogger("hearth.report")
        self.row_s = row_s
        self.rows_written = 0
        now = wall_clock()
        last, repaired = ledger_file.recover_last_row(now)
        if repaired is not None:
            self.log.warning("%s", repaired)
        self.ledger = SiteLedger(leader_timeout_s)
        if last is not None:
            try:
                self.ledger = SiteLedger.resume(last, leader_timeout_s)
            except ValueError as error:
                self.log.warning("ledger's last row cannot be resumed from (%s); modules' "
                                 "counters are taken as new baselines: energy between that row "
                                 "and now is not in the ledger", error)
        self.row_start_s = now
        self.row_end_s = row_end_s(now, row_s)

    def start(self) -> None:
        base = site_prefix(self.site)
        self.link.subscribe(f"{base}/+/{LEADER}/state", self._on_state)
        self.link.subscribe(f"{base}/+/{LEADER}/status", self._on_status)
        self.link.subscribe(f"{base}/+/+/event", self._on_event)

    def _data(self, message) -> dict[str, Any] | None:
        try:
            return message.data()
        except MessageError:
            self.ledger.rejected_messages += 1
            return None

    def _on_state(self, message) -> None:
        data = self._data(message)
        if data is not None:
            self.ledger.leader_state(message.topic.split("/")[-3], data, self.wall_clock())

    def _on_status(self, message) -> None:
        try:
            text = message.text()
        except MessageError:
            self.ledger.rejected_messages += 1
            return
        self.ledger.leader_status(message.topic.split("/")[-3], text, self.wall_clock())

    def _on_event(self, message) -> None:
        data = self._data(message)
        if data is not None:
            _, module, sender, _ = message.topic.rsplit("/", 3)
            self.ledger.event(module, sender, data, self.wall_clock())

    def tick(self) -> None:
        """Close and append the row whose end has passed; after a jump of the clock the next
        row starts on the boundary before now (its increments cover the gap)."""
        now = self.wall_clock()
        while now >= self.row_end_s:
            row = self.ledger.close_row(self.row_start_s, self.row_end_s)
            self.file.append(month_of(self.row_start_s), row)
            self.rows_written += 1
            next_end_s = max(self.row_end_s + self.row_s, row_end_s(now, self.row_s))
            self.row_start_s, self.row_end_s = next_end_s - self.row_s, next_end_s

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.link.poll(timeout_s=0.5)
            self.tick()
