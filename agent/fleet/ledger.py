"""The site's ledger: per quarter hour, the electricity and heat each module delivered, how long
its leader was up, and the faults raised, from what the site's broker carries (docs/report.md).

Why rows of increments over cumulative state: a month's figure is the sum of its rows, so a
statement never needs the month before; and every row also carries the counters' follower
state (agent/site/energy.py's segments: a leader that restarts lower starts a new segment, a
late message is ignored), so a recorder that restarts resumes from its last row and the next
row's increment covers whatever it missed. An increment is the rise of a monotonic total since
the row before, so it is never negative; a module's counter at first sight is its baseline, not
energy of this month.

Why uptime is counted from message gaps: a leader that is online publishes `leader/state` every
period; a gap no longer than `leader_timeout_s` (the site role's own) while its status is
`online` is uptime, a longer gap or `offline` is not. At a row's end the time since the last
state is credited to that row when it is within the timeout.
"""

import collections
import copy
import datetime
from typing import Any

from agent.mqtt.envelope import finite_number, printable
from agent.site.energy import KEYS, SiteEnergy

ROW_S = 900.0
"""Rows close on the quarter hour (UTC): the settlement interval of electricity meters, and
an SD-card write every 15 minutes at most."""
EVENTS_PER_ROW_MAX = 200
"""A storm of events beyond this in one row is counted, not kept: the file stays small."""
TEXT_MAX = 200
SEEN_EVENTS_MAX = 4096
"""Event ids (sender, boot, seq) remembered to drop a re-delivered event."""
ENERGY_NAMES = {"energy_electric_wh": "electric_wh", "energy_heat_wh": "heat_wh"}


def month_of(wall_s: float) -> str:
    """`YYYY-MM` (UTC) of a time: a row belongs to the month its start falls in."""
    return datetime.datetime.fromtimestamp(wall_s, datetime.timezone.utc).strftime("%Y-%m")


def row_end_s(wall_s: float, row_s: float = ROW_S) -> float:
    """The boundary after `wall_s`: rows line up on the clock, so month starts are row starts."""
    return (wall_s // row_s + 1) * row_s


def _text(value: Any) -> str | None:
    return printable(str(value))[:TEXT_MAX] if value is not None else None


class SiteLedger:
    """Follows one site's leaders and events between two rows; `close_row` hands out a row."""

    def __init__(self, leader_timeout_s: float = 30.0):
        self.leader_timeout_s = leader_timeout_s
        self.energy = SiteEnergy()
        self.row_start_wh: dict[str, dict[str, float]] = {}
        """Each module's totals at the last row (or at first sight): increments start there."""
        self.status: dict[str, str] = {}
        self.seen_s: dict[str, float] = {}
        self.up_s: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self.events_dropped = 0
        self.seen_events: collections.deque[str] = collections.deque(maxlen=SEEN_EVENTS_MAX)
        self.rejected_messages = 0

    @classmethod
    def resume(cls, row: dict[str, Any], leader_timeout_s: float = 30.0) -> "SiteLedger":
        """Carry on from the last row written (ValueError naming what it cannot use)."""
        if not isinstance(row.get("energy"), dict):
            raise ValueError("row has no energy state")
        ledger = cls(leader_timeout_s)
        ledger.energy = SiteEnergy.from_payload(row["energy"])
        ledger.row_start_wh = {module: dict(entry["total_wh"])
                               for module, entry in ledger.energy.modules.items()}
        ledger.seen_events.extend(str(event.get("id")) for event in row.get("events", [])
                                  if isinstance(event, dict))
        return ledger

    def leader_state(self, module: str, state: dict[str, Any], wall_s: float) -> None:
        """A module's `leader/state` (envelope included) received at `wall_s`."""
        seen_s = self.seen_s.get(module)
        if (seen_s is not None and self.status.get(module, "online") == "online"
                and 0.0 <= wall_s - seen_s <= self.leader_timeout_s):
            self.up_s[module] = self.up_s.get(module, 0.0) + wall_s - seen_s
        self.seen_s[module] = wall_s
        known = module in self.energy.modules
        self.energy.offer(module, state)
        entry = self.energy.modules.get(module)
        if entry is not None:
            start = self.row_start_wh.setdefault(module, {})
            for key, total in entry["total_wh"].items():
                if not known or key not in start:
                    start[key] = total  # first sight: the baseline

    def leader_status(self, module: str, text: str, wall_s: float) -> None:
        if text == "offline" and self.status.get(module, "online") == "online":
            self._credit(module, wall_s)
            self.seen_s.pop(module, None)
        self.status[module] = text

    def event(self, module: str, sender: str, payload: dict[str, Any], wall_s: float) -> None:
        """A board's `event` or a leader's `leader/event`; a re-delivered one (same sender,
        boot and seq) is dropped."""
        event_id = f"{module}/{sender}:{payload.get('boot')}:{payload.get('seq')}"
        if event_id in self.seen_events:
            return
        self.seen_events.append(event_id)
        if len(self.events) >= EVENTS_PER_ROW_MAX:
            self.events_dropped += 1
            return
        sent_s = finite_number(payload.get("ts"))
        self.events.append({
            "id": event_id, "t": sent_s if sent_s is not None else wall_s, "module": module,
            "board": sender, "cause": _text(payload.get("cause")) or "unknown",
            "severity": _text(payload.get("severity")) or "warning",
            "message": _text(payload.get("message")) or "", "mode": _text(payload.get("mode")),
            "boot": _text(payload.get("boot"))})

    def _credit(self, module: str, wall_s: float) -> None:
        seen_s = self.seen_s.get(module)
        if seen_s is not None and 0.0 <= wall_s - seen_s <= self.leader_timeout_s:
            self.up_s[module] = self.up_s.get(module, 0.0) + wall_s - seen_s
            self.seen_s[module] = wall_s

    def close_row(self, start_s: float, end_s: float) -> dict[str, Any]:
        """The row for [start_s, end_s): increments since the last row, uptime, events and the
        follower state to resume from. Starts the next row."""
        for module in list(self.seen_s):
            if self.status.get(module, "online") == "online":
                self._credit(module, end_s)
        increments: dict[str, dict[str, float]] = {name: {} for name in ENERGY_NAMES.values()}
        for module, entry in sorted(self.energy.modules.items()):
            start = self.row_start_wh.setdefault(module, {})
            for key in KEYS:
                total = entry["total_wh"].get(key)
                if total is None:
                    continue
                increments[ENERGY_NAMES[key]][module] = max(0.0, total - start.get(key, total))
                start[key] = total
        modules = sorted(set(self.energy.modules) | set(self.seen_s) | set(self.up_s))
        row = {"start_s": start_s, "end_s": end_s, **increments,
               "up_s": {module: round(min(self.up_s.get(module, 0.0), end_s - start_s), 3)
                        for module in modules},
               "events": self.events, "events_dropped": self.events_dropped,
               "energy": copy.deepcopy(self.energy.to_payload())}
        self.up_s, self.events, self.events_dropped = {}, [], 0
        return row
