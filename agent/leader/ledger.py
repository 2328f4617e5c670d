"""The module's energy ledger: electricity and heat per board and for the module, kept apart,
surviving board reboots and leader restarts.

Why segments: a board reports cumulative counters (`energy_electric_wh`, `energy_heat_wh`) with
its boot id. Within one boot they only rise, so a lower value is an old message arriving late
and is ignored. After a reboot (new boot id) a counter that carried on (the board persisted it)
continues; one that went back (the board lost it) starts a new segment from its first value: the
ledger adds only rises it saw, it never subtracts and never invents energy. Persisted through
agent/persist.py's StateStore only when due (`save_every_s`) or when a board restarted, so the
leader's SD card sees a write every few minutes at most, not one per period.

Why a bound on every rise: a board's counters are only its word. A rise is taken only if the
board could have drawn it since the last report the ledger took, at the most any board may be
configured to draw (POWER_CEILING_W, 15 W) with ENERGY_MARGIN: the counter covers the whole
interval while `max_w` is only what the board may draw now, and the heat counter includes heat
the oil gives back after a power drop. Anything more is a rejected report (counted, with the
reason): the ledger keeps its reference, so the next honest report still counts. A counter
that jumped is taken as the new reference only at the board's next boot, without the jump.
Time is the leader's wall clock, kept in the file, so the bound also holds across a leader
restart. The totals therefore stay finite and never go down.

The bound is a rate, not a per-report check: reports reach the leader bunched (two taken in
one poll are 0 s apart by the leader's clock though the board measured a second between them),
so allowance a board did not use is kept for ALLOWANCE_WINDOW_S. `wall_s` is the time up to
which the board has spent its allowance (a token bucket written as a time, like GCRA): each
rise taken moves it on by the time the ceiling needs to draw that rise, and never leaves it more
than the window behind. A board that lies can gain at most the window's worth once.

Why a promise in the file: the module totals go out on `leader/state` every period, the file is
written every few minutes, and a leader that loses power between the two would come back with
totals lower than it had published: Home Assistant takes a drop of a `total_increasing` sensor
as a meter reset and counts the lifetime again. So the totals published never exceed
`reported_max_wh`, the bound the file on the card holds; when they would, the file is written
first with a new bound: the totals plus PROMISE_PERIODS save periods at the rate they rose
since the last write (so the periodic save renews it, and only a faster rise costs an extra
write). A leader that starts again reports at least that bound (everything it may have
published before) until the counted totals pass it: after a crash the published totals may
run that much ahead, then stand still until the count passes them, and never go back.
"""

import dataclasses
import math
from typing import Any

from agent.leader.board_state import ENERGY_MAX_WH, POWER_CEILING_W
from agent.mqtt.envelope import finite_number
from agent.persist import StateStore

LEDGER_FILE = "leader-energy.json"
LEDGER_VERSION = 1
KINDS = ("electric", "heat")
ENERGY_MARGIN = 1.5
ALLOWANCE_WINDOW_S = 60.0
"""Unused allowance is kept this long: reports that arrive bunched still fit."""
PROMISE_PERIODS = 1.5
"""How far ahead the file's promise reaches, in save periods at the recent rate."""
TOTAL_MAX_WH = 1e15
"""A stored total above this (a 15 W board for 7.6 billion years) did not come from a ledger."""


class LedgerFileError(ValueError):
    """The ledger file parsed but holds something a ledger cannot (the message names it)."""


def _stored_number(where: str, value: Any, high: float, nullable: bool) -> float | None:
    if value is None and nullable:
        return None
    number = finite_number(value)
    if number is None or not 0.0 <= number <= high:
        raise LedgerFileError(f"{where} is {value!r}, expected a number from 0 to {high:g}"
                              + (" or null" if nullable else ""))
    return number


@dataclasses.dataclass
class BoardEnergy:
    boot: str | None = None
    last: dict[str, float | None] = dataclasses.field(
        default_factory=lambda: {kind: None for kind in KINDS})
    total_wh: dict[str, float] = dataclasses.field(
        default_factory=lambda: {kind: 0.0 for kind in KINDS})
    segments: int = 0
    wall_s: float | None = None
    """The leader's wall-clock time up to which the board has used its allowance: the next rise
    must fit in the time since. None (a ledger written before it was kept): the next rise is
    not counted."""
    rejected: int = 0
    """Reports not counted since the leader started (not kept in the file)."""
    rejection: str | None = None
    rejecting: bool = False
    """The last report was not counted: a streak an operator has been told about."""

    def to_dict(self) -> dict[str, Any]:
        return {"boot": self.boot, "last": dict(self.last), "total_wh": dict(self.total_wh),
                "segments": self.segments, "wall_s": self.wall_s}

    @classmethod
    def from_dict(cls, board: str, data: Any) -> "BoardEnergy":
        """An entry of the ledger file; LedgerFileError naming the board and key otherwise."""
        where = f"board {board!r}"
        if not isinstance(data, dict):
            raise LedgerFileError(f"{where} is {type(data).__name__}, expected an object")
        boot, segments, wall_s = data.get("boot"), data.get("segments", 0), data.get("wall_s")
        last, total = data.get("last", {}), data.get("total_wh", {})
        if boot is not None and not isinstance(boot, str):
            raise LedgerFileError(f"{where} boot is {boot!r}, expected a string or null")
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 0:
            raise LedgerFileError(f"{where} segments is {segments!r}, expected a count")
        if wall_s is not None and finite_number(wall_s) is None:
            raise LedgerFileError(f"{where} wall_s is {wall_s!r}, expected a time or null")
        if not isinstance(last, dict) or not isinstance(total, dict):
            raise LedgerFileError(f"{where} last and total_wh must be objects")
        return cls(boot,
                   {k: _stored_number(f"{where} last.{k}", last.get(k), ENERGY_MAX_WH, True)
                    for k in KINDS},
                   {k: _stored_number(f"{where} total_wh.{k}", total.get(k, 0.0), TOTAL_MAX_WH,
                                      False) for k in KINDS},
                   segments, finite_number(wall_s))


class EnergyLedger:
    def __init__(self, save_every_s: float = 300.0):
        self.save_every_s = save_every_s
        self.boards: dict[str, BoardEnergy] = {}
        self.module_heat_metered_wh = 0.0
        """Heat to water measured by the module's own meter (HeatMeter), integrated here."""
        self.reset_reason: str | None = None
        """Why the ledger started from zero although a file was there (damaged, other
        version); published with the totals, which went back for that reason."""
        self.promised_wh = {kind: 0.0 for kind in KINDS}
        """The file's `reported_max_wh`: published totals stay at or below it."""
        self.floor_wh = {kind: 0.0 for kind in KINDS}
        """The promise an earlier run left: published totals stay at or above it."""
        self.dirty = False
        self.urgent = False
        self._last_save_s: float | None = None
        self._saved_totals_wh: dict[str, float] | None = None
        self._last_meter_s: float | None = None

    def board_sample(self, board: str, boot: str | None, counters: dict[str, Any],
                     wall_s: float) -> str | None:
        """Take a board's cumulative counters reported at `wall_s` (the leader's wall clock);
        returns why they were not counted, or None when they were."""
        entry = self.boards.setdefault(board, BoardEnergy())
        restarted = boot != entry.boot
        values = {kind: finite_number(counters.get(f"energy_{kind}_wh")) for kind in KINDS}
        if entry.wall_s is not None and entry.wall_s > wall_s:
            entry.wall_s = wall_s  # the wall clock went back: the allowance starts again now
        problem = self._beyond_bound(entry, values, wall_s)
        if problem is not None:
            entry.rejected += 1
            entry.rejecting = True
            if not restarted:
                entry.rejection = f"{problem}; report not counted"
                return entry.rejection
            entry.rejection = f"{problem}; at its restart: counted on from there, without it"
            for kind in KINDS:
                entry.last[kind] = values[kind] if values[kind] is not None else entry.last[kind]
            entry.boot, entry.wall_s = boot, wall_s
            entry.segments += 1
            self.dirty = self.urgent = True
            return entry.rejection
        if restarted:
            entry.boot = boot
            self.urgent = True
        went_back = False
        rise_wh = 0.0
        for kind in KINDS:
            value, last = values[kind], entry.last[kind]
            if value is None:
                continue
            if last is None or (restarted and value < last):
                went_back = went_back or last is not None
                entry.last[kind] = value
                self.dirty = True
                continue
            if value <= last:
                continue  # same boot and lower: an old message arriving late
            entry.total_wh[kind] += value - last
            rise_wh = max(rise_wh, value - last)
            entry.last[kind] = value
            self.dirty = True
        entry.segments += went_back
        entry.wall_s = self._spent_until(entry.wall_s, rise_wh, wall_s)
        entry.rejecting = False
        return None

    def rejecting(self, board: str) -> bool:
        """Was the board's last report not counted? (One event per streak, not per report.)"""
        entry = self.boards.get(board)
        return entry is not None and entry.rejecting

    @staticmethod
    def _spent_until(spent_s: float | None, rise_wh: float, wall_s: float) -> float:
        """Where the allowance stands after taking a rise of `rise_wh` at `wall_s`."""
        if spent_s is None:
            return wall_s
        used_s = rise_wh * 3600.0 / (POWER_CEILING_W * ENERGY_MARGIN)
        return min(wall_s, max(spent_s + used_s, wall_s - ALLOWANCE_WINDOW_S))

    @staticmethod
    def _beyond_bound(entry: BoardEnergy, values: dict[str, float | None],
                      wall_s: float) -> str | None:
        """What in these counters rose more than the board could have drawn, or None."""
        for kind in KINDS:
            value, last = values[kind], entry.last[kind]
            if value is None or last is None or value <= last:
                continue
            if entry.wall_s is None:
                return f"energy_{kind}_wh rose {value - last:.4g} Wh since a time not known"
            elapsed_s = max(0.0, wall_s - entry.wall_s)
            allowed_wh = POWER_CEILING_W * ENERGY_MARGIN * elapsed_s / 3600.0
            if value - last > allowed_wh:
                return (f"energy_{kind}_wh rose {value - last:.4g} Wh in {elapsed_s:.0f} s, "
                        f"more than the {allowed_wh:.4g} Wh a board can draw in that time "
                        f"({POWER_CEILING_W:g} W x {ENERGY_MARGIN:g})")
        return None

    def meter_sample(self, now: float, heat_w: float | None) -> None:
        """Integrate the module meter's heat; an unknown reading adds nothing for its interval."""
        if (self._last_meter_s is not None and heat_w is not None and math.isfinite(heat_w)
                and heat_w > 0 and now > self._last_meter_s):
            self.module_heat_metered_wh += heat_w * (now - self._last_meter_s) / 3600.0
            self.dirty = True
        self._last_meter_s = now

    def totals_wh(self) -> dict[str, float]:
        """What the ledger has counted."""
        return {kind: sum(entry.total_wh[kind] for entry in self.boards.values())
                for kind in KINDS}

    def reported_totals_wh(self) -> dict[str, float]:
        """The totals to publish: never below what an earlier run may have published, never
        above what the file promises (so no crash can make them go back)."""
        counted = self.totals_wh()
        return {kind: min(max(counted[kind], self.floor_wh[kind]), self.promised_wh[kind])
                for kind in KINDS}

    def _beyond_promise(self) -> bool:
        counted = self.totals_wh()
        return any(counted[kind] > self.promised_wh[kind] for kind in KINDS)

    def _next_promise_wh(self, now: float) -> dict[str, float]:
        """The totals plus PROMISE_PERIODS save periods at the rate since the last write."""
        counted = self.totals_wh()
        if self._last_save_s is None or self._saved_totals_wh is None:
            return {kind: max(self.promised_wh[kind], counted[kind]) for kind in KINDS}
        elapsed_s = max(now - self._last_save_s, 1.0)
        return {kind: max(self.promised_wh[kind], counted[kind] + PROMISE_PERIODS
                          * self.save_every_s * max(0.0, counted[kind]
                                                    - self._saved_totals_wh[kind]) / elapsed_s)
                for kind in KINDS}

    def to_payload(self, promised_wh: dict[str, float] | None = None) -> dict[str, Any]:
        return {"boards": {name: entry.to_dict() for name, entry in sorted(self.boards.items())},
                "module_heat_metered_wh": self.module_heat_metered_wh,
                "reported_max_wh": dict(promised_wh or self.promised_wh)}

    def load(self, store: StateStore, wall_s: float) -> str | None:
        """Load the persisted ledger; returns the problem (None when it was read well). A file
        that is there but cannot be used is copied aside (`<file>.damaged-<time>`) before
        anything overwrites it, and `reset_reason` says so."""
        read = store.read(LEDGER_FILE, LEDGER_VERSION, {"boards": {},
                                                        "module_heat_metered_wh": 0.0})
        problem = read.problem
        if problem is None:
            try:
                boards = read.payload.get("boards", {})
                if not isinstance(boards, dict):
                    raise LedgerFileError(f"boards is {type(boards).__name__}, expected an "
                                          "object")
                self.boards = {str(name): BoardEnergy.from_dict(str(name), data)
                               for name, data in boards.items()}
                self.module_heat_metered_wh = _stored_number(
                    "module_heat_metered_wh", read.payload.get("module_heat_metered_wh", 0.0),
                    TOTAL_MAX_WH, False)
                self.floor_wh = self._stored_promise(read.payload.get("reported_max_wh"))
                self.promised_wh = dict(self.floor_wh)
                return None
            except LedgerFileError as error:
                self.boards, self.module_heat_metered_wh = {}, 0.0
                self.floor_wh = {kind: 0.0 for kind in KINDS}
                problem = f"state file {store.path(LEDGER_FILE)}: {error}"
        if not store.path(LEDGER_FILE).exists():
            return problem
        try:
            kept = f"kept as {store.keep_aside(LEDGER_FILE, wall_s).name}"
        except OSError as error:
            kept = f"could not be kept aside ({error})"
        self.reset_reason = (f"energy ledger unusable ({problem}); {kept}; the module's totals "
                             "start again from zero")
        self.urgent = True
        return self.reset_reason

    def _stored_promise(self, stored: Any) -> dict[str, float]:
        """The file's `reported_max_wh`; a file written before it was kept promised its
        totals (all it could have published since its last save is unknown)."""
        if stored is None:
            return self.totals_wh()
        if not isinstance(stored, dict):
            raise LedgerFileError(f"reported_max_wh is {type(stored).__name__}, expected an "
                                  "object")
        return {kind: _stored_number(f"reported_max_wh.{kind}", stored.get(kind), TOTAL_MAX_WH,
                                     False) for kind in KINDS}

    def save_if_due(self, now: float, store: StateStore, force: bool = False) -> bool:
        """Write when something changed and either a board restarted (its old counters would be
        lost with a leader crash now), the totals passed the file's promise, the save period
        passed, or `force` (clean exit). OSError (a full or failing SD card) is the caller's to
        report; the promise moves only once the file holds it."""
        beyond = self._beyond_promise()
        if not self.dirty and not self.urgent and not beyond:
            return False
        due = (self._last_save_s is None or now - self._last_save_s >= self.save_every_s)
        if not (force or self.urgent or due or beyond):
            return False
        promised_wh = self._next_promise_wh(now)
        store.write(LEDGER_FILE, LEDGER_VERSION, self.to_payload(promised_wh))
        self.promised_wh = promised_wh
        self._last_save_s = now
        self._saved_totals_wh = self.totals_wh()
        self.dirty = self.urgent = False
        return True
