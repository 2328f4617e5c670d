"""The outdoor temperature for the heating curve: a configured sensor's reading when there is
one, else the last `site/outdoor` (envelope, `outdoor_c`) from a weather station or Home
Assistant; either is forgotten after `timeout_s`.

Why forgotten: a curve fed last week's mild afternoon during a cold night leaves the building
cold, so without a recent value the plan falls back to the fixed comfort target instead.
"""

import math
from typing import Callable

OUTDOOR_MIN_C = -60.0
OUTDOOR_MAX_C = 60.0
"""Beyond these a reading is a broken sensor or a unit mistake, not weather."""


class OutdoorTemperature:
    def __init__(self, timeout_s: float, read_c: Callable[[], float | None] | None = None):
        self.timeout_s = timeout_s
        self.read_c = read_c
        self._value_c: float | None = None
        self._at_s: float | None = None

    def offer(self, now: float, value: object) -> bool:
        """Take a value from `site/outdoor`; False (and nothing changed) for one that is not a
        plausible outdoor temperature."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and OUTDOOR_MIN_C <= value <= OUTDOOR_MAX_C):
            return False
        self._value_c, self._at_s = float(value), now
        return True

    def current_c(self, now: float) -> float | None:
        if self.read_c is not None:
            self.offer(now, self.read_c())
        if self._at_s is None or now - self._at_s > self.timeout_s:
            return None
        return self._value_c
