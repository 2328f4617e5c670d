"""Turning the module's electric budget into per-board setpoints (the leader's divvy-up).

Why this shape: it is the Linux thermal power_allocator's `divvy_up_power` adapted to heat.
Every usable board first gets its floor (`min_w`: a Pi draws its idle power whatever it is
told); what is left of the budget is shared in proportion to each board's weighted request
(its headroom `max_w - min_w`, times an optional per-board weight); a board's share is capped at
its headroom and whatever a board cannot take goes round again to the boards that still have
room, until the budget or the room runs out. A board whose temperature-limit loop is in charge
(`selected` is not "power") cannot take more than it draws now, so its request is cut to that:
its unused share goes to the others at once instead of waiting for the trim loop.
"""

import dataclasses
import math

EPSILON_W = 1e-9


@dataclasses.dataclass(frozen=True)
class BoardCapacity:
    """What the splitter needs from a board's state."""

    board: str
    min_w: float
    max_w: float
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Split:
    """Setpoints (W) per board; `unallocated_w` is budget beyond the boards' room (> 0) or the
    floors' excess over the budget (< 0)."""

    setpoints_w: dict[str, float]
    unallocated_w: float

    @property
    def total_w(self) -> float:
        return sum(self.setpoints_w.values())


def capacity_from_state(board: str, state: dict, weight: float = 1.0) -> BoardCapacity | None:
    """A board's capacity from its `state` payload; None when min_w/max_w are missing or wrong."""
    low, high = state.get("min_w"), state.get("max_w")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (low, high)) or high < low:
        return None
    power, selected = state.get("power_w"), state.get("selected")
    if (selected not in (None, "power", "safe") and isinstance(power, (int, float))
            and not isinstance(power, bool) and math.isfinite(power)):
        high = min(high, max(low, power))
    return BoardCapacity(board, float(low), float(high), weight)


class BudgetSplitter:
    """Stateless apart from its settings; `split` may be called as often as budgets change."""

    def __init__(self, max_rounds: int = 16):
        self.max_rounds = max_rounds

    def split(self, budget_w: float, boards: list[BoardCapacity]) -> Split:
        if not boards:
            return Split({}, budget_w)
        floor_w = sum(b.min_w for b in boards)
        setpoints = {b.board: b.min_w for b in boards}
        remaining = budget_w - floor_w
        if remaining <= 0:
            return Split(setpoints, remaining)
        open_boards = [b for b in boards if b.max_w - b.min_w > EPSILON_W and b.weight > 0]
        for _ in range(self.max_rounds):
            if remaining <= EPSILON_W or not open_boards:
                break
            weighted = {b.board: b.weight * (b.max_w - setpoints[b.board]) for b in open_boards}
            total = sum(weighted.values())
            if total <= EPSILON_W:
                break
            granted_total = 0.0
            still_open = []
            for b in open_boards:
                room = b.max_w - setpoints[b.board]
                share = remaining * weighted[b.board] / total
                granted = min(share, room)
                setpoints[b.board] += granted
                granted_total += granted
                if room - granted > EPSILON_W:
                    still_open.append(b)
            remaining -= granted_total
            open_boards = still_open
        for b in boards:
            setpoints[b.board] = min(max(setpoints[b.board], b.min_w), b.max_w)
        return Split(setpoints, max(remaining, 0.0))
