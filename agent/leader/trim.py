"""The slow trim loop: how much electric power the module must draw so the heat measured into
the water meets the module's heat target.

Why a trim and not a plain PID on watts: almost all electric power ends up in the water, so the
target itself is the right feed-forward; what is left is a factor for the losses (oil bath and
pipes to the room), which changes slowly with temperatures. The PI works on the ratio of
measured heat to target, so its gains do not depend on the module's size and a budget step acts
at once through the feed-forward. The oil bath delays heat behind power by minutes, so the loop
is deliberately slow; while the heat is unknown it holds its factor (bumplessly tracked).
"""

from agent.control.pid import PID


class TrimLoop:
    def __init__(self, kp: float = 0.05, ki: float = 0.002, factor_min: float = 0.9,
                 factor_max: float = 1.5):
        self.factor_min = factor_min
        self.factor_max = factor_max
        self.pid = PID(kp=kp, ki=ki, kd=0.0, output_min=factor_min, output_max=factor_max,
                       derivative_filter_s=1.0)
        self.pid.reset(1.0)
        self.factor = 1.0

    def update(self, now: float, target_heat_w: float, measured_heat_w: float | None) -> float:
        """The electric budget (W) for this period."""
        if target_heat_w <= 0:
            return 0.0
        if measured_heat_w is None:
            self.pid.reset(self.factor)
            return target_heat_w * self.factor
        self.factor = self.pid.update(now, measured_heat_w / target_heat_w, 1.0)
        return target_heat_w * self.factor
