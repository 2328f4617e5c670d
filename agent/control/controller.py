"""The heat controller: which power the board should draw this period (DESIGN.md section 3).

A power PID holds measured power at the setpoint, on top of the setpoint itself as
feed-forward (the governor's model turns it into settings in one step, the PID trims). A
temperature-limit PID per limited temperature (SoC, and oil where the board has a sensor)
computes the highest power that keeps that temperature at its limit. The lowest command
wins (override control). Every loop is told the command actually applied: the power loop
tracks it (its trim is held where the limit put it, so it returns to the setpoint without
overshoot), and the limit loops that were not chosen get it as external reset feedback (so
they sit above it by their own P and D action and take over bumplessly at their limit).
"""

import dataclasses

from agent.control.pid import PID

POWER_TRIM_W = 2.0
"""How far the power PID may move the command away from the setpoint."""


@dataclasses.dataclass(frozen=True)
class PowerGains:
    kp: float = 0.3
    ki: float = 3.0
    kd: float = 0.0
    derivative_filter_s: float = 0.0

    @classmethod
    def for_period(cls, period_s: float) -> "PowerGains":
        """Board power follows the settings within one period, so the integral is sized per
        period: ki * period = 0.3 closes 30 % of the remaining error each period, fast and
        well damped at any loop rate (3.0 /s at the default 10 Hz)."""
        return cls(ki=0.3 / period_s)


@dataclasses.dataclass(frozen=True)
class LimitGains:
    """Gains of a temperature-limit loop, in watts per kelvin (and per kelvin-second, ...)."""

    kp: float = 0.8
    ki: float = 0.08
    kd: float = 4.0
    derivative_filter_s: float = 2.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """The command and which loop set it: 'power', a limit's name, or 'range'."""

    command_w: float
    selected: str


class TemperatureLimit:
    """One limited temperature: its PID's output is the highest power that keeps it at target."""

    def __init__(self, name: str, target_c: float, gains: LimitGains, power_min_w: float,
                 power_max_w: float):
        self.name = name
        self.target_c = target_c
        self.pid = PID(kp=gains.kp, ki=gains.ki, kd=gains.kd, output_min=power_min_w,
                       output_max=power_max_w, derivative_filter_s=gains.derivative_filter_s)
        self.pid.reset(power_max_w)

    def ceiling_w(self, now: float, measured_c: float | None) -> float:
        """None (no valid reading) leaves the ceiling where it was; the supervisor judges the
        sensor, this loop only limits with what it can trust."""
        if measured_c is None:
            return self.pid.output
        return self.pid.update(now, measured_c, self.target_c)


class HeatController:
    def __init__(self, power_min_w: float, power_max_w: float,
                 limits: list[TemperatureLimit], power_gains: PowerGains = PowerGains()):
        self.power_min_w = power_min_w
        self.power_max_w = power_max_w
        self.limits = limits
        self.power_pid = PID(kp=power_gains.kp, ki=power_gains.ki, kd=power_gains.kd,
                             output_min=-POWER_TRIM_W, output_max=POWER_TRIM_W,
                             derivative_filter_s=power_gains.derivative_filter_s)
        self.power_pid.reset(0.0)

    def update(self, now: float, setpoint_w: float, power_w: float | None,
               temperatures_c: dict[str, float | None], allowed_max_w: float) -> Decision:
        """This period's power command; `allowed_max_w` is the supervisor's ceiling."""
        setpoint_w = min(max(setpoint_w, self.power_min_w), self.power_max_w)
        if power_w is None:
            trim_w = self.power_pid.output
        else:
            trim_w = self.power_pid.update(now, power_w, setpoint_w)
        candidates = [(setpoint_w + trim_w, "power")]
        candidates += [(limit.ceiling_w(now, temperatures_c.get(limit.name)), limit.name)
                       for limit in self.limits]
        command_w, selected = min(candidates, key=lambda candidate: candidate[0])
        ceiling_w = min(self.power_max_w, allowed_max_w)
        if command_w > ceiling_w or command_w < self.power_min_w:
            command_w, selected = min(max(command_w, self.power_min_w), ceiling_w), "range"
        self.power_pid.track(command_w - setpoint_w)
        for limit in self.limits:
            if limit.name == selected:
                limit.pid.track(command_w)
            else:
                limit.pid.track_reset(command_w)
        return Decision(command_w, selected)
