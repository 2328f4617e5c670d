"""The board agent: one board's control loop (DESIGN.md section 3).

Each period: sample the sensors, let the supervisor decide what is allowed, let the heat
controller choose a power command, let the governor turn it into CPU settings, and report.
Everything it touches comes in through the seam (`Hardware`), so hundreds of agents can run
in one process against simulated boards, and one runs on a Pi against the real thing.
"""

import contextlib
import dataclasses
import math
import os
import types
from collections.abc import Iterator, Mapping
from typing import Callable

from agent.control.autotune import StoredGains, apply_gains
from agent.control.controller import HeatController, LimitGains, PowerGains, TemperatureLimit
from agent.control.governor import DvfsGovernor, Settings
from agent.control.power_model import PowerModel
from agent.control.timer import LoopTimer
from agent.drivers.base import DriverContext
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.registry import build_sensors
from agent.errors import ConfigValueError, PeriodFailed
from agent.readings import Reading
from agent.seam import Hardware
from agent.config_watch import ConfigWatch
from agent.safety.build import build_supervisor
from agent.safety.checks import Finding, Level
from agent.safety.events import Event, EventLog
from agent.safety.shutdown import ShutdownPath, run_command
from agent.safety.supervisor import Supervisor
from agent.setpoints import SetpointSource
from agent.supervisor_hook import Allowance
from agent.systemd_notify import Notifier

LIMIT_MARGIN_C = 1.0
"""The limit loops aim this far below the configured limit, so overshoot stays under it."""
IDLE_PRIOR_W = 2.7
CORE_PRIOR_W = 0.85
POWEROFF_COMMAND = ["systemctl", "poweroff"]
REQUIRED_ROLES = ("power", "soc")
"""A board without these is not controlled at all: a config that lacks them fails closed."""


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
    allowed_w: float | None = None
    """The most power the supervisor allowed this period (None: not known)."""


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    """What other parts (console, MQTT link, simulator) read of the agent: a snapshot taken on
    the loop's thread, so nobody walks the agent's insides or sees them half-updated."""

    time: float
    mode: str
    setpoint_w: float
    setpoint_source: str
    power_min_w: float
    power_max_w: float
    latched: Mapping[str, str]
    """Latched FAULT causes -> their messages."""
    active: tuple[str, ...]
    """The causes the supervisor sees this period, sorted."""
    findings: tuple[Finding, ...]
    """What it found for each of them (level, value, message), in the same order."""
    last_report: TickReport | None
    readings: Mapping[str, Reading]


class BoardAgent:
    def __init__(self, config, hardware: Hardware,
                 events: EventLog | None = None,
                 run_command: Callable[[list[str]], None] = run_command,
                 send_signal: Callable[[int, int], None] = os.kill,
                 save_latched: Callable[[dict[str, str]], None] = lambda latched: None,
                 latched: dict[str, str] | None = None,
                 gains: StoredGains | None = None,
                 controller=None,
                 governor: Callable[..., object] = DvfsGovernor,
                 supervisor: Callable[..., Supervisor] = build_supervisor):
        """The control law, the governor and the supervisor are parameters with Hearth's as
        defaults, so other control laws run inside this same loop (scripts/bench-control).

        `controller` is an object with HeatController's `update`; None builds the heat
        controller from `config` (it needs nothing else, so a caller can build its own from the
        same config). `governor` is called with the CPU policy, the workload and heat-fill
        groups and the core count the agent builds, and returns an object with DvfsGovernor's
        `apply` and `safe`. `supervisor` is called with `build_supervisor`'s arguments. The
        supervisor's SAFE is written by `governor.safe()` whatever the controller wanted."""
        missing = [role for role in REQUIRED_ROLES if role not in config.roles]
        if missing:
            raise ConfigValueError(
                f"{config.path}: no [[sensor]] has role {' or '.join(map(repr, missing))}: "
                "the agent cannot hold the board's power or protect its SoC without them, so it "
                "does not start (the failsafe keeps the board capped). Add role = \"power\" to "
                "the power monitor and role = \"soc\" to the SoC zone in the board definition "
                f"({config.board_path or 'the config'}); board definitions written before roles "
                "need them added")
        self.clock = hardware.clock
        self.context = DriverContext(hardware)
        self.sensors = build_sensors([s for s in config.sensors
                                      if s.name not in config.leader_only_sensors], self.context)
        self.roles = config.roles
        """Sensor role -> the reading that serves it, resolved when the config was loaded."""
        self.power_reading = self.roles.get("power")
        self.soc_reading = self.roles.get("soc")
        self.oil_reading = self.roles.get("oil")
        limits, actuators, control = config.limits, config.actuators, config.control
        self.policy = CpuFreqPolicy(hardware, actuators.cpufreq_policy)
        self.workload = CpuGroup(hardware, actuators.workload_cgroup, actuators.cpu_period_us)
        self.heatfill = CpuGroup(hardware, actuators.heatfill_cgroup, actuators.cpu_period_us)
        self.cores = len(self.policy.cpus)
        self.governor = governor(self.policy, self.workload, self.heatfill, self.cores)
        self.model = PowerModel(IDLE_PRIOR_W, CORE_PRIOR_W)
        if controller is None:
            temperature_limits = [TemperatureLimit("soc", limits.soc_limit_c - LIMIT_MARGIN_C,
                                                   LimitGains(), limits.power_min_w,
                                                   limits.power_max_w)]
            if self.oil_reading:
                temperature_limits.append(TemperatureLimit(
                    "oil", limits.oil_limit_c - LIMIT_MARGIN_C,
                    LimitGains(kp=2.0, ki=0.02, kd=0.0), limits.power_min_w, limits.power_max_w))
            controller = HeatController(limits.power_min_w, limits.power_max_w,
                                        temperature_limits, PowerGains.for_period(control.period_s))
        self.controller = controller
        if gains is not None:
            apply_gains(self.controller, gains)
        now = self.clock()
        self.events = events if events is not None else EventLog()
        shutdown = ShutdownPath(self.events, self.workload.dir, save_latched,
                                POWEROFF_COMMAND, run_command, send_signal)
        self.supervisor = supervisor(limits, self.roles, self.events, shutdown, now, latched)
        self.setpoints = SetpointSource(control.fallback_setpoint_w, control.leader_timeout_s,
                                        control.setpoint_hold_s, limits.power_min_w,
                                        limits.power_max_w, self.events, now)
        self._inputs: list[tuple[object, Callable[[], None]]] = []
        """Called at the start of every tick, on the loop's thread: how messages received on
        other threads (MQTT) reach the agent without racing the loop."""
        self._report_listeners: list[tuple[object, Callable[[TickReport], None]]] = []
        self.config_watch = ConfigWatch(config.path, self.events, now)
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

    def add_input(self, owner: object, poll: Callable[[], None]) -> None:
        """Call `poll()` at the start of every period until `remove(owner)`."""
        self._inputs.append((owner, poll))

    def add_report_listener(self, owner: object, listener: Callable[[TickReport], None]) -> None:
        """Hand `listener` each report at the report rate until `remove(owner)`."""
        self._report_listeners.append((owner, listener))

    def subscribe_events(self, owner: object, subscriber) -> None:
        """Hand `subscriber` every event, after the period's actuators are written."""
        self.events.subscribe(owner, subscriber)

    def remove(self, owner: object) -> None:
        """Undo everything `owner` registered: inputs, report listeners, event subscriptions,
        supervisor checks."""
        self._inputs = [entry for entry in self._inputs if entry[0] is not owner]
        self._report_listeners = [e for e in self._report_listeners if e[0] is not owner]
        self.events.unsubscribe(owner)
        self.supervisor.remove_checks(owner)

    @contextlib.contextmanager
    def override_controller(self, controller) -> Iterator[None]:
        """Run `controller` in place of the heat controller for the `with` block (the relay
        autotune); the heat controller is back afterwards whatever happened."""
        saved, self.controller = self.controller, controller
        try:
            yield
        finally:
            self.controller = saved

    def record(self, cause: str, value, message: str, severity: str = "warning") -> None:
        """An event from another part (link, console), stamped with the agent's time and mode."""
        self.events.record(Event(self.clock(), cause, value, message,
                                 self.supervisor.mode.value, severity))

    def status(self) -> AgentStatus:
        now = self.clock()
        setpoints, supervisor = self.setpoints, self.supervisor
        return AgentStatus(now, supervisor.mode.value, setpoints.current_w(now),
                           setpoints.status, setpoints.power_min_w, setpoints.power_max_w,
                           types.MappingProxyType(dict(supervisor.latched)),
                           tuple(sorted(supervisor.active)),
                           tuple(supervisor.active[cause] for cause in sorted(supervisor.active)),
                           self.last_report,
                           types.MappingProxyType(self.readings))

    def latest_events(self, count: int) -> list[Event]:
        return self.events.latest(count)

    def reset_faults(self) -> tuple[bool, str]:
        """A technician's or an authorised reset: clears latched faults whose causes are gone."""
        return self.supervisor.reset(self.clock())

    def clear_local_setpoint(self) -> None:
        self.setpoints.clear_local()

    def apply_gains(self, gains: StoredGains) -> None:
        """Tuned gains, applied bumplessly to the heat controller."""
        apply_gains(self.controller, gains)

    def power_off(self, cause: str, value, message: str) -> float:
        """An orderly shutdown asked for from outside (a technician): the workload is stopped
        now and the board powered off after the grace period, which is returned."""
        shutdown = self.supervisor.shutdown
        shutdown.power_off(self.clock(), Finding(cause, Level.SHUTDOWN, value, message))
        return shutdown.grace_s

    def run_command(self, argv: list[str]) -> None:
        """Run a system command the way the shutdown path does (reboot from the console)."""
        self.supervisor.shutdown.run(argv)

    @property
    def setpoint_w(self) -> float:
        return self.setpoints.current_w(self.clock())

    def set_setpoint(self, watts: object, source: str = "local") -> tuple[bool, str]:
        """Offer a setpoint; a malformed or out-of-range one is rejected and changes nothing."""
        return self.setpoints.offer(self.clock(), watts, source)

    def set_interlock(self, reason: str) -> None:
        """The module leader's interlock (flow lost, oil over-temperature); "" clears it."""
        self.supervisor.interlock_reason = reason

    def healthy(self) -> bool:
        """Whether the loop runs on time with its required sensors reading: the condition for
        petting the systemd watchdog."""
        report = self.last_report
        return (report is not None and self.clock() - report.time < 2 * self.period_s
                and not any(cause.startswith("sensor:") and finding.level >= Level.SAFE
                            for cause, finding in self.supervisor.active.items()))

    def tick(self) -> TickReport:
        """One period: sample, supervise, control, govern, report.

        Anything that raises inside it is a bug: the board is put in SAFE settings, the cause
        recorded and delivered, and PeriodFailed raised for the caller to end the process
        (Klipper's one shutdown path; systemd restarts the agent)."""
        try:
            return self._period()
        except Exception as error:
            self._fail_safe(error)
            raise PeriodFailed(f"{type(error).__name__}: {error}") from error

    def _fail_safe(self, error: Exception) -> None:
        """Each step in its own guard: a broken actuator must not keep the event unrecorded."""
        message = (f"the control period failed with {type(error).__name__}: {error}; the "
                   "board is left in SAFE settings and the agent exits for systemd to restart "
                   "it. Report this with the journal around it.")
        try:
            self.governor.safe(freeze_workload=False)
        except Exception as safe_error:
            message += f" Writing the SAFE settings failed too ({safe_error}): run hearth failsafe."
        self.events.record(Event(self.clock(), "internal_error", type(error).__name__, message,
                                 "SAFE", "critical"))
        self.events.deliver()

    def _period(self) -> TickReport:
        for _, poll in self._inputs:
            poll()
        now = self.clock()
        self.readings = {r.sensor: r for sensor in self.sensors for r in sensor.read()}
        power_w = self._value(self.power_reading)
        busy_cores = self._measure_cpu(now)
        allowance: Allowance = self.supervisor.supervise(now, self.readings,
                                                         self._last_command_w)
        if allowance.safe:
            settings = self.governor.safe(freeze_workload=allowance.freeze_workload)
            command_w, selected = 0.0, "safe"
        else:
            temperatures = {"soc": self._value(self.soc_reading),
                            "oil": self._value(self.oil_reading)}
            decision = self.controller.update(now, self.setpoints.current_w(now),
                                              self._undithered(power_w), temperatures,
                                              allowance.max_power_w)
            settings = self.governor.apply(decision.command_w, self._demand_cores, self.model)
            command_w, selected = decision.command_w, decision.selected
        self.config_watch.poll(now, allowance.mode)
        self._learn(now, power_w, busy_cores, allowance.mode)
        self._last_settings = settings
        self._last_command_w = command_w
        report = TickReport(now, self.setpoints.current_w(now), power_w, self._value(self.soc_reading),
                            self._value(self.oil_reading), command_w, selected, allowance.mode,
                            settings, self._demand_cores, allowance.max_power_w)
        self.last_report = report
        if self._report_listeners and now >= self._next_report_s - self.period_s / 2:
            # on a grid like the loop's (half a period of slack for float sums), so reports
            # do not slip a tick each time
            self._next_report_s = max(self._next_report_s + self.report_period_s, now)
            for _, listener in self._report_listeners:
                listener(report)
        self.events.deliver()
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

    def _learn(self, now: float, power_w: float | None, busy_cores: float | None,
               mode: str) -> None:
        """Teach the power model what the previous period's settings drew."""
        settings = self._last_settings
        if settings is None or power_w is None or busy_cores is None:
            return
        if settings.workload_frozen or not math.isfinite(power_w):
            return
        x = settings.freq_khz / self.policy.top_khz
        if not self.model.learn(x, busy_cores, power_w):
            self.events.record(Event(
                now, "power_model_reset", f"{power_w:.3f} W at x={x:.3f}, {busy_cores:.2f} cores",
                "The learned power model degenerated (a runaway coefficient or a covariance that "
                "is no longer positive definite) and went back to its priors; it learns again "
                "from the next period. Check the power sensor if this repeats.", mode, "warning"))

    def run(self, sleep: Callable[[float], None], should_stop: Callable[[], bool],
            notifier: Notifier) -> None:
        """Run on real time: tick at each deadline until should_stop(); tell systemd."""
        mode = ""
        while not should_stop():
            report = self.tick()
            if not mode:
                notifier.ready(f"mode {report.mode}")
            elif report.mode != mode:
                notifier.status(f"mode {report.mode}")
            mode = report.mode
            if self.healthy():
                notifier.watchdog()
            deadline = self.timer.advance(self.clock())
            sleep(max(0.0, deadline - self.clock()))
        notifier.stopping()

    def close(self) -> None:
        self.events.deliver()
        for sensor in self.sensors:
            sensor.close()
        self.workload.close()
        self.heatfill.close()
        self.context.close()
