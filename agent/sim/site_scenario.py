"""Site scenarios (TOML): the building's heat draw over time and what goes wrong in the plant
room - a pump stops, a leader crashes, the broker goes away, boards fail.

The format is documented in docs/scenarios.md ("Site scenarios"); the built-in ones live in
agent/sim/site_scenarios/. Checked like a config: every problem at once, each naming the
file, the key, the value and what was expected.
"""

import dataclasses
import importlib.resources
from pathlib import Path

from agent.errors import ConfigFileError, ConfigValueError
from agent.schema import Field
from agent.sim.scenario import FAULTS
from agent.tables import ABSENT, TableCheck

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


def _load_points(check: TableCheck, file: str,
                 value: tuple | None) -> tuple[tuple[float, float], ...]:
    """The load curve's points; value is None when it was not a list (already reported)."""
    if value is None:
        return ()
    points = []
    for index, point in enumerate(value, 1):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in point) or not 0.0 <= point[1] <= 1.5 or point[0] < 0):
            check.report(file, f"building.load[{index}]", "[time_s, fraction] with time_s >= 0 "
                         "and a fraction from 0 to 1.5", value=point)
            continue
        points.append((float(point[0]), float(point[1])))
    if not value:
        check.report(file, "building.load", "at least one [time_s, fraction]", value=list(value))
    if any(b[0] <= a[0] for a, b in zip(points, points[1:])):
        check.report(file, "building.load", "times that rise from point to point",
                     value=list(value))
    return tuple(points)


def parse_site_scenario(text: str, file: str, name: str) -> SiteScenario:
    check = TableCheck()
    data = check.parse_toml(text, file)
    if data is None:
        check.raise_problems("the site scenario")
    top = check.fields(data, TOP_FIELDS, file, "", "a site scenario",
                       other_keys=("building", "at"))
    building_table = check.table(data.get("building", {}), file, "building") or {}
    building = check.fields(building_table, BUILDING_FIELDS, file, "building.", "[building]")
    points = _load_points(check, file, building["load"])
    actions = []
    for path, raw in check.tables(data.get("at", ABSENT), file, "at"):
        before = len(check.problems)
        values = check.fields(raw, EVENT_FIELDS, file, f"{path}.", "[[at]]")
        if len(check.problems) != before:
            continue
        action = Action(**values)
        needs = ACTIONS[action.action]
        if needs in ("module", "board") and not action.module:
            check.report(file, f"{path}.module", f"a module, like 'm1': {action.action} acts on "
                         "one")
        if needs == "board" and not action.board:
            check.report(file, f"{path}.board", f"a board, like 'b03': {action.action} acts on "
                         "one")
        if action.action in ("board_fault", "board_clear") and not action.fault:
            check.report(file, f"{path}.fault", "one of " + ", ".join(map(repr, FAULTS)))
        actions.append(action)
    check.raise_problems("the site scenario")
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
