"""A whole simulated site in one process: the site role, one leader per module and every board's
full agent, each with its own MQTT connection, heating one buffer tank that a building draws
from, while a site scenario breaks things.

Why everything is stepped from one loop on one simulated clock: hundreds of boards must run
faster than real time on a small machine, and a run must repeat. MQTT stays real (every role
has its own Link to a real broker), so messages take the wall time they take; at high speed a
message may arrive a simulated second or two later than on a quiet real site, which the roles
must tolerate anyway. Boards run at a 1 s control period here (0.1 s on a real board) so a
simulated hour of 64 boards fits in a minute; docs/scenarios.md says so.

Every Link shares one NetworkLoop that this loop runs between steps (NetworkLoop.settle): the
simulation's clients are one busy thread, and the broker is a Mosquitto process beside it
(agent/sim/mosquitto.py), the broker a site runs. With a paho thread per client, contention
for the interpreter made every board's step two to three times slower than the work itself.
Between steps, messages are moved until nothing is left to move; one that Mosquitto has not
routed yet by then arrives a step later, as it may on a site. With `workers`, most boards run
in worker processes on the other cores
(agent/sim/board_farm.py), given each period's inputs two periods ahead so they never wait
for this process (SiteSimulation._send_inputs); the site reads each board's BoardState.

What is simulated is hardware and the building: the boards' sysfs, I2C and GPIO (agent/sim/
board.py), the module's pump and pipes (every board of a module gets an equal share of the
module's flow from the tank and returns into it), the leaders' module sensors (read from that
hydraulics) and the tank. Everything that decides is the product's own code.
"""

import collections
import dataclasses
import logging
import time
import uuid
from pathlib import Path
from typing import Callable

from agent.errors import ConfigValueError
from agent.leader.role import (LINK_WINDOW, LeaderRole, LeaderSettings, ModuleReadings,
                               module_topics)
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.outbox import Outbox
from agent.persist import StateStore
from agent.sim.board_farm import (BOARD_PERIOD_S, SITE, BoardSpec, BoardState,
                                  FarmSettings, FaultChange, LocalFarm, Water, WorkerFarm)
from agent.sim.clock import SimClock
from agent.sim.mosquitto import Mosquitto
from agent.sim.params import BoardParams
from agent.sim.plant import WATER_KG_PER_L
from agent.sim.recording import FaultRecord, Recording
from agent.sim.site_scenario import Action, SiteScenario
from agent.site.role import SiteRole, SiteSettings, site_topics

NOMINAL_BOARD_W = 6.0
"""What one board makes flat out, for sizing the building and the demand loop."""
LEADER_SETTINGS = LeaderSettings(period_s=5.0, silence_timeout_s=15.0, flow_min_l_per_min=0.2,
                                 oil_max_c=68.0, interlock_clear_s=30.0, heat_smoothing_s=60.0,
                                 ledger_save_s=60.0)
MODE_OK = ("NORMAL", "LIMITED")
INPUTS_AHEAD = 2
"""Periods of board inputs queued ahead of the boards (see SiteSimulation._send_inputs)."""


@dataclasses.dataclass(frozen=True)
class SiteLayout:
    modules: int = 2
    boards_per_module: int = 16

    def module_names(self) -> list[str]:
        return [f"m{i}" for i in range(1, self.modules + 1)]

    def board_names(self) -> list[str]:
        return [f"b{i:02d}" for i in range(1, self.boards_per_module + 1)]


@dataclasses.dataclass(frozen=True)
class BrokerAccess:
    """Where the broker is, and how to take it down for an outage (None: an external broker
    the simulator cannot stop, so outage actions are skipped and say so)."""

    host: str
    port: int
    set_down: Callable[[bool], None] | None = None
    name: str = "external"

    @classmethod
    def own(cls, broker: Mosquitto) -> "BrokerAccess":
        """A Mosquitto the simulation started: an outage stops the process and the end of it
        starts it again on the same port, its persistence keeping what it retained."""
        return cls(broker.host, broker.port,
                   lambda down: broker.stop() if down else broker.start(), "own Mosquitto")


class BoardView:
    """A board as the site sees it: where it is, and its state after the last step."""

    def __init__(self, key: str, state: BoardState):
        self.key = key
        self.module, self.name = key.split("/")
        self.state = state

    @property
    def mode(self) -> str:
        return self.state.mode


class SimModule:
    """A module: its boards, its pump and pipes, and its leader (which may crash)."""

    def __init__(self, directory: Path, name: str, boards: list[BoardView], clock: SimClock,
                 broker: BrokerAccess, wall_clock: Callable[[], float], network: NetworkLoop):
        self.directory = directory
        self.network = network
        self.name = name
        self.boards = boards
        self.clock = clock
        self.broker = broker
        self.wall_clock = wall_clock
        self.pump_on = True
        self.flow_per_board_l_per_min = BoardParams().water_flow_l_per_min
        self.store = StateStore(directory / "leader-state")
        self.leader: LeaderRole | None = None
        self.next_leader_s = 0.0
        self.start_leader()

    def start_leader(self) -> None:
        link = Link(LinkSettings(self.broker.host, self.broker.port, reconnect_max_s=2),
                    client_id=f"hearth-{SITE}-{self.name}-leader",
                    outbox=Outbox(self.directory / "leader-outbox"), boot=str(uuid.uuid4()),
                    wall_clock=self.wall_clock,
                    status_topic=module_topics(SITE, self.name)["status"],
                    io=self.network, window=LINK_WINDOW)
        self.leader = LeaderRole(SITE, self.name, link, self.clock, LEADER_SETTINGS,
                                 self.readings, store=self.store, wall_clock=self.wall_clock)
        self.leader.start()
        link.start()
        self.next_leader_s = self.clock()

    def crash_leader(self) -> None:
        """The leader's process dies: no goodbye, so the broker sends its Last Will."""
        self.leader.link.abort()
        self.leader = None

    def water(self, tank_c: float) -> tuple[float, float]:
        """What the pump pushes through each board's heat exchanger: tank water, its share."""
        return tank_c, self.flow_per_board_l_per_min if self.pump_on else 0.0

    def readings(self) -> ModuleReadings:
        """The leader's module sensors: inlet and mixed outlet, the pump's flow, the oil, as
        the boards had them in the period just stepped."""
        states = [b.state for b in self.boards]
        flow_l_per_min = sum(state.flow_l_per_min for state in states)
        inlet_c = outlet_c = states[0].inlet_c
        if flow_l_per_min > 0:
            outlet_c = sum(state.outlet_c * state.flow_l_per_min
                           for state in states) / flow_l_per_min
        return ModuleReadings(inlet_c=inlet_c, outlet_c=outlet_c,
                              flow_l_per_min=flow_l_per_min,
                              oil_c=max(state.oil_c for state in states))

    def run_leader(self, now: float) -> None:
        leader = self.leader
        if leader is None:
            return
        leader.link.poll()
        leader.react(now)
        if now >= self.next_leader_s:
            leader.tick(now)
            self.next_leader_s += LEADER_SETTINGS.period_s

    def close(self) -> None:
        if self.leader is not None:
            self.leader.close()
            self.leader.link.close()


class Tank:
    """The buffer tank: the modules heat it, the building draws from it."""

    def __init__(self, litres: float, start_c: float):
        self.capacity_j_per_k = (litres * WATER_KG_PER_L
                                 * BoardParams().water_heat_capacity_j_per_kg_k)
        self.temperature_c = start_c

    def step(self, dt_s: float, heat_in_w: float, load_w: float) -> None:
        self.temperature_c += (heat_in_w - load_w) * dt_s / self.capacity_j_per_k


class SiteSimulation:
    def __init__(self, scenario: SiteScenario, layout: SiteLayout, directory: Path,
                 broker: BrokerAccess, clock: SimClock | None = None,
                 wall_start: float | None = None, log: logging.Logger | None = None,
                 workers: int = 0, worker_log: Path | None = None):
        """`workers`: worker processes that step most of the boards (0: every board in this
        process); their log lines go to `worker_log`."""
        self.scenario = scenario
        self.layout = layout
        self.broker = broker
        self.clock = clock or SimClock()
        self.log = log or logging.getLogger("hearth.sim")
        self.start_s = self.clock()
        epoch = time.time() if wall_start is None else wall_start
        self.wall_clock = lambda: epoch + (self.clock() - self.start_s)
        self.recording = Recording(meta={
            "scenario": scenario.name, "description": scenario.description,
            "modules": layout.modules, "boards_per_module": layout.boards_per_module,
            "boards": layout.modules * layout.boards_per_module,
            "simulated_s": scenario.duration_s, "broker": broker.name,
            "board_period_s": BOARD_PERIOD_S})
        self.nominal_w = NOMINAL_BOARD_W * layout.modules * layout.boards_per_module
        building = scenario.building
        self.tank = Tank(building.tank_litres_per_board * layout.modules
                         * layout.boards_per_module, building.start_c)
        self._check_targets(layout)
        self.directory = directory
        self.modules: dict[str, SimModule] = {}
        self.network = NetworkLoop(threaded=False)
        specs = [BoardSpec(directory / module / name, module, name, seed)
                 for seed, (module, name) in enumerate(
                     (module, name) for module in layout.module_names()
                     for name in layout.board_names())]
        settings = FarmSettings(broker.host, broker.port, self.clock(), epoch, building.start_c,
                                str(worker_log or ""))
        self.farms = self._start_farms(specs, settings, workers)
        self.boards: dict[str, BoardView] = {}
        for farm in self.farms:
            states = farm.states()
            self.boards.update((key, BoardView(key, state)) for key, state in states.items())
        self.boards = {spec.key: self.boards[spec.key] for spec in specs}
        for module in layout.module_names():
            self.modules[module] = SimModule(
                directory / module, module, [b for b in self.boards.values() if b.module == module],
                self.clock, broker, self.wall_clock, self.network)
        self.inputs_ahead: collections.deque[tuple[Water, tuple[FaultChange, ...]]] = (
            collections.deque())
        """The boards' inputs for the coming periods, oldest first: what each module's pump
        sends through each of its boards, and the faults that change (see _send_inputs)."""
        self.fault_changes: list[FaultChange] = []
        self.site = self._start_site(building.target_c)
        self.next_site_s = self.clock()
        self.pending = list(scenario.actions)
        self.watches: list[FaultWatch] = []
        self.heat_stored_start_j = self._stored_j()
        self.energy_j = {"requested": 0.0, "heat_to_water": 0.0, "electric": 0.0,
                         "to_room": 0.0, "load": 0.0}

    LOCAL_SHARE = 0.55
    """Boards this process steps for every board one worker steps: it also runs the leaders and
    the site (balanced on a 64-board module with one worker, 2 cores, while this process also
    ran the broker; Mosquitto now takes its share of the cores from outside)."""

    def _start_farms(self, specs: list[BoardSpec], settings: FarmSettings,
                     workers: int) -> list:
        """Deal the boards: with workers, this process keeps a smaller share, because it also
        runs the leaders and the site."""
        share = self.LOCAL_SHARE / (self.LOCAL_SHARE + max(0, workers))
        local_count = round(len(specs) * share)
        farms: list = [LocalFarm(specs[:local_count], settings, self.clock, self.network)]
        rest = specs[local_count:]
        try:
            for index in range(max(0, workers)):
                share = rest[index::workers]
                if share:
                    farms.append(WorkerFarm(share, settings, self.network.wait))
        except BaseException:
            for farm in farms:
                farm.close()
            raise
        return farms

    def _check_targets(self, layout: SiteLayout) -> None:
        problems = []
        for index, action in enumerate(self.scenario.actions, 1):
            if action.module and action.module not in layout.module_names():
                problems.append(f"at[{index}].module = {action.module!r}: this site has "
                                f"modules {', '.join(layout.module_names())}")
            if action.board and action.board not in layout.board_names():
                problems.append(f"at[{index}].board = {action.board!r}: each module has "
                                f"boards b01 to b{layout.boards_per_module:02d}")
        if problems:
            raise ConfigValueError(f"scenario {self.scenario.name!r} does not fit this site:\n  "
                                   + "\n  ".join(problems), problems=problems)

    def _start_site(self, target_c: float) -> SiteRole:
        link = Link(LinkSettings(self.broker.host, self.broker.port, reconnect_max_s=2),
                    client_id=f"hearth-{SITE}-site", outbox=Outbox(self.directory / "site-outbox"),
                    boot=str(uuid.uuid4()), wall_clock=self.wall_clock,
                    status_topic=site_topics(SITE)["status"], io=self.network)
        # The scenario's tank is scaled down (0.6 l a board), so it answers in minutes and
        # takes a shorter integral time than the [site] defaults, which suit a building's tank.
        role = SiteRole(SITE, link, self.clock, SiteSettings(
            period_s=10.0, target_c=target_c, proportional_band_k=5.0, integral_time_s=120.0,
            leader_timeout_s=30.0), read_loop_c=lambda: self.tank.temperature_c)
        role.start()
        link.start()
        return role

    # -- the run ----------------------------------------------------------------------------

    def run(self, speed: float = 0.0, on_sample: Callable[["SiteSimulation"], None] | None = None,
            sample_s: float | None = None) -> Recording:
        """Play the scenario; `speed` is simulated seconds per wall second (0: flat out)."""
        duration_s = self.scenario.duration_s
        sample_s = sample_s or max(BOARD_PERIOD_S, round(duration_s / 720.0))
        steps = round(duration_s / BOARD_PERIOD_S)
        wall_start = time.monotonic()
        self.wait_connected()
        next_sample_s = 0.0
        self._fire_actions(0.0)
        for step in range(1, 1 + INPUTS_AHEAD):
            self._send_inputs(step, steps)
        for step in range(1, steps + 1):
            elapsed_s = step * BOARD_PERIOD_S
            self._step(step, steps)
            for watch in self.watches:
                watch.check(elapsed_s)
            if elapsed_s >= next_sample_s:
                next_sample_s += sample_s
                self._sample(elapsed_s)
                if on_sample is not None:
                    on_sample(self)
            if speed > 0:
                ahead_s = elapsed_s / speed - (time.monotonic() - wall_start)
                if ahead_s > 0:
                    self.network.wait(ahead_s)
        self.recording.meta["wall_s"] = round(time.monotonic() - wall_start, 2)
        self._finish_energy()
        for watch in self.watches:
            watch.finish()
        return self.recording

    def _send_inputs(self, step: int, steps: int) -> None:
        """Queue what the boards get in period `step` (of `steps`): the water the pumps send
        now and the faults the scenario changed; the workers start that period at once.

        Why ahead: a worker that already holds its next period never waits for this process
        to finish the leaders' and the site's work of the last one. So what the pumps and the
        scenario do at the end of a period reaches every board, in this process as in the
        workers, in the period after next (INPUTS_AHEAD = 2): a second later than it could,
        as through a pipe or a relay (the tank moves by a thousandth of a degree meanwhile)."""
        water = {name: module.water(self.tank.temperature_c)
                 for name, module in self.modules.items()}
        inputs = (water, tuple(self.fault_changes))
        self.fault_changes = []
        self.inputs_ahead.append(inputs)
        if step <= steps:
            for farm in self.farms[1:]:
                farm.begin_step(BOARD_PERIOD_S, *inputs)

    def _step(self, step: int, steps: int) -> None:
        """One board period: the boards step, the tank takes their heat, the roles act."""
        dt_s = BOARD_PERIOD_S
        elapsed_s = step * dt_s
        self.clock.advance(dt_s)
        now = self.clock()
        self.farms[0].begin_step(dt_s, *self.inputs_ahead.popleft())
        self.network.settle()
        for farm in self.farms:
            states, events = farm.end_step()
            for key, state in states.items():
                self.boards[key].state = state
            for event in events:
                self._on_board_event(*event)
        heat_w = sum(b.state.heat_to_water_w for b in self.boards.values())
        electric_w = sum(b.state.power_w for b in self.boards.values())
        load_w = self.scenario.building.load_fraction(elapsed_s) * self.nominal_w
        self.tank.step(dt_s, heat_w, load_w)
        if step < steps:
            self._fire_actions(elapsed_s)
            self._send_inputs(step + INPUTS_AHEAD, steps)
        self.network.settle()
        for module in self.modules.values():
            module.run_leader(now)
        self.network.settle()
        self.site.link.poll()
        if now >= self.next_site_s:
            self.site.tick(now)
            self.next_site_s += self.site.settings.period_s
        self.network.settle()
        demand_w = self.site.snapshot.get("demand_w") or 0.0
        energy = self.energy_j
        energy["requested"] += demand_w * dt_s
        energy["heat_to_water"] += heat_w * dt_s
        energy["electric"] += electric_w * dt_s
        energy["load"] += load_w * dt_s

    def _stored_j(self) -> float:
        """Heat held in every SoC and oil bath above 0 C (only its change matters)."""
        return sum(board.state.stored_j for board in self.boards.values())

    def _finish_energy(self) -> None:
        energy = self.energy_j
        room_j = sum(b.state.energy_to_room_j for b in self.boards.values())
        metered = {"electric": 0.0, "heat": 0.0}
        for module in self.modules.values():
            if module.leader is not None:
                totals = module.leader.ledger.totals_wh()
                metered["electric"] += totals["electric"]
                metered["heat"] += totals["heat"]
        self.recording.energy = {
            "requested": energy["requested"] / 3600.0,
            "heat_to_water": energy["heat_to_water"] / 3600.0,
            "electric": energy["electric"] / 3600.0,
            "to_room": room_j / 3600.0,
            "stored": (self._stored_j() - self.heat_stored_start_j) / 3600.0,
            "load": energy["load"] / 3600.0,
            "metered_electric": metered["electric"],
            "metered_heat": metered["heat"]}

    # -- scenario actions -------------------------------------------------------------------

    def links(self) -> list[Link]:
        return [self.site.link] + [m.leader.link for m in self.modules.values()
                                   if m.leader is not None]

    def _all_connected(self) -> bool:
        return (all(link.connected for link in self.links())
                and all(farm.connected() for farm in self.farms))

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Hold simulated time (not wall time) until every live client is connected.

        Why: clients connect and reconnect on wall-clock backoff (1-2 s); at a hundred times
        real speed that would be minutes of simulated time that a real site does not lose."""
        deadline = time.monotonic() + timeout_s
        while not self._all_connected():
            if time.monotonic() > deadline:
                self.log.warning("MQTT clients still not connected after %.0f s", timeout_s)
                return
            self.network.wait(0.01)
        self.network.settle()

    def _fire_actions(self, elapsed_s: float) -> None:
        while self.pending and self.pending[0].time_s <= elapsed_s:
            action = self.pending.pop(0)
            self._event(elapsed_s, "scenario", "action", action.describe())
            self._act(action, elapsed_s)
            if action.action in ("broker_up", "leader_restart"):
                self.wait_connected()

    def _act(self, action: Action, now_s: float) -> None:
        kind = action.action
        module = self.modules.get(action.module)
        if kind in ("pump_off", "leader_crash", "broker_down", "board_fault"):
            record = FaultRecord(now_s, kind, "/".join(p for p in (action.module, action.board)
                                                       if p) or "site", action.describe())
            self.recording.faults.append(record)
            self.watches.append(FaultWatch(self, record, action))
        if kind == "pump_off":
            module.pump_on = False
        elif kind == "pump_on":
            module.pump_on = True
        elif kind == "leader_crash":
            if module.leader is not None:
                module.crash_leader()
        elif kind == "leader_restart":
            if module.leader is None:
                module.start_leader()
        elif kind in ("broker_down", "broker_up"):
            if self.broker.set_down is not None:
                self.broker.set_down(kind == "broker_down")
        elif kind in ("board_fault", "board_clear"):
            self.fault_changes.append((f"{action.module}/{action.board}", action.fault,
                                       kind == "board_fault"))
        for watch in self.watches:
            watch.on_action(action, now_s)

    # -- what is recorded -------------------------------------------------------------------

    def elapsed_s(self) -> float:
        return self.clock() - self.start_s

    def _event(self, t_s: float, source: str, kind: str, text: str) -> None:
        self.recording.events.append({"t_s": round(t_s, 1), "source": source, "kind": kind,
                                      "text": text})

    def _on_board_event(self, t_s: float, board: str, cause: str, mode: str,
                        message: str) -> None:
        if mode == "STARTING":
            return  # sensors not read yet while a board boots: every board says so, all fine
        self._event(t_s, board, cause, f"{mode}: {message}")

    def _sample(self, elapsed_s: float) -> None:
        rec = self.recording
        rec.times_s.append(elapsed_s)
        boards = self.boards.values()
        rec.append(rec.site, {
            "demand_w": self.site.snapshot.get("demand_w"),
            "heat_w": sum(b.state.heat_to_water_w for b in boards),
            "electric_w": sum(b.state.power_w for b in boards),
            "load_w": self.scenario.building.load_fraction(elapsed_s) * self.nominal_w,
            "tank_c": self.tank.temperature_c, "target_c": self.site.target_c})
        for name, module in self.modules.items():
            snapshot = module.leader.snapshot if module.leader is not None else {}
            readings = module.readings()
            rec.append(rec.modules.setdefault(name, {}), {
                "budget_w": self.site.snapshot.get("budgets_w", {}).get(name),
                "power_w": sum(b.state.power_w for b in module.boards),
                "heat_w": snapshot.get("heat_w"),
                "oil_c": readings.oil_c, "flow_l_per_min": readings.flow_l_per_min,
                "outlet_c": readings.outlet_c,
                "interlock": bool((snapshot.get("interlock") or {}).get("active")),
                "leader_online": module.leader is not None})
        for key, board in self.boards.items():
            state = board.state
            rec.append(rec.boards.setdefault(key, {}), {
                "setpoint_w": state.setpoint_w, "power_w": state.power_w, "soc_c": state.soc_c,
                "mode": state.mode})

    def close(self) -> None:
        for module in self.modules.values():
            module.close()
        for farm in self.farms:
            farm.close()
        self.site.link.close()
        self.network.close()


class FaultWatch:
    """Follows one injected fault and writes what became of it into its FaultRecord."""

    CLEARED_BY = {"pump_off": "pump_on", "leader_crash": "leader_restart",
                  "broker_down": "broker_up", "board_fault": "board_clear"}

    def __init__(self, simulation: SiteSimulation, record: FaultRecord, action: Action):
        self.sim = simulation
        self.record = record
        self.action = action
        self.notes: list[str] = []
        self.seen: set[str] = set()
        if action.action == "broker_down" and simulation.broker.set_down is None:
            self._note("skipped: the simulator cannot stop an external broker", "skip", 0.0)

    def _note(self, text: str, key: str, now_s: float) -> None:
        """Say once what happened and how long after the fault (or after its clearing, for
        the recovery) it took."""
        if key in self.seen:
            return
        self.seen.add(key)
        if key == "back":
            self.notes.append(f"{text} {now_s - self.record.cleared_s:.0f} s after it cleared")
        elif key == "skip":
            self.notes.append(text)
        else:
            self.notes.append(f"{text} after {now_s - self.record.t_s:.0f} s")
        self.record.outcome = "; ".join(self.notes)

    def on_action(self, action: Action, now_s: float) -> None:
        if (action.action == self.CLEARED_BY[self.action.action]
                and action.module == self.action.module and action.board == self.action.board
                and self.record.cleared_s is None):
            self.record.cleared_s = now_s

    def _module_boards(self) -> list[BoardView]:
        return self.sim.modules[self.action.module].boards

    def check(self, now_s: float) -> None:
        kind, sim = self.action.action, self.sim
        cleared = self.record.cleared_s is not None
        if kind == "pump_off":
            module = sim.modules[self.action.module]
            boards = self._module_boards()
            if module.leader is not None and module.leader.interlock.state.active:
                self._note("module interlock set", "interlock", now_s)
            if all(b.mode == "SAFE" for b in boards):
                self._note(f"all {len(boards)} boards SAFE", "safe", now_s)
            if cleared and "safe" in self.seen and all(b.mode in MODE_OK for b in boards):
                self._note("boards heating again", "back", now_s)
        elif kind == "leader_crash":
            module, boards = self.action.module, self._module_boards()
            if sim.site.leader_status.get(module) == "offline" and not cleared:
                self._note("site saw the leader's Last Will and gave its budget to the other "
                           "modules", "lwt", now_s)
            self._followed_leader(boards, cleared, now_s, "boards")
        elif kind == "broker_down" and "skip" not in self.seen:
            self._followed_leader(list(sim.boards.values()), cleared, now_s, "every board")
        elif kind == "board_fault":
            board = sim.boards[f"{self.action.module}/{self.action.board}"]
            if board.mode not in MODE_OK and "reacted" not in self.seen:
                faults = board.state.latched
                self._note(f"board {board.mode}" + (f" ({', '.join(faults)})" if faults
                                                    else ""), "reacted", now_s)
            if cleared and "reacted" in self.seen and board.mode in MODE_OK:
                self._note("board heating again", "back", now_s)

    def _followed_leader(self, boards: list[BoardView], cleared: bool, now_s: float,
                         who: str) -> None:
        """Without their leader, boards hold its last setpoint for a while, then fall back;
        with it back, they follow it again."""
        sources = {b.state.setpoint_source for b in boards}
        if not cleared:
            if "leader" not in sources:
                self._note(f"{who} without the leader ({' / '.join(sorted(sources))})", "lost",
                           now_s)
            if sources == {"fallback"}:
                self._note(f"{who} on the fallback setpoint", "fallback", now_s)
        elif sources == {"leader"}:
            self._note(f"{who} following the leader again", "back", now_s)

    def finish(self) -> None:
        """Say how it stood at the end where it never came back."""
        if self.action.action == "board_fault":
            board = self.sim.boards[f"{self.action.module}/{self.action.board}"]
            if "back" not in self.seen and board.mode not in MODE_OK:
                latched = board.state.latched
                self.notes.append(f"still {board.mode} at the end" + (
                    ": latched, needs a technician's reset" if latched else ""))
        elif "back" not in self.seen and "skip" not in self.seen:
            self.notes.append("not recovered by the end" if self.record.cleared_s is not None
                              else "not cleared in the scenario")
        if self.notes:
            self.record.outcome = "; ".join(self.notes)
