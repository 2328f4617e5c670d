"""Building demand in watts: from a tank or loop temperature against a target (a PID), or from
an external request on `site/demand`; and its split across modules by their capacity.

Why both sources: a home with a buffer tank knows only a temperature, a pool or district
controller knows the watts it wants. Why a PID on temperature with demand as its output: the
tank integrates heat, so a PI with a modest proportional band settles without hunting; its
output is clamped to what the site can deliver, so it does not wind up when the modules cannot
keep up. The split reuses the leader's splitter: each module is an actor whose room is its
available capacity (from its `leader/state`), so a module that lost boards or is interlocked
gets less, and what one cannot take goes to the others.
"""

import math

from agent.control.pid import PID
from agent.leader.split import BoardCapacity, BudgetSplitter, Split


class TemperatureDemand:
    """Watts wanted to bring `measured_c` to `target_c`; held at the last value when unknown."""

    def __init__(self, kp_w_per_k: float, ki_w_per_k_s: float, max_w: float):
        self.pid = PID(kp=kp_w_per_k, ki=ki_w_per_k_s, kd=0.0, output_min=0.0,
                       output_max=max(max_w, 1e-6), derivative_filter_s=1.0)
        self.demand_w = 0.0

    def update(self, now: float, measured_c: float | None, target_c: float,
               max_w: float) -> float:
        self.pid.set_limits(0.0, max(max_w, 1e-6))
        if measured_c is None or not math.isfinite(measured_c):
            return self.demand_w
        self.demand_w = self.pid.update(now, measured_c, target_c)
        return self.demand_w


class ExternalDemand:
    """The last `site/demand` in watts; forgotten (0 W) after `timeout_s` so a dead building
    controller does not keep the site heating."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._demand_w: float | None = None
        self._at_s: float | None = None

    def offer(self, now: float, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value) or value < 0:
            return False
        self._demand_w, self._at_s = float(value), now
        return True

    def current_w(self, now: float) -> float | None:
        if self._at_s is None or now - self._at_s > self.timeout_s:
            return None
        return self._demand_w


def split_across_modules(demand_w: float, capacities_w: dict[str, float]) -> Split:
    """Module budgets in proportion to capacity, each within [0, capacity]."""
    actors = [BoardCapacity(module, 0.0, max(0.0, capacity))
              for module, capacity in sorted(capacities_w.items())]
    return BudgetSplitter().split(demand_w, actors)
