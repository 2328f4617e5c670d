"""The board agent: one board's control loop (DESIGN.md section 3).

Each period: sample the sensors, let the supervisor decide what is allowed, let the heat
controller choose a power command, let the governor turn it into CPU settings, and report.
Everything it touches comes in through the seam (`Hardware`), so hundreds of agents can run
in one process against simulated boards, and one runs on a Pi against the real thing.
"""

import dataclasses
import math
from typing import Callable

from agent.control.controller import HeatController, TemperatureLimit, LimitGains
from agent.control.governor import DvfsGovernor, Settings
from agent.control.power_model import PowerModel
from agent.control.timer import LoopTimer
from agent.drivers.base import DriverContext
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.registry import build_sensors
from agent.readings import Reading
from agent.seam import Hardware
from agent.supervisor_hook import Allowance, PassThroughSupervisor

LIMIT_MARGIN_C = 1.0
"""The limit loops aim this far below the configured limit, so overshoot stays under it."""
IDLE_PRIOR_W = 2.7
CORE_PRIOR_W = 0.85


@dataclasses.dataclass(frozen=True)
class TickReport:
    """What one period saw and did; the report step publishes these."""

    time: float
    setpoint_w: float
    power_w: float | None
    soc_c: float | None
    oil_c: float | None
    command_w: float
    selected: str
    mode: str
    settings: Settings
    demand_cores: float


class BoardAgent:
    def __init__(self, config, hardware: Hardware,
                 supervisor: PassThroughSupervisor | None = None,
                 publish: Callable[[TickReport], None] | None = None):
        self.clock = hardware.clock
        self.context = DriverContext(hardware)
        self.sensors = build_sensors(config.sensors, self.context)
        kinds = {sensor.name: sensor.kind for sensor in self.sensors}
        self.power_reading = next((f"{name}.power_w" for name, kind in kinds.items()
                                   if kind in ("ina219", "ina226")), None)
        self.soc_reading = next((name for name, kind in kinds.items() if kind == "soc"), None)
        self.oil_reading = "oil" if "oil" in kinds else None
        limits, actuators, control = config.limits, config.actuators, config.control
        self.policy = CpuFreqPolicy(hardware, actuators.cpufreq_policy)
        self.workload = CpuGroup(hardware, actuators.workload_cgroup, actuators.cpu_period_us)
        self.heatfill = CpuGroup(hardware, actuators.heatfill_cgroup, actuators.cpu_period_us)
        self.cores = len(self.policy.cpus)
        self.governor = DvfsGovernor(self.policy, self.workload, self.heatfill, self.cores)
        self.model = PowerModel(IDLE_PRIOR_W, CORE_PRIOR_W)
        temperature_limits = [TemperatureLimit("soc", limits.soc_limit_c - LIMIT_MARGIN_C,
                                               LimitGains(), limits.power_min_w,
                                               limits.power_max_w)]
        if self.oil_reading:
            temperature_limits.append(TemperatureLimit(
                "oil", limits.oil_limit_c - LIMIT_MARGIN_C, LimitGains(kp=2.0, ki=0.02, kd=0.0),
                limits.power_min_w, limits.power_max_w))
        self.controller = HeatController(limits.power_min_w, limits.power_max_w,
                                         temperature_limits)
        self.supervisor = supervisor or PassThroughSupervisor()
        self.publish = publish
        self.setpoint_w = control.fallback_setpoint_w
        self.period_s = control.period_s
        self.report_period_s = control.report_period_s
        self.timer = LoopTimer(self.period_s, self.clock())
        self.readings: dict[str, Reading] = {}
        self.last_report: TickReport | None = None
        self._next_report_s = self.clock()
        self._last_settings: Settings | None = None
        self._last_command_w = 0.0
        self._last_cpu_sample: tuple[float, int, int, int] | None = None
        self._demand_cores = float(self.cores)

    def set_setpoint(self, watts: float) -> None:
        self.setpoint_w = watts

    def tick(self) -> TickReport:
        """One period: sample, supervise, control, govern, report."""
        now = self.clock()
        self.readings = {r.sensor: r for sensor in self.sensors for r in sensor.read()}
        power_w = self._value(self.power_reading)
        busy_cores = self._measure_cpu(now)
        allowance: Allowance = self.supervisor.supervise(now, self.readings)
        if allowance.safe:
            settings = self.governor.safe(freeze_workload=allowance.freeze_workload)
            command_w, selected = 0.0, "safe"
        else:
            temperatures = {"soc": self._value(self.soc_reading),
                            "oil": self._value(self.oil_reading)}
            decision = self.controller.update(now, self.setpoint_w,
                                              self._undithered(power_w), temperatures,
                                              allowance.max_power_w)
            settings = self.governor.apply(decision.command_w, self._demand_cores, self.model)
            command_w, selected = decision.command_w, decision.selected
        self._learn(power_w, busy_cores)
        self._last_settings = settings
        self._last_command_w = command_w
        report = TickReport(now, self.setpoint_w, power_w, self._value(self.soc_reading),
                            self._value(self.oil_reading), command_w, selected, allowance.mode,
                            settings, self._demand_cores)
        self.last_report = report
        if self.publish is not None and now >= self._next_report_s:
            self._next_report_s = now + self.report_period_s
            self.publish(report)
        return report

    def _undithered(self, power_w: float | None) -> float | None:
        """Measured power as if last period's setting had been the exact command.

        Dithering deliberately alternates between two operating points around the command;
        the power PID must trim the model's error, not chase that known alternation.
        """
        settings = self._last_settings
        if power_w is None or settings is None or settings.workload_frozen:
            return power_w
        return power_w + self._last_command_w - settings.predicted_w

    def _value(self, name: str | None) -> float | None:
        reading = self.readings.get(name) if name else None
        return reading.value if reading is not None and reading.ok else None

    def _measure_cpu(self, now: float) -> float | None:
        """CPUs used by the workload and heat-fill since the last period (from cpu.stat), and
        the workload's demand: what it used, or more if its quota throttled it."""
        try:
            work, fill = self.workload.cpu_stat(), self.heatfill.cpu_stat()
        except (OSError, ValueError):
            return None
        sample = (now, work["usage_usec"], work["nr_throttled"], fill["usage_usec"])
        previous, self._last_cpu_sample = self._last_cpu_sample, sample
        if previous is None or now <= previous[0]:
            return None
        elapsed_us = (now - previous[0]) * 1e6
        work_cores = (sample[1] - previous[1]) / elapsed_us
        fill_cores = (sample[3] - previous[3]) / elapsed_us
        throttled = sample[2] > previous[2]
        self._demand_cores = max(self._demand_cores, work_cores) if throttled else work_cores
        return work_cores + fill_cores

    def _learn(self, power_w: float | None, busy_cores: float | None) -> None:
        """Teach the power model what the previous period's settings drew."""
        settings = self._last_settings
        if settings is None or power_w is None or busy_cores is None:
            return
        if settings.workload_frozen or not math.isfinite(power_w):
            return
        self.model.learn(settings.freq_khz / self.policy.top_khz, busy_cores, power_w)

    def run(self, sleep: Callable[[float], None], should_stop: Callable[[], bool]) -> None:
        """Run on real time: tick at each deadline until should_stop()."""
        while not should_stop():
            self.tick()
            deadline = self.timer.advance(self.clock())
            sleep(max(0.0, deadline - self.clock()))

    def close(self) -> None:
        for sensor in self.sensors:
            sensor.close()
        self.context.close()
