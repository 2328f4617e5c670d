"""The module heat meter: heat delivered to the building's water against the boards' electric
power, giving the module's recovery efficiency.

Why on the leader: each board measures its own heat exchanger, but the number the building
pays for is what leaves the module's loop (agent.water_heat, the formula the boards use too).
Its sensors (module inlet and outlet temperatures and flow) sit on the leader's board and carry
the module's roles (module_water_in, module_water_out, module_flow). Both powers are smoothed
with the same time constant so that the efficiency compares like with like; the oil bath still
delays heat behind power by minutes, which is why the efficiency is only meaningful averaged
(and why the trim loop is slow).
"""

import dataclasses
import math

from agent.water_heat import heat_w


@dataclasses.dataclass(frozen=True)
class HeatReading:
    """Smoothed module heat to water and electric power (W) and their ratio; None when unknown."""

    heat_w: float | None
    electric_w: float | None
    efficiency: float | None


class HeatMeter:
    """First-order smoothing of heat and electric power; readings that are None reset nothing but
    leave the heat unknown until valid readings return."""

    def __init__(self, smoothing_s: float, min_electric_w: float = 1.0):
        self.smoothing_s = smoothing_s
        self.min_electric_w = min_electric_w
        """Below this the efficiency is a ratio of noise and is reported as unknown."""
        self._heat_w: float | None = None
        self._electric_w: float | None = None
        self._last_s: float | None = None
        self.last = HeatReading(None, None, None)

    def update(self, now: float, inlet_c: float | None, outlet_c: float | None,
               flow_l_per_min: float | None, electric_w: float | None) -> HeatReading:
        dt_s = 0.0 if self._last_s is None else max(0.0, now - self._last_s)
        self._last_s = now
        alpha = 1.0 if self.smoothing_s <= 0 else dt_s / (self.smoothing_s + dt_s)
        self._heat_w = self._smooth(self._heat_w, heat_w(flow_l_per_min, inlet_c, outlet_c),
                                    alpha)
        self._electric_w = self._smooth(self._electric_w, electric_w, alpha)
        efficiency = None
        if (self._heat_w is not None and self._electric_w is not None
                and self._electric_w >= self.min_electric_w):
            efficiency = self._heat_w / self._electric_w
        self.last = HeatReading(self._heat_w, self._electric_w, efficiency)
        return self.last

    @staticmethod
    def _smooth(previous: float | None, value: float | None, alpha: float) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        if previous is None:
            return value
        return previous + alpha * (value - previous)
