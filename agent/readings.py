"""A sensor reading: value, unit, when it was taken and whether it may be used."""

import enum
from typing import NamedTuple


class Validity(enum.Enum):
    """Why a reading may or may not be used; anything but OK is never used as if fresh."""

    OK = "ok"
    STALE = "stale"
    INVALID = "invalid"
    MISSING = "missing"


class Reading(NamedTuple):
    """One sample of one named sensor quantity, timestamped on the monotonic clock.

    Immutable; a tuple rather than a frozen dataclass because an agent makes a dozen every
    period and a simulator hundreds of agents' worth (a tuple is built at twice the speed)."""

    sensor: str
    value: float | None
    unit: str
    time: float
    validity: Validity
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.validity is Validity.OK

    def as_dict(self) -> dict:
        return {
            "sensor": self.sensor,
            "value": self.value,
            "unit": self.unit,
            "time": self.time,
            "validity": self.validity.value,
            "reason": self.reason,
        }

    def aged(self, now: float, max_age_s: float) -> "Reading":
        """This reading, marked STALE if it is older than max_age_s at `now`."""
        if self.ok and now - self.time > max_age_s:
            return self._replace(
                validity=Validity.STALE,
                reason=f"{now - self.time:.2f} s old, more than the {max_age_s:g} s allowed")
        return self


def ok(sensor: str, value: float, unit: str, time: float) -> Reading:
    return Reading(sensor, value, unit, time, Validity.OK)


def invalid(sensor: str, unit: str, time: float, reason: str) -> Reading:
    return Reading(sensor, None, unit, time, Validity.INVALID, reason)


def missing(sensor: str, unit: str, time: float, reason: str) -> Reading:
    return Reading(sensor, None, unit, time, Validity.MISSING, reason)
