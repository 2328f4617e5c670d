"""Building demand in watts from an external request on `site/demand`, and its split across
modules by their capacity (demand from the tank temperature is agent/site/law.py's).

Why both sources: a home with a buffer tank knows only a temperature, a pool or district
controller knows the watts it wants. The split reuses the leader's splitter: each module is an
actor whose room is its available capacity (from its `leader/state`), so a module that lost
boards or is interlocked gets less, and what one cannot take goes to the others.
"""

import math

from agent.leader.split import BoardCapacity, BudgetSplitter, Split


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
