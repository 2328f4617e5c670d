"""The weekly anti-legionella cycle of a hot-water tank: from a set moment of the week the target
is raised until the tank has been seen at or above the kill temperature for the hold time
without a break; if that has not happened by the deadline the cycle counts as missed.

Why a continuous, observed hold: what disinfects is the water staying hot, so a hold only
counts between readings that say so; a reading below the kill temperature, an unknown one, or
a gap in readings longer than `max_gap_s` (a site restart, a dead sensor) starts the hold
again. Why a deadline: a tank that cannot get there (modules interlocked, too little capacity)
must not keep the site at the legionella target all week; the miss is reported instead.
Pure: wall time comes in as epoch seconds, the time zone as a tzinfo; `state()`/`restore()`
let the site role keep a running cycle across a restart.
"""

import dataclasses
import datetime
import math
from typing import Any

DAY_S = 86400.0


@dataclasses.dataclass(frozen=True)
class CycleSettings:
    weekday: int  # 0 = Monday
    start_min: int  # minutes after local midnight
    kill_c: float  # the tank must be at least this hot ...
    hold_s: float  # ... for this long, without a break
    deadline_s: float  # after the start, a cycle not done by then is missed
    target_c: float  # the target while the cycle runs (above kill_c, so the tank holds it)


@dataclasses.dataclass(frozen=True)
class CycleEnd:
    """How a cycle ended, for the site's log."""

    done: bool
    due_s: float
    ended_s: float
    held_s: float  # the longest unbroken hold seen in this cycle
    settings: CycleSettings

    def message(self, zone: datetime.tzinfo) -> str:
        hold_min = self.settings.hold_s / 60
        ended = _local_text(self.ended_s, zone)
        if self.done:
            return (f"legionella cycle done: tank held at or above {self.settings.kill_c:g} C "
                    f"for {hold_min:g} min, finished {ended}")
        return (f"legionella cycle missed: the tank held {self.settings.kill_c:g} C for only "
                f"{self.held_s / 60:.0f} of {hold_min:g} min by its deadline {ended} (started "
                f"{_local_text(self.due_s, zone)}); this week's hot water was not disinfected. "
                f"Check that the modules can bring the tank to {self.settings.target_c:g} C "
                "(capacity, interlocks, tank sensor) or give the cycle more time "
                "(site.legionella_deadline_h)")


def _local_text(wall_s: float, zone: datetime.tzinfo) -> str:
    return datetime.datetime.fromtimestamp(wall_s, zone).strftime("%a %Y-%m-%d %H:%M")


def _iso(wall_s: float | None, zone: datetime.tzinfo) -> str | None:
    if wall_s is None:
        return None
    return datetime.datetime.fromtimestamp(wall_s, zone).isoformat(timespec="seconds")


class LegionellaCycle:
    def __init__(self, settings: CycleSettings, zone: datetime.tzinfo, max_gap_s: float):
        self.settings = settings
        self.zone = zone
        self.max_gap_s = max_gap_s
        self.next_due_s: float | None = None  # found at the first update
        self.hold_since_s: float | None = None
        self.last_seen_s: float | None = None
        self.best_hold_s = 0.0
        self.last_done_s: float | None = None
        self.last_missed_s: float | None = None

    def occurrence_after(self, wall_s: float) -> float:
        """The first start of the cycle strictly after `wall_s`, in local time (so it stays at
        02:00 across a daylight-saving change)."""
        local = datetime.datetime.fromtimestamp(wall_s, self.zone)
        midnight = datetime.datetime(local.year, local.month, local.day, tzinfo=self.zone)
        days_ahead = (self.settings.weekday - local.weekday()) % 7
        for week in (0, 7):
            day = midnight.date() + datetime.timedelta(days=days_ahead + week)
            start = datetime.datetime(day.year, day.month, day.day,
                                      self.settings.start_min // 60, self.settings.start_min % 60,
                                      tzinfo=self.zone).timestamp()
            if start > wall_s:
                return start
        raise AssertionError("a weekly moment is always within two weeks")

    def running(self, wall_s: float) -> bool:
        """Whether the target is raised now; call after update() for this moment."""
        return self.next_due_s is not None and self.next_due_s <= wall_s

    def update(self, wall_s: float, tank_c: float | None) -> CycleEnd | None:
        """Account for one reading of the tank; the cycle's end when this reading ended it."""
        if self.next_due_s is None:
            # Starting inside a cycle's window joins that cycle rather than skipping a week.
            self.next_due_s = self.occurrence_after(wall_s - self.settings.deadline_s)
        due_s = self.next_due_s
        if wall_s < due_s:
            self.hold_since_s, self.last_seen_s, self.best_hold_s = None, None, 0.0
            return None
        if wall_s >= due_s + self.settings.deadline_s:
            return self._end(wall_s, done=False)
        hot = tank_c is not None and math.isfinite(tank_c) and tank_c >= self.settings.kill_c
        gap = self.last_seen_s is not None and wall_s - self.last_seen_s > self.max_gap_s
        if not hot:
            self.hold_since_s = None
        elif self.hold_since_s is None or gap:
            self.hold_since_s = wall_s
        self.last_seen_s = wall_s
        held_s = wall_s - self.hold_since_s if self.hold_since_s is not None else 0.0
        self.best_hold_s = max(self.best_hold_s, held_s)
        if held_s >= self.settings.hold_s:
            return self._end(wall_s, done=True)
        return None

    def _end(self, wall_s: float, done: bool) -> CycleEnd:
        due_s = self.next_due_s
        assert due_s is not None
        end = CycleEnd(done, due_s, wall_s if done else due_s + self.settings.deadline_s,
                       self.best_hold_s, self.settings)
        if done:
            self.last_done_s = wall_s
        else:
            self.last_missed_s = due_s
        self.next_due_s = self.occurrence_after(wall_s)
        self.hold_since_s, self.last_seen_s, self.best_hold_s = None, None, 0.0
        return end

    def report(self, wall_s: float) -> dict[str, Any]:
        """For `site/state`: times as local ISO 8601; `missed` says the latest cycle was."""
        held_s = (self.last_seen_s - self.hold_since_s
                  if self.hold_since_s is not None and self.last_seen_s is not None else 0.0)
        return {"running": self.running(wall_s), "held_min": round(held_s / 60, 1),
                "next_due": _iso(self.next_due_s, self.zone),
                "last_done": _iso(self.last_done_s, self.zone),
                "last_missed": _iso(self.last_missed_s, self.zone),
                "missed": self.last_missed_s is not None and (
                    self.last_done_s is None or self.last_missed_s > self.last_done_s)}

    STATE_KEYS = ("next_due_s", "hold_since_s", "last_seen_s", "best_hold_s", "last_done_s",
                  "last_missed_s")

    def state(self) -> dict[str, float | None]:
        return {key: getattr(self, key) for key in self.STATE_KEYS}

    def restore(self, state: dict[str, Any]) -> None:
        """Take a saved state; ValueError (and nothing changed) when it is not one."""
        if not isinstance(state, dict) or set(state) != set(self.STATE_KEYS):
            raise ValueError(f"legionella state: expected the keys {', '.join(self.STATE_KEYS)}")
        for key, value in state.items():
            nullable = key != "best_hold_s"
            if (value is None and nullable) or (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0):
                continue
            raise ValueError(f"legionella state: {key} = {value!r}, expected a time in seconds"
                             + (" or null" if nullable else ""))
        for key, value in state.items():
            setattr(self, key, None if value is None else float(value))
