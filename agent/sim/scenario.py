"""Scenario timelines (TOML): what the building, the workload and the faults do over time.

Used by tests, benchmarks and `hearth sim`; the format is documented in docs/scenarios.md.
A scenario is checked like a config: every problem at once, each naming the file, the key,
the value and what was expected.
"""

import dataclasses
import importlib.resources
import random
from pathlib import Path

from agent.errors import ConfigFileError, ConfigValueError
from agent.schema import Field
from agent.tables import ABSENT, TableCheck

QUANTITIES = {
    "setpoint_w": Field(float, "board power setpoint", min=0.0, max=20.0),
    "workload_utilisation": Field(float, "fraction of all cores the paid work wants",
                                  min=0.0, max=1.0),
    "inlet_c": Field(float, "water temperature into the heat exchanger", min=0.0, max=95.0),
    "flow_l_per_min": Field(float, "water flow through the heat exchanger", min=0.0, max=50.0),
}
FAULTS = ("pump_off", "flow_meter_dead", "under_voltage", "ina_lost_calibration",
          "w1_absent:water_in", "w1_absent:water_out", "w1_crc:water_in", "w1_crc:water_out",
          "w1_power_on:water_in", "w1_power_on:water_out", "stuck:soc", "stuck:oil",
          "stuck:board_power", "i2c_nack:board_power", "i2c_nack:oil",
          "i2c_timeout:board_power", "i2c_timeout:oil")
TOP_FIELDS = {
    "description": Field(str, "what the scenario shows, for people"),
    "duration_s": Field(float, "how long the scenario runs, simulated seconds",
                        min=1.0, max=7 * 86400.0),
}
EVENT_FIELDS = {
    "time_s": Field(float, "when the event happens, seconds from the start", min=0.0),
    "ramp_s": Field(float, "reach the new values linearly over this long", default=0.0,
                    min=0.0),
    "fault": Field(str, "a fault to inject", default="", choices=("",) + FAULTS),
    "clear": Field(str, "a fault to clear", default="", choices=("",) + FAULTS),
    **{name: dataclasses.replace(field, default=None) for name, field in QUANTITIES.items()},
}
RANDOM_FIELDS = {
    "every_s": Field(float, "how often the utilisation changes", min=0.1),
    "low": Field(float, "lowest utilisation", min=0.0, max=1.0),
    "high": Field(float, "highest utilisation", min=0.0, max=1.0),
    "seed": Field(int, "random seed, so runs repeat", default=1),
}


@dataclasses.dataclass(frozen=True)
class RandomWorkload:
    every_s: float
    low: float
    high: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Event:
    time_s: float
    ramp_s: float = 0.0
    values: dict = dataclasses.field(default_factory=dict)
    fault: str = ""
    clear: str = ""
    random_workload: RandomWorkload | None = None


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    start: dict
    events: tuple[Event, ...]


def parse_scenario(text: str, file: str, name: str) -> Scenario:
    check = TableCheck()
    data = check.parse_toml(text, file)
    if data is None:
        check.raise_problems("the scenario")
    top = check.fields(data, TOP_FIELDS, file, "", "a scenario", other_keys=("start", "at"))
    start_table = check.table(data.get("start", {}), file, "start") or {}
    start = check.fields(start_table, {k: dataclasses.replace(f, default=None)
                                       for k, f in QUANTITIES.items()}, file, "start.", "[start]")
    events = []
    for path, raw in check.tables(data.get("at", ABSENT), file, "at"):
        before = len(check.problems)
        values = check.fields(raw, EVENT_FIELDS, file, f"{path}.", "[[at]]",
                              other_keys=("workload_random",))
        random_workload = None
        if "workload_random" in raw:
            random_table = check.table(raw["workload_random"], file, f"{path}.workload_random")
            if random_table is not None:
                settings = check.fields(random_table, RANDOM_FIELDS, file,
                                        f"{path}.workload_random.", "[at.workload_random]")
                if None not in settings.values():
                    random_workload = RandomWorkload(**settings)
        if len(check.problems) == before:
            events.append(Event(values["time_s"], values["ramp_s"],
                                {k: values[k] for k in QUANTITIES if values[k] is not None},
                                values["fault"], values["clear"], random_workload))
    check.raise_problems("the scenario")
    return Scenario(name, top["description"], top["duration_s"],
                    {k: v for k, v in start.items() if v is not None},
                    tuple(sorted(events, key=lambda e: e.time_s)))


def builtin_names() -> list[str]:
    folder = importlib.resources.files("agent.sim.scenarios")
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir()
                  if entry.name.endswith(".toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            return parse_scenario(path.read_text(), str(path), path.stem)
        except OSError as error:
            raise ConfigFileError(f"{path}: cannot read the scenario: {error.strerror}") from None
    if name_or_path not in builtin_names():
        raise ConfigValueError(f"no built-in scenario {name_or_path!r}; the built-in ones are "
                               f"{', '.join(builtin_names())}, or give a .toml file")
    entry = importlib.resources.files("agent.sim.scenarios") / f"{name_or_path}.toml"
    return parse_scenario(entry.read_text(), f"scenarios/{name_or_path}.toml", name_or_path)


class ScenarioPlayer:
    """Plays a scenario onto one simulated board and its agent as simulated time passes."""

    def __init__(self, scenario: Scenario, board, agent):
        self.scenario = scenario
        self.board = board
        self.agent = agent
        self._pending = list(scenario.events)
        self._ramps: dict[str, tuple[float, float, float, float]] = {}
        self._random: RandomWorkload | None = None
        self._rng = random.Random()
        self._next_random_s = 0.0
        for quantity, value in scenario.start.items():
            self._set(quantity, value)

    def apply(self, elapsed_s: float) -> list[str]:
        """Bring the world to `elapsed_s`; returns descriptions of events that fired.

        The scenario stands in for the module leader: its setpoints are the leader's, and it
        keeps the link alive."""
        self.agent.setpoints.contact(self.agent.clock())
        fired = []
        while self._pending and self._pending[0].time_s <= elapsed_s:
            event = self._pending.pop(0)
            fired.append(self._fire(event, elapsed_s))
        for quantity, (t0, v0, t1, v1) in list(self._ramps.items()):
            fraction = 1.0 if elapsed_s >= t1 else (elapsed_s - t0) / (t1 - t0)
            self._set(quantity, v0 + (v1 - v0) * fraction)
            if fraction >= 1.0:
                del self._ramps[quantity]
        if self._random is not None and elapsed_s >= self._next_random_s:
            self._next_random_s = elapsed_s + self._random.every_s
            self._set("workload_utilisation",
                      self._rng.uniform(self._random.low, self._random.high))
        return fired

    def _fire(self, event: Event, now_s: float) -> str:
        parts = []
        for quantity, value in event.values.items():
            if quantity == "workload_utilisation":
                self._random = None
            if event.ramp_s > 0:
                self._ramps[quantity] = (now_s, self._get(quantity), now_s + event.ramp_s, value)
            else:
                self._ramps.pop(quantity, None)
                self._set(quantity, value)
            parts.append(f"{quantity}={value:g}")
        if event.random_workload is not None:
            self._random = event.random_workload
            self._rng = random.Random(event.random_workload.seed)
            self._next_random_s = now_s
            parts.append("workload random")
        if event.fault:
            inject_fault(self.board, event.fault, True)
            parts.append(f"fault {event.fault}")
        if event.clear:
            inject_fault(self.board, event.clear, False)
            parts.append(f"cleared {event.clear}")
        return f"t={event.time_s:g}s " + ", ".join(parts)

    def _get(self, quantity: str) -> float:
        plant = self.board.plant
        return {"setpoint_w": lambda: self.agent.setpoint_w,
                "workload_utilisation": lambda: plant.demand.workload_utilisation,
                "inlet_c": lambda: plant.water_inlet_c,
                "flow_l_per_min": lambda: plant.water_flow_l_per_min}[quantity]()

    def _set(self, quantity: str, value: float) -> None:
        plant = self.board.plant
        if quantity == "setpoint_w":
            self.agent.set_setpoint(value, "leader")
        elif quantity == "workload_utilisation":
            plant.demand.workload_utilisation = value
        elif quantity == "inlet_c":
            plant.water_inlet_c = value
        elif quantity == "flow_l_per_min":
            plant.water_flow_l_per_min = value


def inject_fault(board, name: str, active: bool) -> None:
    """Inject (or clear) one of FAULTS on a SimulatedBoard."""
    faults = board.faults
    kind, _, target = name.partition(":")
    chips = {"board_power": board.ina219, "oil": board.tmp117}
    if kind == "pump_off":
        board.plant.water_flow_l_per_min = 0.0 if active else board.params.water_flow_l_per_min
    elif kind == "flow_meter_dead":
        faults.flow_meter_dead = active
    elif kind == "under_voltage":
        board.plant.under_voltage = active
    elif kind == "ina_lost_calibration" and active:
        board.ina219.lose_calibration()
    elif kind in ("w1_absent", "w1_crc", "w1_power_on"):
        group = {"w1_absent": faults.w1_absent, "w1_crc": faults.w1_crc_error,
                 "w1_power_on": faults.w1_power_on}[kind]
        (group.add if active else group.discard)(target)
    elif kind == "stuck":
        if active:
            faults.stuck[target] = board.current_value(target)
        else:
            faults.stuck.pop(target, None)
    elif kind in ("i2c_nack", "i2c_timeout"):
        chip = chips[target]
        if not active:
            chip.clear_faults()
        elif kind == "i2c_nack":
            chip.inject_nack()
        else:
            chip.inject_timeout()
