"""The board's lifetime energy counters (electric and heat, Wh), integrated over its report
periods and kept in `energy.json` across restarts.

Why a counter file that cannot be used is never silently zeroed: the counters are what a
household is billed and credited by, and the leader's ledger trusts them only as far as they
rise. So a file that is there but damaged, from another release, or holds impossible values is
copied aside (`energy.json.damaged-<time>`, agent/persist.py) before the next save overwrites
it, the board raises an event, and every state it publishes this boot carries `counter_reset`:
why its cumulative counters went back (a missing file, on a first start, says so as well).
"""

import logging
import math

from agent.persist import StateStore

ENERGY_FILE = "energy.json"
ENERGY_VERSION = 1
ENERGY_SAVE_S = 900.0
"""Energy counters are written this often (and at a clean stop): at most 15 minutes of energy
lost to a power cut, and no steady stream of SD-card writes."""
ENERGY_MAX_WH = 1e9
"""A counter above this would be 7,600 years at the 15 W ceiling: not a counter."""
KEYS = ("electric_wh", "heat_wh")


class EnergyMeter:
    def __init__(self, store: StateStore | None, report_period_s: float, now_s: float,
                 log: logging.Logger | None = None):
        self.store = store
        self.report_period_s = report_period_s
        self.log = log or logging.getLogger("hearth.energy")
        self.electric_wh = 0.0
        self.heat_wh = 0.0
        self.counter_reset: str | None = None
        """Why the counters started this boot lower than they were (None: they carried on)."""
        self._last_report_s: float | None = None
        self._saved_s = now_s

    def load(self, wall_s: float) -> str | None:
        """Take the saved counters. Returns the reason they could not be used although a
        file was there (the caller raises it as an event), else None."""
        if self.store is None:
            return None
        read = self.store.read(ENERGY_FILE, ENERGY_VERSION, {key: 0.0 for key in KEYS})
        problem = read.problem
        for key in KEYS:
            value = read.payload.get(key)
            if problem is None and not _counter(value):
                problem = (f"state file {self.store.path(ENERGY_FILE)}: {key} is {value!r}, "
                           f"expected a number from 0 to {ENERGY_MAX_WH:g}")
        if problem is None:
            self.electric_wh, self.heat_wh = (float(read.payload[key]) for key in KEYS)
            return None
        if not self.store.path(ENERGY_FILE).exists():
            self.counter_reset = f"{ENERGY_FILE} missing (first start, or removed): counted from 0"
            return None
        try:
            kept = f"kept as {self.store.keep_aside(ENERGY_FILE, wall_s).name}"
        except OSError as error:
            kept = f"could not be kept aside ({error})"
        self.counter_reset = f"{problem}; {kept}; counted from 0"
        return self.counter_reset

    def count(self, now: float, power_w: float | None, heat_w: float | None) -> None:
        """Integrate over report periods; a gap (a stall, a restart) is not filled in."""
        last, self._last_report_s = self._last_report_s, now
        if last is None:
            return
        dt_s = now - last
        if not 0 < dt_s <= 3 * self.report_period_s:
            return
        if power_w is not None and math.isfinite(power_w):
            self.electric_wh += max(0.0, power_w) * dt_s / 3600.0
        if heat_w is not None and math.isfinite(heat_w):
            self.heat_wh += max(0.0, heat_w) * dt_s / 3600.0
        if now - self._saved_s >= ENERGY_SAVE_S:
            self.save(now)

    def save(self, now: float) -> str | None:
        """Write the counters; returns (and logs) what went wrong, never raises."""
        self._saved_s = now
        if self.store is None:
            return None
        try:
            self.store.write(ENERGY_FILE, ENERGY_VERSION, {"electric_wh": self.electric_wh,
                                                           "heat_wh": self.heat_wh})
        except OSError as error:
            problem = f"energy counters not saved: {error}; check the SD card"
            self.log.warning("%s", problem)
            return problem
        return None


def _counter(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= ENERGY_MAX_WH)
