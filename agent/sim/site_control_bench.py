"""The site-control bench: one site, the same days and faults, under four demand laws run
through the real SiteRole; figures about what the building feels (scripts/bench-site-control).

Why the real SiteRole with a reduced module model instead of the whole simulator: a day at
the site's 10 s period is 8,640 site periods, and 4 laws x 7 scenarios of them must run in
minutes on two cores; the full simulator runs an hour of 32 boards in a minute. So the site
role (its message decoding, capacity bookkeeping, law and split) is the product's own code,
fed through an in-process link with real envelopes exactly the messages a leader sends, while
each module is a reduced model: the leader's own TrimLoop, the boards' electric response as a
first-order lag, and one oil bath per module with the simulated board's own parameters
(agent/sim/params.py). docs/building-model.md says how the lag was measured.

Faults act on what the site would see and what the module would do: a pump stop sets the
module's interlock (boards SAFE at idle, no heat to the water); a leader crash stops its state
and sends its Last Will, boards hold their setpoints (30 s + 300 s, then the 3 W fallback);
a broker outage stops every message (kept QoS 1 budgets arrive when it is back); failed
boards latch at idle and leave the capacity; a cold snap is the weather.
"""

import dataclasses
import datetime
import math
from typing import Any, Callable

from agent.leader.trim import TrimLoop
from agent.mqtt.envelope import Envelope, encode
from agent.mqtt.link import Message
from agent.mqtt.topics import LEADER, ROOT, topic_matches
from agent.sim.building import (BAND_K, COLD_SNAP, MILD_DAY, WINTER_DAY, BufferTank,
                                HotWaterDraws, OutdoorDay, SpaceHeating, TankParams, comfort)
from agent.sim.params import BoardParams
from agent.site.legionella import CycleSettings
from agent.site.role import SiteRole, SiteSettings
from agent.site.target_plan import PlanSettings, TargetPlan

SITE = "bench"
SITE_PERIOD_S = 10.0
LEADER_PERIOD_S = 5.0
DAY_S = 86400.0
PREROLL_S = 7200.0
"""Run before the day starts (the evening before, no faults) so no law starts from a guess."""
ELECTRIC_LAG_S = 5.0
"""Module power behind its leader's electric budget, fitted by `calibrate` to a recording of
the full simulator (docs/building-model.md)."""
BOARD_FALLBACK_W = 3.0
BOARD_LEADER_TIMEOUT_S = 30.0
BOARD_HOLD_S = 300.0
"""The board's defaults (config_schema.py): setpoint held, then the local fallback."""
INTERLOCK_CLEAR_S = 30.0
"""The leader clears its interlock this long after the flow is back (agent/sim/site.py)."""
DAY_START = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc)
"""The bench's day is a Monday, the weekday of the site's legionella cycle where a scenario has
one."""
LEGIONELLA = CycleSettings(weekday=0, start_min=13 * 60, kill_c=60.0, hold_s=3600.0,
                           deadline_s=8 * 3600.0, target_c=62.0)
"""The tank at 60 C or more for an unbroken hour between 13:00 and 21:00 (issue 15)."""
RECOVERY_SHARE = 0.05
AT_CAPACITY_SHARE = 0.99
"""A budget this close to the capacity available asks for all of it."""
OVERSHOOT_ALLOWED_K = 1.0
BUDGET_CHANGE_SHARE = 0.01
"""A site budget that moves by more than this share of the full capacity counts as a change."""


@dataclasses.dataclass(frozen=True)
class SiteDesign:
    modules: int = 4
    boards_per_module: int = 64
    tank: TankParams = TankParams(litres=500.0)
    building: SpaceHeating = SpaceHeating(loss_w_per_k=50.0)
    target_c: float = 55.0

    def module_names(self) -> list[str]:
        return [f"m{i}" for i in range(1, self.modules + 1)]


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    """pump_stop, leader_crash, broker_outage, boards_failing."""
    start_s: float
    end_s: float
    module: str = ""
    boards: int = 0


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    day: OutdoorDay
    faults: tuple[Fault, ...] = ()
    legionella: bool = False
    """The site's weekly legionella cycle falls on this day."""


SCENARIOS = (
    Scenario("winter-day", WINTER_DAY),
    Scenario("mild-day", MILD_DAY),
    Scenario("cold-snap", COLD_SNAP),
    Scenario("pump-stop", WINTER_DAY, (Fault("pump_stop", 10 * 3600.0, 10 * 3600.0 + 1200, "m1"),)),
    Scenario("leader-crash", WINTER_DAY,
             (Fault("leader_crash", 14 * 3600.0, 14 * 3600.0 + 300, "m2"),)),
    Scenario("broker-outage", WINTER_DAY,
             (Fault("broker_outage", 17 * 3600.0, 17 * 3600.0 + 300),)),
    Scenario("boards-failing", WINTER_DAY,
             (Fault("boards_failing", 8 * 3600.0, 12 * 3600.0, "m3", 16),)),
    Scenario("legionella", WINTER_DAY, legionella=True),
)


def without_faults(scenario: Scenario) -> Scenario:
    """The counterfactual twin: the same day and cycle, nothing broken."""
    return dataclasses.replace(scenario, name=f"{scenario.name} without faults", faults=())


class ModuleModel:
    """A module as the site sees it and as the tank feels it: leader, boards, oil, pump."""

    def __init__(self, name: str, boards: int, start_c: float, board: BoardParams,
                 electric_lag_s: float = ELECTRIC_LAG_S):
        self.name = name
        self.electric_lag_s = electric_lag_s
        self.boards = boards
        self.board_max_w = board.idle_w + board.cores * board.core_busy_w_at_top
        self.board_idle_w = board.idle_w
        water_w_per_k = board.water_flow_l_per_min / 60.0 * board.water_heat_capacity_j_per_kg_k
        exchanger = (1.0 - math.exp(-board.exchanger_ua_w_per_k / water_w_per_k)) * water_w_per_k
        self.exchanger_w_per_k = exchanger * boards
        self.room_w_per_k = board.oil_to_room_w_per_k * boards
        self.room_c = board.room_c
        self.oil_j_per_k = board.oil_heat_capacity_j_per_k * boards
        self.trim = TrimLoop()
        self.budget_w = 0.0
        self.setpoints_w = boards * self.board_idle_w
        self.power_w = self.setpoints_w
        self.oil_c = start_c + self.power_w / (self.exchanger_w_per_k + self.room_w_per_k)
        self.heat_w = 0.0
        self.metered_heat_w: float | None = None
        self.pump_on = True
        self.flow_back_s = -math.inf
        self.leader_up = True
        self.failed = 0
        self.contact_s = 0.0
        self.electric_wh = 0.0
        self.heat_wh = 0.0

    def interlocked(self, now_s: float) -> bool:
        return not self.pump_on or now_s - self.flow_back_s < INTERLOCK_CLEAR_S

    def usable(self, now_s: float) -> int:
        return 0 if self.interlocked(now_s) else self.boards - self.failed

    def step(self, now_s: float, dt_s: float, inlet_c: float, reachable: bool) -> None:
        """One step; `reachable`: the leader is up and the broker carries its setpoints."""
        usable = self.usable(now_s)
        if reachable:
            electric_w = self.trim.update(now_s, self.budget_w, self.metered_heat_w)
            self.setpoints_w = min(max(electric_w, usable * self.board_idle_w),
                                   usable * self.board_max_w)
            self.contact_s = now_s
        elif now_s - self.contact_s >= BOARD_LEADER_TIMEOUT_S + BOARD_HOLD_S:
            self.setpoints_w = usable * BOARD_FALLBACK_W
        safe = self.boards - usable
        held_w = min(self.setpoints_w, usable * self.board_max_w)
        target_w = max(held_w, usable * self.board_idle_w) + safe * self.board_idle_w
        self.power_w += (target_w - self.power_w) * (1.0 - math.exp(-dt_s / self.electric_lag_s))
        exchanger_w_per_k = self.exchanger_w_per_k if self.pump_on else 0.0
        self.heat_w = exchanger_w_per_k * (self.oil_c - inlet_c)
        self.oil_c += (self.power_w - self.heat_w - self.room_w_per_k * (self.oil_c - self.room_c)
                       ) * dt_s / self.oil_j_per_k
        smoothing = 1.0 - math.exp(-dt_s / 60.0)
        self.metered_heat_w = (self.heat_w if self.metered_heat_w is None else
                               self.metered_heat_w + (self.heat_w - self.metered_heat_w)
                               * smoothing)
        self.electric_wh += self.power_w * dt_s / 3600.0
        self.heat_wh += self.heat_w * dt_s / 3600.0

    def state_payload(self, now_s: float) -> dict[str, Any]:
        """The fields of a leader's state the site reads (agent/leader/role.py)."""
        usable = self.usable(now_s)
        return {"budget_w": self.budget_w, "capacity_w": usable * self.board_max_w,
                "floor_w": usable * self.board_idle_w, "power_w": self.power_w,
                "heat_w": self.metered_heat_w,
                "interlock": {"active": self.interlocked(now_s)},
                "boards_usable": usable,
                "energy_electric_wh": self.electric_wh, "energy_heat_wh": self.heat_wh}


class BenchLink:
    """What the site role's Link does, in process: subscriptions matched as Mosquitto matches
    them, payloads through the real envelope; while the broker is down nothing arrives, QoS 0
    is lost and QoS 1 waits for the broker (the Link's outbox)."""

    def __init__(self, clock: Callable[[], float]):
        self.handlers: list[tuple[str, Callable[[Message], None]]] = []
        self.envelopes: dict[str, Envelope] = {}
        self.clock = clock
        self.broker_up = True
        self.kept: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.connected = True

    def start(self) -> None:
        """Connected from the start."""

    def subscribe(self, pattern: str, handler: Callable[[Message], None]) -> None:
        self.handlers.append((pattern, handler))

    def publish(self, topic: str, payload: dict[str, Any], qos: int = 0,
                retain: bool = False) -> None:
        if self.broker_up:
            self.sent.append((topic, payload))
        elif qos > 0:
            self.kept.append((topic, payload))

    def assert_retained(self, topic: str, payload: bytes) -> None:
        """Discovery and the like: nothing here reads them."""

    def poll(self, timeout_s: float = 0.0, max_messages: int = 100) -> int:
        return 0

    def close(self, timeout_s: float = 2.0) -> None:
        """Nothing to close."""

    def set_broker(self, up: bool) -> None:
        self.broker_up = up
        if up:
            self.sent.extend(self.kept)
            self.kept = []

    def take_sent(self) -> list[tuple[str, dict[str, Any]]]:
        sent, self.sent = self.sent, []
        return sent

    def deliver(self, sender: str, topic: str, payload: dict[str, Any] | str) -> None:
        """A message from another role, as the broker would hand it to the site."""
        if not self.broker_up:
            return
        if isinstance(payload, str):
            raw = payload.encode()
        else:
            envelope = self.envelopes.setdefault(sender, Envelope(sender, self.clock))
            raw = encode(envelope.stamp(topic, payload))
        for pattern, handler in self.handlers:
            if topic_matches(pattern, topic):
                handler(Message(topic, raw))


class OnOffDemand:
    """A run/stop thermostat: every module at full power below target - h, at its floor (no
    budget) from the target up, and as before in between."""

    def __init__(self, hysteresis_k: float):
        self.hysteresis_k = hysteresis_k
        self.on = False

    def update(self, now_s, loop_c, target_c, capacity_now_w, capacity_full_w) -> float:
        if loop_c < target_c - self.hysteresis_k:
            self.on = True
        elif loop_c >= target_c:
            self.on = False
        return capacity_now_w if self.on else 0.0

    def state(self) -> dict[str, Any]:
        return {"on": self.on}

    def restore(self, state: dict[str, Any]) -> None:
        self.on = bool(state.get("on"))


class ProportionalDemand:
    """The thermostat decides how much work: demand in proportion to the error, full power at
    `band_k` below the target, nothing at or above it."""

    def __init__(self, band_k: float):
        self.band_k = band_k

    def update(self, now_s, loop_c, target_c, capacity_now_w, capacity_full_w) -> float:
        share = min(max((target_c - loop_c) / self.band_k, 0.0), 1.0)
        return share * capacity_now_w

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class PowerAllocatorDemand:
    """The kernel's power_allocator law lifted to the site, as scripts/bench_control_controllers
    lifts it to a board: a PID on the tank temperature against the control temperature (the
    target) around a sustainable power, with power_allocator.rst's default gains from the
    sustainable power and the distance between the switch-on and control temperatures
    (k_po = P_s/dT above it, k_pu = 2 P_s/dT below, k_i = k_pu/10 per period, integral only
    while over the target with integral_cutoff 0, k_d = 0); below switch-on, full power and the
    integral reset. The split over modules is the site's (like divvy_up_power by capacity)."""

    def __init__(self, sustainable_w: float, switch_below_k: float):
        self.sustainable_w = sustainable_w
        self.switch_below_k = switch_below_k
        self.err_integral_k = 0.0

    def update(self, now_s, loop_c, target_c, capacity_now_w, capacity_full_w) -> float:
        err_k = target_c - loop_c
        if err_k > self.switch_below_k:
            self.err_integral_k = 0.0
            return capacity_now_w
        k_po = self.sustainable_w / self.switch_below_k
        k_pu = 2.0 * k_po
        k_i = k_pu / 10.0
        p = (k_po if err_k < 0 else k_pu) * err_k
        i = k_i * self.err_integral_k
        if err_k < 0.0:
            i_next = i + k_i * err_k
            if abs(i_next) < capacity_full_w:
                i = i_next
                self.err_integral_k += err_k
        return min(max(self.sustainable_w + p + i, 0.0), capacity_now_w)

    def state(self) -> dict[str, Any]:
        return {"err_integral_k": self.err_integral_k}

    def restore(self, state: dict[str, Any]) -> None:
        self.err_integral_k = float(state.get("err_integral_k", 0.0))


def mean_load_w(design: SiteDesign, day: OutdoorDay) -> float:
    """The day's mean space-heating and hot-water load, hourly samples."""
    draws = HotWaterDraws()
    return (sum(design.building.load_w(day.temperature_c(h * 3600.0)) for h in range(24)) / 24
            + draws.daily_kwh() * 1000.0 / 24.0)


def hearth_settings(design: SiteDesign) -> SiteSettings:
    """The site role as it ships: every [site] default (the demand law's band and integral
    time included), only the target and the leader timeout set as the bench's leaders use."""
    return SiteSettings(period_s=SITE_PERIOD_S, target_c=design.target_c,
                        leader_timeout_s=30.0)


CONTROLLERS: dict[str, Callable[[SiteDesign], Any]] = {
    "hearth": lambda design: None,
    "on/off": lambda design: OnOffDemand(hysteresis_k=1.0),
    "proportional": lambda design: ProportionalDemand(band_k=2.0),
    "power_allocator": lambda design: PowerAllocatorDemand(
        mean_load_w(design, WINTER_DAY), switch_below_k=5.0),
}
"""Each law as the site would be commissioned with it (docs/benchmarks.md says why); None is
the SiteRole's own, Hearth's, with the product's defaults."""


@dataclasses.dataclass
class Trace:
    times_s: list[float] = dataclasses.field(default_factory=list)
    tank_c: list[float] = dataclasses.field(default_factory=list)
    target_c: list[float] = dataclasses.field(default_factory=list)
    comfort_c: list[float] = dataclasses.field(default_factory=list)
    """The target comfort is judged against: the target in force, except the set target
    while a legionella cycle raises it (the cycle is judged by done or missed)."""
    heat_w: list[float] = dataclasses.field(default_factory=list)
    budget_w: list[float] = dataclasses.field(default_factory=list)
    capacity_w: list[float] = dataclasses.field(default_factory=list)
    """What the site role counted as available."""
    floor_w: list[float] = dataclasses.field(default_factory=list)
    """The usable boards' idle power: a budget at or below it leaves them at idle."""
    legionella: list[bool] = dataclasses.field(default_factory=list)
    """How each legionella cycle that ended in the day ended: done (True) or missed."""


def run(controller: str, scenario: Scenario, design: SiteDesign = SiteDesign(),
        day_s: float = DAY_S, preroll_s: float = PREROLL_S,
        twin: Trace | None = None) -> tuple[dict[str, Any], Trace]:
    """One law through one scenario; its figures and what they were computed from. `twin`:
    the same law's trace of `without_faults(scenario)`, for the recovery figures."""
    now = [-preroll_s]
    clock = lambda: now[0]  # noqa: E731 - the role's clock reads the bench's time
    link = BenchLink(clock)
    tank = BufferTank(design.tank, design.target_c)
    board = BoardParams()
    modules = {name: ModuleModel(name, design.boards_per_module, design.target_c, board)
               for name in design.module_names()}
    settings = hearth_settings(design)
    plan = TargetPlan(PlanSettings(target_min_c=settings.target_min_c,
                                   target_max_c=settings.target_max_c,
                                   eco_c=settings.eco_target_c,
                                   legionella=LEGIONELLA if scenario.legionella else None),
                      datetime.timezone.utc, max_gap_s=3 * SITE_PERIOD_S)
    epoch_s = DAY_START.timestamp()
    role = SiteRole(SITE, link, clock, settings, read_loop_c=lambda: tank.temperature_c,
                    law=CONTROLLERS[controller](design), wall_clock=lambda: epoch_s + now[0],
                    plan=plan)
    role.start()
    base = f"{ROOT}/{SITE}"
    for name in modules:
        link.deliver(name, f"{base}/{name}/{LEADER}/status", "online")
    draws = HotWaterDraws()
    trace = Trace()
    electric_wh = 0.0
    steps = round((preroll_s + day_s) / SITE_PERIOD_S)
    for _ in range(steps):
        now[0] += SITE_PERIOD_S
        t = now[0]
        broker_up = not any(f.kind == "broker_outage" and f.start_s <= t < f.end_s
                            for f in scenario.faults)
        if broker_up != link.broker_up:
            link.set_broker(broker_up)
            if broker_up:  # every leader re-asserts its status when it reconnects
                for name, module in modules.items():
                    if module.leader_up:
                        link.deliver(name, f"{base}/{name}/{LEADER}/status", "online")
        for name, module in modules.items():
            _apply_faults(module, scenario.faults, t, link, base)
        heat_in_w = 0.0
        for module in modules.values():
            module.step(t, SITE_PERIOD_S, tank.bottom_c, module.leader_up and broker_up)
            heat_in_w += module.heat_w
        outdoor_c = scenario.day.temperature_c(max(t, 0.0))
        tank.step(SITE_PERIOD_S, heat_in_w, design.building.load_w(outdoor_c),
                  draws.power_w(t % DAY_S))
        for name, module in modules.items():
            if module.leader_up:
                link.deliver(name, f"{base}/{name}/{LEADER}/state", module.state_payload(t))
        role.tick(t)
        if role.target.cycle_end is not None and t > 0:
            trace.legionella.append(role.target.cycle_end.done)
        for topic, payload in link.take_sent():
            parts = topic.split("/")
            if parts[-1] == "budget" and parts[-3] in modules and modules[parts[-3]].leader_up:
                modules[parts[-3]].budget_w = payload["budget_w"]
        if t > 0:
            electric_wh += sum(m.power_w for m in modules.values()) * SITE_PERIOD_S / 3600.0
            trace.times_s.append(t)
            trace.tank_c.append(tank.temperature_c)
            trace.target_c.append(role.snapshot.get("target_c", role.target_c))
            trace.comfort_c.append(role.target_c if role.target.reason == "legionella"
                                   else trace.target_c[-1])
            trace.heat_w.append(heat_in_w)
            trace.budget_w.append(sum(role.snapshot.get("budgets_w", {}).values()))
            trace.capacity_w.append(role.snapshot.get("capacity_w", 0.0))
            trace.floor_w.append(sum(m.usable(t) * m.board_idle_w for m in modules.values()))
    full_w = design.modules * design.boards_per_module * modules["m1"].board_max_w
    return figures(trace, scenario, electric_wh, full_w, twin), trace


def _apply_faults(module: ModuleModel, faults: tuple[Fault, ...], t: float, link: BenchLink,
                  base: str) -> None:
    for fault in faults:
        if fault.module != module.name:
            continue
        active = fault.start_s <= t < fault.end_s
        if fault.kind == "pump_stop" and module.pump_on == active:
            module.pump_on = not active
            if not active:
                module.flow_back_s = t
        elif fault.kind == "leader_crash" and module.leader_up == active:
            module.leader_up = not active
            link.deliver(module.name, f"{base}/{module.name}/{LEADER}/status",
                         "offline" if active else "online")
            if not active:  # a restarted leader starts from its settings' budget, 0 W
                module.budget_w = 0.0
                module.trim = TrimLoop()
        elif fault.kind == "boards_failing":
            module.failed = fault.boards if active else 0


def calibrate(recording: dict[str, Any], module: str, until_s: float,
              lags_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
              ) -> list[tuple[float, float, float]]:
    """Replay a module's recorded budgets (a `hearth sim` recording.json, undisturbed until
    `until_s`) through ModuleModel with each electric lag: (lag s, RMS error of power W, RMS
    error of metered heat W) against what the full simulator recorded."""
    times = recording["times_s"]
    series = recording["modules"][module]
    boards = sum(1 for key in recording["boards"] if key.startswith(module + "/"))
    found = []
    for lag_s in lags_s:
        model = ModuleModel(module, boards, recording["site"]["tank_c"][0], BoardParams(),
                            electric_lag_s=lag_s)
        model.power_w = model.setpoints_w = series["power_w"][0]
        power_errors, heat_errors = [], []
        for i in range(1, len(times)):
            if times[i] > until_s:
                break
            model.budget_w = series["budget_w"][i - 1] or 0.0
            model.step(times[i], times[i] - times[i - 1], recording["site"]["tank_c"][i], True)
            if times[i] > 60.0:  # after the first metered heat
                power_errors.append(model.power_w - series["power_w"][i])
                if series["heat_w"][i] is not None:
                    heat_errors.append(model.metered_heat_w - series["heat_w"][i])
        found.append((lag_s, _rms(power_errors), _rms(heat_errors)))
    return found


def _rms(errors: list[float]) -> float:
    return math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else math.nan


def figures(trace: Trace, scenario: Scenario, electric_wh: float, full_w: float,
            twin: Trace | None = None) -> dict[str, Any]:
    """The run's figures; `twin` is the same law's run of the same day without the faults,
    which the heat after each fault is compared with (None: no recovery figures)."""
    found = comfort(trace.times_s, trace.tank_c, trace.comfort_c)
    hours = (trace.times_s[-1] - trace.times_s[0] + SITE_PERIOD_S) / 3600.0
    changes = sum(1 for a, b in zip(trace.budget_w, trace.budget_w[1:])
                  if abs(b - a) > BUDGET_CHANGE_SHARE * full_w)
    at_floor_k, controlled_k = overshoot_k(trace)
    recovery = {f.kind: recovery_s(trace, twin, f) if twin is not None else (None, 0.0)
                for f in scenario.faults}
    return {"below_band_k_h": found.below_band_k_h, "worst_deficit_k": found.worst_deficit_k,
            "below_2k_min": found.below_2k_s / 60.0,
            "overshoot_k": max(at_floor_k, controlled_k),
            "overshoot_at_floor_k": at_floor_k, "overshoot_controlled_k": controlled_k,
            "electricity_kwh": electric_wh / 1000.0,
            "budget_changes_per_h": changes / hours,
            "legionella_done": sum(trace.legionella),
            "legionella_missed": len(trace.legionella) - sum(trace.legionella),
            "recovery_s": {kind: found_s for kind, (found_s, _) in recovery.items()},
            "recovery_at_capacity_s": {kind: full_s for kind, (_, full_s) in recovery.items()}}


def overshoot_k(trace: Trace) -> tuple[float, float]:
    """How far the tank rose above its target + 1 K at most: (while the budget had been at the
    floor ever since the tank last rose out of its band, which no law could have prevented
    once the tank was above the band: the heat already in the oil baths and the idle
    boards' own; at every other moment)."""
    at_floor_k = controlled_k = 0.0
    floor_since_band = False
    for tank_c, target_c, budget_w, floor_w in zip(trace.tank_c, trace.target_c,
                                                   trace.budget_w, trace.floor_w):
        if tank_c <= target_c + BAND_K:
            floor_since_band = True  # an excursion out of the band starts after this
        else:
            floor_since_band = floor_since_band and budget_w <= floor_w
        excess_k = max(0.0, tank_c - target_c - OVERSHOOT_ALLOWED_K)
        if floor_since_band:
            at_floor_k = max(at_floor_k, excess_k)
        else:
            controlled_k = max(controlled_k, excess_k)
    return at_floor_k, controlled_k


def recovery_s(trace: Trace, twin: Trace, fault: Fault) -> tuple[float | None, float]:
    """Seconds from the fault's end until the heat into the tank is no more than
    RECOVERY_SHARE short of the twin's at the same moment (None if it never is), and how many
    of them the site's budget was at all the capacity available, where only capacity (and
    the oil baths' lag) limits how fast heat comes back. More heat than the twin is the site
    making up what the fault cost, not a shortfall."""
    at_capacity_s = 0.0
    at_capacity_since_s: float | None = None
    for t, heat_w, twin_w, budget_w, capacity_w in zip(trace.times_s, trace.heat_w,
                                                        twin.heat_w, trace.budget_w,
                                                        trace.capacity_w):
        if t < fault.end_s:
            continue
        if at_capacity_since_s is not None:
            at_capacity_s += t - at_capacity_since_s
        if heat_w >= (1.0 - RECOVERY_SHARE) * twin_w:
            return t - fault.end_s, at_capacity_s
        at_capacity_since_s = t if budget_w >= AT_CAPACITY_SHARE * capacity_w else None
    return None, at_capacity_s
