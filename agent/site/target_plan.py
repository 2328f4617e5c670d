"""The site target in force and why: the mode, the weekly comfort/eco schedule, a heating curve
on the outdoor temperature, the weekly legionella cycle and the minimum-tank guard, combined
into one number for the demand law.

Why one pure object: what a building expects of its heat source is a policy over wall time, and
policies over wall time are where heating controllers go wrong (midnight, Sunday, daylight
saving, a restart in the middle of a cycle). Here the wall time, the time zone, the mode and the
temperatures all come in as arguments, so a week runs in a test in milliseconds, and the site
role only asks and persists `state()`.

How they combine: the mode gives a base target (`auto` the schedule, or the curve, or the manual
target from Home Assistant; `comfort`/`eco` that period's target; `off` none); the guard and a
running legionella cycle can only raise it; the highest wins and names the reason. `off` keeps
the guard and the legionella cycle: a tank left cold for a holiday is where legionella grows,
so the weekly cycle matters most then. Every target lies in [target_min_c, target_max_c].
"""

import dataclasses
import datetime
import math
import zoneinfo
from pathlib import Path
from typing import Any, NamedTuple

from agent.errors import ConfigValueError
from agent.site.legionella import CycleEnd, CycleSettings, LegionellaCycle
from agent.site.schedule import Period, in_comfort, parse_periods, parse_weekly_time

MODES = ("auto", "comfort", "eco", "off")


@dataclasses.dataclass(frozen=True)
class Curve:
    """A heating curve as heating controllers draw it: the target rises by `slope` kelvin for
    every kelvin the outdoor temperature falls below `room_c`, moved up or down by `shift_k`."""

    slope: float
    shift_k: float = 0.0
    room_c: float = 20.0

    def target_c(self, outdoor_c: float) -> float:
        return self.room_c + self.shift_k + self.slope * (self.room_c - outdoor_c)


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    target_min_c: float = 20.0
    target_max_c: float = 75.0
    comfort_c: float | None = None  # None: the manual target (Home Assistant's) is comfort
    eco_c: float = 45.0
    periods: tuple[Period, ...] = ()  # none: no schedule
    guard_c: float | None = None
    curve: Curve | None = None
    legionella: CycleSettings | None = None


class Target(NamedTuple):
    target_c: float | None  # None: no heat wanted (mode off, nothing raising it)
    reason: str  # comfort, eco, curve, manual, guard, legionella or off
    cycle_end: CycleEnd | None = None  # the legionella cycle ended at this moment


class TargetPlan:
    def __init__(self, settings: PlanSettings, zone: datetime.tzinfo, max_gap_s: float = 60.0):
        """`max_gap_s`: the longest time between two readings that still counts as an unbroken
        legionella hold (the site role passes a few of its periods)."""
        self.settings = settings
        self.zone = zone
        self.legionella = (LegionellaCycle(settings.legionella, zone, max_gap_s)
                           if settings.legionella is not None else None)

    def decide(self, wall_s: float, mode: str, manual_c: float, tank_c: float | None,
               outdoor_c: float | None) -> Target:
        """The target in force at `wall_s` (epoch seconds). Call once per site period: it
        also counts the legionella hold."""
        if mode not in MODES:
            raise ValueError(f"site mode {mode!r}: expected one of {', '.join(MODES)}")
        cycle_end = self.legionella.update(wall_s, tank_c) if self.legionella else None
        base_c, reason = self._base(wall_s, mode, manual_c, outdoor_c)
        target_c = None
        if base_c is not None:
            target_c = min(max(base_c, self.settings.target_min_c), self.settings.target_max_c)
        raisers = []
        if self.settings.guard_c is not None:
            raisers.append((self.settings.guard_c, "guard"))
        if self.legionella is not None and self.legionella.running(wall_s):
            raisers.append((self.legionella.settings.target_c, "legionella"))
        for raised_c, raised_reason in raisers:
            if target_c is None or raised_c > target_c:
                target_c, reason = raised_c, raised_reason
        return Target(target_c, reason, cycle_end)

    def _base(self, wall_s: float, mode: str, manual_c: float,
              outdoor_c: float | None) -> tuple[float | None, str]:
        if mode == "off":
            return None, "off"
        scheduled = bool(self.settings.periods)
        if mode == "auto" and not scheduled and self.settings.curve is None:
            return manual_c, "manual"
        if mode == "auto":
            local = datetime.datetime.fromtimestamp(wall_s, self.zone)
            mode = "comfort" if not scheduled or in_comfort(self.settings.periods, local) else "eco"
        comfort_c = self.settings.comfort_c if self.settings.comfort_c is not None else manual_c
        curve = self.settings.curve
        if curve is not None and outdoor_c is not None and math.isfinite(outdoor_c):
            curve_c = curve.target_c(outdoor_c)
            if mode == "comfort":
                return curve_c, "curve"
            # Eco lowers the curve by the same set-back as it lowers a fixed comfort target.
            return curve_c - max(0.0, comfort_c - self.settings.eco_c), "eco"
        if mode == "comfort":
            return comfort_c, "comfort"
        return self.settings.eco_c, "eco"

    def report(self, wall_s: float) -> dict[str, Any] | None:
        """The legionella part of `site/state` (None when no cycle is configured)."""
        return self.legionella.report(wall_s) if self.legionella is not None else None

    def state(self) -> dict[str, Any]:
        return {"legionella": self.legionella.state() if self.legionella is not None else None}

    def restore(self, state: dict[str, Any]) -> None:
        """Take a saved state; ValueError (and nothing changed) when it is not one. A saved
        cycle is dropped when the config no longer has one, and none is taken when the saved
        state had none."""
        if not isinstance(state, dict) or set(state) != {"legionella"}:
            raise ValueError("target plan state: expected the key legionella")
        if self.legionella is not None and state["legionella"] is not None:
            self.legionella.restore(state["legionella"])


SYSTEM_ZONE_FILE = Path("/etc/localtime")


def plan_settings(site: Any, path: Path | str, target_min_c: float, target_max_c: float,
                  system_zone_file: Path = SYSTEM_ZONE_FILE
                  ) -> tuple[PlanSettings, datetime.tzinfo]:
    """PlanSettings and the time zone from the config's [site] (already checked key by key);
    ConfigValueError naming the file and key for a time zone this machine does not know.
    Without site.timezone the system's zone file is read (UTC if there is none), as a zone
    with its daylight-saving rules rather than today's fixed offset."""
    if site.timezone:
        try:
            zone: datetime.tzinfo = zoneinfo.ZoneInfo(site.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problem = (f"{path}: site.timezone = {site.timezone!r}: expected a time zone name "
                       "this machine knows, like 'Europe/Berlin'; leave it out to use the "
                       "system's (see `timedatectl list-timezones`)")
            raise ConfigValueError(problem, problems=[problem]) from None
    else:
        try:
            with open(system_zone_file, "rb") as zone_file:
                zone = zoneinfo.ZoneInfo.from_file(zone_file, key="localtime")
        except (OSError, ValueError):
            zone = datetime.timezone.utc
    legionella = None
    if site.legionella_start:
        weekday, start_min = parse_weekly_time(site.legionella_start)
        legionella = CycleSettings(weekday, start_min, site.legionella_c,
                                   site.legionella_hold_h * 3600.0,
                                   site.legionella_deadline_h * 3600.0, site.legionella_target_c)
    curve = (Curve(site.curve_slope, site.curve_shift_k, site.curve_room_c)
             if site.curve_slope is not None else None)
    return PlanSettings(target_min_c=target_min_c, target_max_c=target_max_c,
                        comfort_c=site.comfort_c, eco_c=site.eco_c,
                        periods=parse_periods(site.comfort_periods or ()),
                        guard_c=site.guard_c, curve=curve, legionella=legionella), zone
