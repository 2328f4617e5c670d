"""The supervise step's contract, and the pass-through used until the safety supervisor lands."""

import dataclasses
import math

from agent.readings import Reading


@dataclasses.dataclass(frozen=True)
class Allowance:
    """What the supervisor allows this period."""

    mode: str
    max_power_w: float
    safe: bool = False
    freeze_workload: bool = False


class PassThroughSupervisor:
    """Allows everything; the control loop's order (sample, supervise, control) stays fixed."""

    def supervise(self, now: float, readings: dict[str, Reading]) -> Allowance:
        return Allowance(mode="NORMAL", max_power_w=math.inf)
