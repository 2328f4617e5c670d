"""What the supervise step tells the control step: the mode and the power it may command."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Allowance:
    """What the supervisor allows this period."""

    mode: str
    max_power_w: float
    safe: bool = False
    freeze_workload: bool = False
