"""A board agent on a simulated board, set up the way a real board is: a config file on disk
(the oil carrier's definition plus this board's 1-wire ids) and the hardware seam."""

from pathlib import Path
from typing import Callable

from agent.board_agent import BoardAgent
from agent.config import BoardConfig, load_config
from agent.safety.events import EventLog
from agent.sim.board import SimulatedBoard
from agent.sim.clock import SimClock
from agent.sim.params import BoardParams


class SimulatedAgent:
    """A SimulatedBoard and the BoardAgent that runs it, stepped together on one clock.

    The poweroff command and workload signals are recorded, not run, and events stay in
    the agent's RAM ring unless an EventLog with a journal is passed in. `agent_arguments`,
    given the board's config, returns more of BoardAgent's arguments: a plug-in controller
    tuned to the board's limits."""

    def __init__(self, directory: Path, clock: SimClock, seed: int = 0,
                 params: BoardParams = BoardParams(), extra_config: str = "",
                 agent_arguments: Callable[[BoardConfig], dict] = lambda config: {},
                 **agent_kwargs):
        directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.board = SimulatedBoard(directory / "root", clock, params, seed=seed)
        self.config_path = directory / "hearth.toml"
        self.config_path.write_text(
            'board_type = "oil-carrier"\n' + extra_config + self.board.sensor_config())
        self.poweroff_commands: list[list[str]] = []
        self.signals_sent: list[tuple[int, int]] = []
        agent_kwargs.setdefault("events", EventLog(journal=None))
        config = load_config(self.config_path)
        self.agent = BoardAgent(config, self.board.hardware, **agent_arguments(config),
                                run_command=self.poweroff_commands.append,
                                send_signal=lambda pid, signum: self.signals_sent.append(
                                    (pid, signum)), **agent_kwargs)

    def step(self):
        """One control period: time passes, the plant moves, the agent ticks; its report."""
        period_s = self.agent.period_s
        self.clock.advance(period_s)
        self.board.step(period_s)
        return self.agent.tick()

    def run_for(self, seconds: float, on_tick=None) -> None:
        """Advance the plant and the agent together, one control period at a time."""
        for _ in range(round(seconds / self.agent.period_s)):
            report = self.step()
            if on_tick is not None:
                on_tick(report)

    def run_realtime(self, wall_clock, sleep, should_stop) -> None:
        """Step the simulation in real time, one period per deadline, until should_stop()."""
        period_s = self.agent.period_s
        next_deadline = wall_clock()
        while not should_stop():
            self.step()
            next_deadline += period_s
            sleep(max(0.0, next_deadline - wall_clock()))
