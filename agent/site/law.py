"""The site's demand law: watts wanted from the tank/loop temperature against the target, as a
small swappable object with no I/O, and Hearth's own law behind it.

Why an interface: the site bench runs other laws (an on/off thermostat, a proportional-only
one, power_allocator's) through the real SiteRole, so the role must not know which it holds.
A law is any object with these three methods:

* `update(now_s, loop_c, target_c, capacity_now_w, capacity_full_w) -> demand_w`: one site
  period. `loop_c` is always a finite measurement (the role holds the last demand itself
  while the sensor is unknown, and does not call the law while the mode is `off` or an
  external `site/demand` is in charge, so a law must expect gaps in `now_s`).
  `capacity_now_w` is what the modules can deliver now, `capacity_full_w` what they could
  with every module available (the highest each ever reported). Returns watts in
  [0, capacity_now_w].
* `state() -> dict`: what the law needs to carry on after a restart, JSON numbers only.
* `restore(state) -> None`: take a `state()` back; raises ValueError (naming the key) for
  anything it cannot use, and then keeps its defaults.

Why Hearth's law is bumpless: the tank integrates heat, so a PI settles without hunting; its
integrator is held against the FULL capacity (anti-windup), while only its output is limited
to the capacity available now. A module interlocked, a leader gone or the broker away drops
the capacity for a while; the integrator does not lose what it learned, so when capacity comes
back the first budget is where the demand would have been, not zero. Time is not restored:
after a restart (or any gap longer than `max_step_s`) the first update integrates nothing and
returns the restored integral plus the proportional term of the error now.
"""

import math
from typing import Any, Protocol


class DemandLaw(Protocol):
    def update(self, now_s: float, loop_c: float, target_c: float, capacity_now_w: float,
               capacity_full_w: float) -> float: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class HearthDemand:
    """PI from temperature error to watts, tuned as heating controllers are: a proportional
    band (the error that asks for the full capacity) and an integral time Tn (the time in
    which the integral adds what the proportional term gives), so one setting fits a site of
    any size; the integrator is bounded by the full capacity."""

    def __init__(self, proportional_band_k: float, integral_time_s: float, max_step_s: float):
        self.proportional_band_k = proportional_band_k
        self.integral_time_s = integral_time_s
        self.max_step_s = max_step_s
        self.integral_w = 0.0
        self._last_s: float | None = None

    def update(self, now_s: float, loop_c: float, target_c: float, capacity_now_w: float,
               capacity_full_w: float) -> float:
        error_k = target_c - loop_c
        full_w = max(0.0, capacity_full_w)
        gain_w_per_k = full_w / self.proportional_band_k
        proportional_w = gain_w_per_k * error_k
        last_s, self._last_s = self._last_s, now_s
        step_s = now_s - last_s if last_s is not None else 0.0
        if 0.0 < step_s <= self.max_step_s:
            integral_w = self.integral_w + gain_w_per_k * error_k * step_s / self.integral_time_s
            # Anti-windup: integrate only as far as the output can still use it, against
            # what the whole site could deliver.
            if proportional_w + integral_w > full_w:
                integral_w = min(integral_w, max(self.integral_w, full_w - proportional_w))
            elif proportional_w + integral_w < 0.0:
                integral_w = max(integral_w, min(self.integral_w, -proportional_w))
            self.integral_w = integral_w
        self.integral_w = min(max(self.integral_w, 0.0), full_w)
        demand_w = min(max(proportional_w + self.integral_w, 0.0), full_w)
        return min(demand_w, max(0.0, capacity_now_w))

    def state(self) -> dict[str, Any]:
        return {"integral_w": self.integral_w}

    def restore(self, state: dict[str, Any]) -> None:
        value = state.get("integral_w")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value) or value < 0:
            raise ValueError(f"integral_w is {value!r}, expected a number of watts >= 0")
        self.integral_w = float(value)
        self._last_s = None
