"""Site scenarios (TOML): the building's heat draw over time and what goes wrong in the plant
room - a pump stops, a leader crashes, the broker goes away, boards fail.

The format is documented in docs/scenarios.md ("Site scenarios"); the built-in ones live in
agent/sim/site_scenarios/. Checked like a config: every problem at once, each naming the
file, the key, the value and what was expected.
"""

import dataclasses
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from agent.errors import ConfigFileError, ConfigValueError
from agent.schema import Field
from agent.sim.scenario import FAULTS, TableChecker

BUILTIN_PACKAGE = "agent.sim.site_scenarios"
ACTIONS = {
    "pump_off": "module", "pump_on": "module",
    "leader_crash": "module", "leader_restart": "module",
    "broker_down": "", "broker_up": "",
    "board_fault": "board", "board_clear": "board",
}
"""Each action and what it acts on: a module, a board of a module, or the whole site."""

TOP_FIELDS = {
    "description": Field(str, "what the scenario shows, for people"),
    "duration_s": Field(float, "how long the scenario runs, simulated seconds",
                        min=60.0, max=7 * 86400.0),
}
BUILDING_FIELDS = {
    "target_c": Field(float, "tank temperature the site role aims for", default=45.0,
                      min=20.0, max=60.0),
    "start_c": Field(float, "tank temperature at the start", default=40.0, min=5.0, max=60.0),
    "tank_litres_per_board": Field(float, "tank size, scaled with the site so every size "
                                   "shows the same dynamics", default=0.6, min=0.05, max=50.0),
    "load": Field(list, "the building's heat draw: [time_s, fraction of the site's nominal "
                  "power] points, linear between them, held after the last",
                  default=[[0.0, 0.6]]),
}
EVENT_FIELDS = {
    "time_s": Field(float, "when it happens, seconds from the start", min=0.0),
    "action": Field(str, "what happens", choices=tuple(ACTIONS)),
    "module": Field(str, "the module it happens to, like 'm1'", default="",
                    pattern=r"(m\d+)?"),
    "board": Field(str, "the board it happens to, like 'b03'", default="", pattern=r"(b\d+)?"),
    "fault": Field(str, "board_fault / board_clear: which fault", default="",
                   choices=("",) + FAULTS),
}


@dataclasses.dataclass(frozen=True)
class Action:
    time_s: float
    action: str
    module: str = ""
    board: str = ""
    fault: str = ""

    def describe(self) -> str:
        where = "/".join(part for part in (self.module, self.board) if part)
        fault = f" {self.fault}" if self.fault else ""
        return f"{self.action.replace('_', ' ')}{fault}" + (f" at {where}" if where else "")


@dataclasses.dataclass(frozen=True)
class Building:
    target_c: float
    start_c: float
    tank_litres_per_board: float
    load: tuple[tuple[float, float], ...]

    def load_fraction(self, elapsed_s: float) -> float:
        points = self.load
        if elapsed_s <= points[0][0]:
            return points[0][1]
        for (t0, f0), (t1, f1) in zip(points, points[1:]):
            if elapsed_s <= t1:
                return f0 + (f1 - f0) * (elapsed_s - t0) / (t1 - t0)
        return points[-1][1]


@dataclasses.dataclass(frozen=True)
class SiteScenario:
    name: str
    description: str
    duration_s: float
    building: Building
    actions: tuple[Action, ...]


def _load_points(check: TableChecker, value: Any) -> tuple[tuple[float, float], ...]:
    where = f"{check.file}: building.load"
    points = []
    for index, point in enumerate(value if isinstance(value, list) else [], 1):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in point) or not 0.0 <= point[1] <= 1.5 or point[0] < 0):
            check.problems.append(f"{where}[{index}] = {point!r}: expected [time_s, fraction] "
                                  "with time_s >= 0 and a fraction from 0 to 1.5")
            continue
        points.append((float(point[0]), float(point[1])))
    if not points and not check.problems:
        check.problems.append(f"{where} = {value!r}: expected at least one [time_s, fraction]")
    if any(b[0] <= a[0] for a, b in zip(points, points[1:])):
        check.problems.append(f"{where}: times must rise from point to point")
    return tuple(points)


def parse_site_scenario(text: str, file: str, name: str) -> SiteScenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(f"{file}: not valid TOML: {error}") from None
    check = TableChecker(file)
    top = check.table({k: v for k, v in data.items() if k not in ("building", "at")},
                      TOP_FIELDS, "")
    building = check.table(data.get("building", {}), BUILDING_FIELDS, "building.")
    points = _load_points(check, building.get("load", BUILDING_FIELDS["load"].default))
    actions = []
    for index, raw in enumerate(data.get("at", []), 1):
        where = f"at[{index}]."
        values = check.table(raw, EVENT_FIELDS, where)
        if len(values) != len(EVENT_FIELDS):
            continue
        action = Action(**values)
        needs = ACTIONS[action.action]
        if needs in ("module", "board") and not action.module:
            check.problems.append(f"{file}: {where}module is missing: {action.action} needs "
                                  "a module, like 'm1'")
        if needs == "board" and not action.board:
            check.problems.append(f"{file}: {where}board is missing: {action.action} needs "
                                  "a board, like 'b03'")
        if action.action in ("board_fault", "board_clear") and not action.fault:
            check.problems.append(f"{file}: {where}fault is missing: expected one of "
                                  + ", ".join(FAULTS))
        actions.append(action)
    if check.problems:
        raise ConfigValueError(f"{len(check.problems)} problem(s) in the site scenario:\n  "
                               + "\n  ".join(check.problems), problems=check.problems)
    return SiteScenario(name, top["description"], top["duration_s"],
                        Building(building["target_c"], building["start_c"],
                                 building["tank_litres_per_board"], points),
                        tuple(sorted(actions, key=lambda a: a.time_s)))


def builtin_site_scenarios() -> list[str]:
    folder = importlib.resources.files(BUILTIN_PACKAGE)
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir()
                  if entry.name.endswith(".toml"))


def load_site_scenario(name_or_path: str) -> SiteScenario:
    """A built-in site scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            return parse_site_scenario(path.read_text(), str(path), path.stem)
        except OSError as error:
            raise ConfigFileError(f"{path}: cannot read the scenario: {error.strerror}") from None
    names = builtin_site_scenarios()
    if name_or_path not in names:
        raise ConfigValueError(f"no built-in site scenario {name_or_path!r}; the built-in "
                               f"ones are {', '.join(names)}, or give a .toml file")
    entry = importlib.resources.files(BUILTIN_PACKAGE) / f"{name_or_path}.toml"
    return parse_site_scenario(entry.read_text(), f"site_scenarios/{name_or_path}.toml",
                               name_or_path)
