"""The simulated site's boards, stepped together in the simulation's process or in a worker
process of their own.

Why workers: one Python process runs on one core (the GIL), and a board's full agent costs a
few tenths of a millisecond per simulated second, so a 64-board hour does not fit in a minute on
one core. A worker steps its share of the boards on another core; its boards talk to the broker
over loopback like every board does. The simulation and a worker exchange only what a pipe
carries cheaply, once per step: the water each module's pump sends through its boards, and a
BoardState per board back.

A worker is a fresh interpreter (`python -m agent.sim.board_worker FD`: forking a process that
holds sockets and a broker would copy them, and multiprocessing's spawn re-imports the
caller's main script) talking over a socket pair with multiprocessing's Connection. It builds
its boards from BoardSpecs and answers one command at a time: step (with the period's water
and fault changes), say whether every link is connected, close.
"""

import collections
import dataclasses
import gc
import logging
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from agent.mqtt.board_link import BoardConnection, BoardLink, connect_board
from agent.mqtt.link import LinkSettings
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.topics import BoardTopics
from agent.safety.events import EventLog
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.scenario import inject_fault

SITE = "sim"
BOARD_PERIOD_S = 1.0
BOARD_CONFIG = f"[control]\nperiod_s = {BOARD_PERIOD_S}\n"

Water = dict[str, tuple[float, float]]
"""module -> (inlet temperature C, flow through each of its boards l/min)."""
BoardEvent = tuple[float, str, str, str, str]
"""(simulated seconds since the start, board key, cause, mode, message)."""
FaultChange = tuple[str, str, bool]
"""(board key, fault as scenario files name it, True to inject or False to clear)."""


@dataclasses.dataclass(frozen=True)
class BoardSpec:
    directory: Path
    module: str
    name: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.module}/{self.name}"


@dataclasses.dataclass(frozen=True)
class FarmSettings:
    """What every farm shares: the broker, the clocks' starting points and the water's."""

    host: str
    port: int
    clock_start_s: float
    wall_epoch: float
    water_c: float
    log_file: str = ""
    """A worker's log lines go here (the simulation's own log); empty: standard error."""


@dataclasses.dataclass(frozen=True)
class BoardState:
    """What the site simulation reads of a board after a step."""

    power_w: float
    heat_to_water_w: float
    inlet_c: float
    flow_l_per_min: float
    outlet_c: float
    oil_c: float
    soc_c: float
    mode: str
    setpoint_w: float | None
    setpoint_source: str
    latched: tuple[str, ...]
    energy_to_room_j: float
    stored_j: float
    """Heat held in the SoC and the oil bath above 0 C (only its change matters)."""


class SimBoard:
    """One board's simulated hardware, its agent and its MQTT connection."""

    def __init__(self, spec: BoardSpec, clock: SimClock, settings: FarmSettings,
                 network: NetworkLoop, on_event: Callable[[str, object], None]):
        self.module, self.name, self.key = spec.module, spec.name, spec.key
        self.sim = SimulatedAgent(spec.directory / "board", clock, seed=spec.seed,
                                  extra_config=BOARD_CONFIG, events=EventLog(journal=None))
        self.sim.agent.subscribe_events(self, lambda event: on_event(self.key, event))
        start_s = settings.clock_start_s
        self.link: BoardLink = connect_board(self.sim.agent, BoardConnection(
            LinkSettings(settings.host, settings.port, reconnect_max_s=2),
            BoardTopics(SITE, spec.module, spec.name), spec.directory / "outbox",
            lambda: settings.wall_epoch + (clock() - start_s), io=network))
        settle_at_idle(self.plant, settings.water_c)

    @property
    def plant(self):
        return self.sim.board.plant

    def step(self, dt_s: float) -> None:
        self.sim.board.step(dt_s)
        self.sim.agent.tick()

    def state(self) -> BoardState:
        plant, agent = self.plant, self.sim.agent
        report = agent.last_report
        params = plant.params
        return BoardState(
            plant.power_w, plant.heat_to_water_w, plant.water_inlet_c,
            plant.water_flow_l_per_min, plant.water_outlet_c(), plant.oil_c,
            plant.soc_c, report.mode if report is not None else "STARTING",
            report.setpoint_w if report is not None else None, agent.setpoints.status,
            tuple(sorted(agent.supervisor.latched)), plant.energy_to_room_j,
            plant.soc_c * params.soc_heat_capacity_j_per_k
            + plant.oil_c * params.oil_heat_capacity_j_per_k)

    def close(self) -> None:
        self.link.close()
        self.sim.agent.close()


def settle_at_idle(plant, water_c: float) -> None:
    """Start a board as if it had idled for hours on water at `water_c`: its oil and SoC at
    the temperatures idle power holds them at, so the run does not open with a warm-up."""
    params = plant.params
    plant.water_inlet_c = water_c
    plant.oil_c = water_c + params.idle_w / plant.exchanger_w_per_k()  # at the nominal flow
    plant.soc_c = plant.oil_c + params.idle_w * params.soc_to_oil_k_per_w


class LocalFarm:
    """Boards in the simulation's own process, on its clock and its NetworkLoop."""

    def __init__(self, specs: list[BoardSpec], settings: FarmSettings, clock: SimClock,
                 network: NetworkLoop):
        self.clock = clock
        self.start_s = settings.clock_start_s
        self.events: list[BoardEvent] = []
        self.boards = [SimBoard(spec, clock, settings, network, self._on_event)
                       for spec in specs]
        self.by_key = {board.key: board for board in self.boards}

    def _on_event(self, key: str, event) -> None:
        self.events.append((self.clock() - self.start_s, key, event.cause, event.mode,
                            event.message))

    def begin_step(self, dt_s: float, water: Water, faults: tuple[FaultChange, ...] = ()
                   ) -> None:
        """Change the faults of this farm's boards among `faults`, feed the water, then step
        every board (the caller has advanced the clock)."""
        for key, fault, active in faults:
            if key in self.by_key:
                inject_fault(self.by_key[key].sim.board, fault, active)
        for board in self.boards:
            board.plant.water_inlet_c, board.plant.water_flow_l_per_min = water[board.module]
            board.step(dt_s)

    def end_step(self) -> tuple[dict[str, BoardState], list[BoardEvent]]:
        events, self.events = self.events, []
        return self.states(), events

    def states(self) -> dict[str, BoardState]:
        return {board.key: board.state() for board in self.boards}

    def connected(self) -> bool:
        return all(board.link.link.connected for board in self.boards)

    def close(self) -> None:
        for board in self.boards:
            board.close()


class WorkerFarm:
    """Boards in a worker process, stepped in time with the simulation.

    Steps may be queued ahead (begin_step twice before end_step): the worker takes each
    command in order and answers each, so a step that is already queued starts the moment the
    last one ends, and a period in which the simulation's own work runs long (a leader's round
    of setpoints) does not leave the worker idle. Other commands (states, connected) queue
    behind the steps; their answers are read after the steps', which are kept for end_step.
    A step carries its own inputs (the water, the faults that change), so a queued step does
    not depend on anything sent after it.

    `serve(seconds)` runs the simulation's network while it waits for the worker, so the
    leaders and the site read what the worker's boards send meanwhile."""

    def __init__(self, specs: list[BoardSpec], settings: FarmSettings,
                 serve: Callable[[float], None]):
        self.serve = serve
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.sim.board_worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()])
        theirs.close()
        self.conn = Connection(ours.detach())
        self._steps_unanswered = 0
        self._step_answers: collections.deque = collections.deque()
        self.conn.send((specs, settings))
        self._answer()  # built

    def _ask(self, *command):
        self.conn.send(command)
        while self._steps_unanswered:  # the queued steps answer first
            self._step_answers.append(self._answer())
            self._steps_unanswered -= 1
        return self._answer()

    def _answer(self):
        try:
            while not self.conn.poll(0):
                if self.process.poll() is not None:
                    raise EOFError
                self.serve(0.0005)
            answer = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the simulator's board worker (pid {self.process.pid}) exited "
                               f"with code {self.process.wait()}; its boards stopped") from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def begin_step(self, dt_s: float, water: Water, faults: tuple[FaultChange, ...] = ()
                   ) -> None:
        self.conn.send(("step", dt_s, water, faults))
        self._steps_unanswered += 1

    def end_step(self) -> tuple[dict[str, BoardState], list[BoardEvent]]:
        """The oldest step's answer."""
        if self._step_answers:
            return self._step_answers.popleft()
        self._steps_unanswered -= 1
        return self._answer()

    def states(self) -> dict[str, BoardState]:
        return self._ask("states")

    def connected(self) -> bool:
        return self._ask("connected")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._ask("close")  # a run that ended early: its steps answer first
            except (EOFError, OSError, RuntimeError):
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


def serve_worker(conn: Connection) -> None:
    """A worker process: build the boards, then step them as the simulation says."""
    specs, settings = conn.recv()
    if settings.log_file:
        logging.basicConfig(filename=settings.log_file, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s [boards worker]: "
                                   "%(message)s")
    clock = SimClock(settings.clock_start_s)
    network = NetworkLoop(threaded=False)
    try:
        farm = LocalFarm(specs, settings, clock, network)
    except Exception as error:
        conn.send(error)
        return
    gc.collect()
    gc.freeze()  # the boards live as long as the process: keep them out of every collection
    conn.send("built")
    while True:
        command, *args = conn.recv()
        try:
            if command == "step":
                dt_s, water, faults = args
                network.settle()
                clock.advance(dt_s)
                farm.begin_step(dt_s, water, faults)
                network.settle()
                conn.send(farm.end_step())
            elif command == "states":
                conn.send(farm.states())
            elif command == "connected":
                network.wait(0.005)
                conn.send(farm.connected())
            elif command == "close":
                farm.close()
                network.close()
                conn.send(None)
                return
        except Exception as error:
            logging.getLogger("hearth.sim").exception("board worker failed at %s", command)
            conn.send(error)
            return
