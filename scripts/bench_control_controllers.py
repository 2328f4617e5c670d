"""The controllers scripts/bench-control sets against Hearth's: bang-bang, IPA-style, simple-pid.

Each runs inside the real BoardAgent as a plug-in (`plug_in`): its sampling, safety supervisor,
setpoint source and CPU-load measurement are the agent's own, and only the control and govern
steps are the alternative's. Without a governor of their own they share one static
operating-point ladder, written through the agent's own drivers (CpuFreqPolicy, CpuGroup), that
reaches as far as Hearth's governor does, so the comparison is of control, not of actuator
reach:

* below the lowest frequency: the paid work's CPU quota (cpu.max) in quarter-CPU steps;
* the policy's frequencies (cpufreq scaling_max_freq), paid work unlimited;
* above the top frequency: the heat-fill group's quota in quarter-CPU steps.

None of them learns a model, measures what the work demands beyond its CPU load, or dithers.
A supervisor's LIMITED ceiling, in watts, means nothing to a choice of point without a power
model, so they go by their own SoC handling there; SAFE, FAULT and SHUTDOWN are the agent's and
hold them at the SAFE settings.
"""

import dataclasses
import math
from typing import Callable

import simple_pid

from agent.control.controller import Decision
from agent.control.governor import DvfsGovernor, Settings
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.safe_actuators import MIN_HEATFILL_CPUS
from agent.safety.supervisor import Mode, SafetySettings, Supervisor
from agent.supervisor_hook import Allowance

QUOTA_STEP_CPUS = 0.25


@dataclasses.dataclass(frozen=True)
class LadderPoint:
    freq_khz: int
    workload_quota_cpus: float | None
    heatfill_cpus: float


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What an alternative controller sees each period."""

    now_s: float
    setpoint_w: float
    power_w: float | None
    soc_c: float | None
    load_cores: float
    """The paid work's CPU demand as the agent measures it from cpu.stat (held while a quota
    throttles it)."""


class Ladder:
    """The operating points, lowest heat first, and writing one of them to the actuators."""

    def __init__(self, hearth: DvfsGovernor):
        """On the drivers Hearth's governor writes through (it keeps them)."""
        policy, self.cores = hearth.policy, hearth.cores
        self.policy, self.workload, self.heatfill = policy, hearth.workload, hearth.heatfill
        steps = round(self.cores / QUOTA_STEP_CPUS)
        self.points = (
            [LadderPoint(policy.min_khz, QUOTA_STEP_CPUS * i, 0.0) for i in range(1, steps)]
            + [LadderPoint(khz, None, 0.0) for khz in policy.available_khz]
            + [LadderPoint(policy.top_khz, None, QUOTA_STEP_CPUS * i)
               for i in range(1, steps + 1)])

    def apply(self, index: int) -> LadderPoint:
        point = self.points[max(0, min(len(self.points) - 1, index))]
        self.policy.cap(point.freq_khz)
        self.workload.freeze(False)
        self.workload.set_quota(point.workload_quota_cpus)
        running = point.heatfill_cpus >= MIN_HEATFILL_CPUS
        self.heatfill.set_quota(point.heatfill_cpus if running else MIN_HEATFILL_CPUS)
        self.heatfill.freeze(not running)
        return point


class StaticPowerModel:
    """The kernel's cpufreq-cooling power model: P_dyn = C * f * V(f)^2 per busy CPU, with a
    fixed dynamic-power coefficient and voltage table (what a device tree gives), plus a fixed
    static (idle) board power. Never corrected by measured power."""

    def __init__(self, idle_w: float, coefficient_w_per_mhz_v2: float,
                 volts_by_khz: dict[int, float], cores: int):
        self.idle_w = idle_w
        self.coefficient = coefficient_w_per_mhz_v2
        self.volts_by_khz = volts_by_khz
        self.cores = cores

    def core_w(self, khz: int) -> float:
        return self.coefficient * (khz / 1000.0) * self.volts_by_khz[khz] ** 2

    def busy_cores(self, point: LadderPoint, load_cores: float) -> float:
        work = min(load_cores, self.cores if point.workload_quota_cpus is None
                   else point.workload_quota_cpus)
        return work + min(point.heatfill_cpus, self.cores - work)

    def dynamic_w(self, point: LadderPoint, load_cores: float) -> float:
        return self.busy_cores(point, load_cores) * self.core_w(point.freq_khz)


class BangBang:
    """Most heat below the setpoint, least above it (with hysteresis), least at the SoC limit."""

    def __init__(self, ladder_size: int, soc_limit_c: float, hysteresis_w: float = 0.05):
        self.top = ladder_size - 1
        self.soc_limit_c = soc_limit_c
        self.hysteresis_w = hysteresis_w
        self.index = 0

    def update(self, m: Measurement) -> int:
        if m.soc_c is None or m.soc_c >= self.soc_limit_c:
            self.index = 0
        elif m.power_w is not None and m.power_w < m.setpoint_w - self.hysteresis_w:
            self.index = self.top
        elif m.power_w is not None and m.power_w > m.setpoint_w + self.hysteresis_w:
            self.index = 0
        return self.index


@dataclasses.dataclass(frozen=True)
class IpaTunables:
    """power_allocator.rst's tunables. Gains left unset take the kernel's defaults from the
    trip points and sustainable power (k_po = P_s / dT, k_pu = 2 P_s / dT, k_i = k_pu / 10,
    k_d = 0, integral_cutoff = 0), with dT = control_temp - switch_on_temp."""

    control_temp_c: float
    switch_on_temp_c: float
    sustainable_power_w: float
    integral_cutoff_c: float = 0.0
    k_d: float = 0.0

    @property
    def k_po(self) -> float:
        return self.sustainable_power_w / (self.control_temp_c - self.switch_on_temp_c)

    @property
    def k_pu(self) -> float:
        return 2.0 * self.sustainable_power_w / (self.control_temp_c - self.switch_on_temp_c)

    @property
    def k_i(self) -> float:
        return self.k_pu / 10.0


class IpaActor:
    """One power actor (a cooling device): here the board's CPUs over the ladder's points."""

    def __init__(self, points: list[LadderPoint], model: StaticPowerModel, weight: int = 1024):
        self.points = points
        self.model = model
        self.weight = weight
        self.state = len(points) - 1

    def requested_w(self, load_cores: float) -> float:
        """get_requested_power: what the current state draws at the current load."""
        return self.model.dynamic_w(self.points[self.state], load_cores)

    def max_w(self, load_cores: float) -> float:
        return self.model.dynamic_w(self.points[-1], max(load_cores, 1e-3))

    def power_to_state(self, granted_w: float, load_cores: float) -> int:
        """power2state: the highest point whose modelled power fits in the grant."""
        fitting = [i for i, p in enumerate(self.points)
                   if self.model.dynamic_w(p, load_cores) <= granted_w]
        self.state = fitting[-1] if fitting else 0
        return self.state


class PowerAllocator:
    """The kernel's power_allocator governor, from power_allocator.rst: a PID on the SoC
    temperature against control_temp gives a power budget around sustainable_power; the budget
    is divided among the actors in proportion to their weighted requests (capped at each
    actor's maximum, the surplus redistributed); each grant becomes the highest state within
    it through the static model. The heat setpoint caps the budget (its dynamic part)."""

    def __init__(self, tunables: IpaTunables, actors: list[IpaActor], model: StaticPowerModel,
                 period_s: float):
        self.t = tunables
        self.period_s = period_s
        self.actors = actors
        self.model = model
        self.err_integral = 0.0
        self.prev_err = 0.0

    def reset(self) -> None:
        self.err_integral = 0.0
        self.prev_err = 0.0

    def budget_w(self, soc_c: float, max_w: float, period_s: float) -> float:
        """pid_controller(): the kernel sums errors per sample and differentiates per period."""
        t = self.t
        err = t.control_temp_c - soc_c
        p = (t.k_po if err < 0 else t.k_pu) * err
        i = t.k_i * self.err_integral
        if err < t.integral_cutoff_c:
            i_next = i + t.k_i * err
            if abs(i_next) < max_w:
                i = i_next
                self.err_integral += err
        d = t.k_d * (err - self.prev_err) / period_s
        self.prev_err = err
        return min(max(t.sustainable_power_w + p + i + d, 0.0), max_w)

    def update(self, m: Measurement) -> int:
        max_w = sum(actor.max_w(m.load_cores) for actor in self.actors)
        cap_w = max(0.0, m.setpoint_w - self.model.idle_w)
        if m.soc_c is None or m.soc_c < self.t.switch_on_temp_c:
            self.reset()
            budget_w = max_w
        else:
            budget_w = self.budget_w(m.soc_c, max_w, self.period_s)
        budget_w = min(budget_w, cap_w)
        grants = self.divide(budget_w, m.load_cores)
        states = [actor.power_to_state(g, m.load_cores) for actor, g in zip(self.actors, grants)]
        return states[0]

    def divide(self, budget_w: float, load_cores: float) -> list[float]:
        """divvy_up_power(): shares by weighted request, capped, surplus to the unsatisfied."""
        weighted = [a.weight * a.requested_w(load_cores) / 1024.0 for a in self.actors]
        maxima = [a.max_w(load_cores) for a in self.actors]
        total = sum(weighted)
        if total <= 0.0:
            weighted, total = [1.0] * len(self.actors), float(len(self.actors))
        grants = [budget_w * w / total for w in weighted]
        extra = sum(max(0.0, g - top) for g, top in zip(grants, maxima))
        grants = [min(g, top) for g, top in zip(grants, maxima)]
        room = [top - g for g, top in zip(grants, maxima)]
        if extra > 0.0 and sum(room) > 0.0:
            grants = [g + extra * r / sum(room) for g, r in zip(grants, room)]
        return grants


class SimplePidOnPower:
    """simple-pid on measured power driving the ladder position (the frequency, in its middle
    section) directly: no temperature selector, no feed-forward, nearest point, no dithering."""

    def __init__(self, ladder_size: int, kp: float, ki: float, kd: float, period_s: float):
        self.period_s = period_s
        self.index = ladder_size - 1
        self.pid = simple_pid.PID(kp, ki, kd, setpoint=0.0, sample_time=None,
                                  output_limits=(0.0, float(ladder_size - 1)),
                                  starting_output=float(ladder_size - 1))

    def update(self, m: Measurement) -> int:
        if m.power_w is not None:
            self.pid.setpoint = m.setpoint_w
            self.index = round(self.pid(m.power_w, dt=self.period_s))
        return self.index


def static_model_from_datasheet(params, policy: CpuFreqPolicy) -> StaticPowerModel:
    """The board's nominal figures (what a device tree would carry): idle power, one busy
    core's power at the top point, and the core voltage table, linear between its ends."""
    low, top = policy.min_khz, policy.top_khz
    volts = {khz: params.core_volts_at_min + (params.core_volts_at_top - params.core_volts_at_min)
             * (khz - low) / (top - low) for khz in policy.available_khz}
    coefficient = params.core_busy_w_at_top / ((top / 1000.0) * params.core_volts_at_top ** 2)
    return StaticPowerModel(params.idle_w, coefficient, volts, params.cores)


def sustainable_power_w(params, control_temp_c: float, design_inlet_c: float) -> float:
    """Dynamic power the board can shed at control_temp with water at the design inlet
    temperature: SoC-to-oil resistance plus the exchanger's oil-to-inlet resistance."""
    capacity = params.water_flow_l_per_min / 60.0 * params.water_heat_capacity_j_per_kg_k
    exchanger_w_per_k = (1.0 - math.exp(-params.exchanger_ua_w_per_k / capacity)) * capacity
    board_w = (control_temp_c - design_inlet_c) / (params.soc_to_oil_k_per_w
                                                   + 1.0 / exchanger_w_per_k)
    return max(0.1, board_w - params.idle_w)


class PassThroughController:
    """The control-step half of a plug-in: passes the setpoint through as the command and keeps
    what the control step sees (setpoint, measured power, SoC) for the governor half, which
    alone sees the paid work's CPU demand; the alternatives choose from all of them at once."""

    def __init__(self, name: str):
        self.name = name
        self.seen: tuple[float, float, float | None, float | None] = (0.0, 0.0, None, None)
        """(now, setpoint W, power W, SoC C) of this period."""

    def update(self, now: float, setpoint_w: float, power_w: float | None,
               temperatures_c: dict[str, float | None], allowed_max_w: float) -> Decision:
        self.seen = (now, setpoint_w, power_w, temperatures_c.get("soc"))
        return Decision(setpoint_w, self.name)


class LadderGovernor:
    """The govern-step half of a plug-in: the alternative's choice of ladder point, written to
    the actuators. It predicts nothing, so it reports the command as its prediction: the agent's
    dither correction of measured power is then nil. SAFE is written by Hearth's governor, the
    same settings every SAFE period of the agent writes."""

    def __init__(self, hearth: DvfsGovernor, ladder: Ladder, choice,
                 control: PassThroughController):
        self.hearth = hearth
        """Writes SAFE."""
        self.ladder = ladder
        self.choice = choice
        """An alternative: `update(Measurement)` returns a ladder index."""
        self.control = control

    def apply(self, command_w: float, demand_cores: float, model) -> Settings:
        now, setpoint_w, power_w, soc_c = self.control.seen
        index = self.choice.update(Measurement(now, setpoint_w, power_w, soc_c, demand_cores))
        point = self.ladder.apply(index)
        running = point.heatfill_cpus >= MIN_HEATFILL_CPUS
        return Settings(point.freq_khz, point.workload_quota_cpus, False,
                        point.heatfill_cpus if running else 0.0, command_w)

    def safe(self, freeze_workload: bool) -> Settings:
        return self.hearth.safe(freeze_workload)


def plug_in(name: str, make_choice: Callable[[Ladder], object]) -> dict:
    """BoardAgent's constructor arguments that run an alternative inside it; `make_choice`
    builds the alternative on the ladder of the agent's own actuators."""
    control = PassThroughController(name)

    def governor(policy: CpuFreqPolicy, workload: CpuGroup, heatfill: CpuGroup,
                 cores: int) -> LadderGovernor:
        hearth = DvfsGovernor(policy, workload, heatfill, cores)
        ladder = Ladder(hearth)
        return LadderGovernor(hearth, ladder, make_choice(ladder), control)

    return {"controller": control, "governor": governor}


class PassThroughSupervisor(Supervisor):
    """Allows everything, from the first period: given to a BoardAgent as its `supervisor` to
    see its control loop alone (a diagnostic run, labelled as such; never how the agent ships).
    Built from build_supervisor's arguments, none of whose checks it runs."""

    def __init__(self, limits, readings, events, shutdown, now: float, latched=None):
        super().__init__([], [], SafetySettings(), limits.power_min_w, limits.power_max_w,
                         events, shutdown, now, latched)
        self.mode = Mode.NORMAL

    def supervise(self, now: float, readings: dict, command_w: float) -> Allowance:
        return Allowance(self.mode.value, math.inf)
