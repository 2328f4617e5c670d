"""What `hearth sim` shows while it runs: on a terminal, a screen redrawn in place; anywhere
else (CI, a pipe, a log file), a progress line now and then and each fault as it happens.

Why two forms: a person at a terminal wants to watch the site; a log wants lines that stay
readable when nobody redraws them.
"""

import time
from typing import TextIO

from agent.sim.site import SiteSimulation

MODE_MARKS = {"NORMAL": ".", "LIMITED": "L", "SAFE": "S", "STARTING": "s", "FAILSAFE": "F"}
REDRAW_S = 0.5
LINES_EVERY = 0.1
"""Without a terminal, one progress line per tenth of the run."""


def mode_marks(modes: list[str]) -> str:
    return "".join(MODE_MARKS.get(mode, "?") for mode in modes)


class LiveView:
    def __init__(self, stream: TextIO, interactive: bool):
        self.stream = stream
        self.interactive = interactive
        self._next_redraw = 0.0
        self._next_fraction = 0.0
        self._events_shown = 0

    def __call__(self, sim: SiteSimulation) -> None:
        elapsed_s = sim.elapsed_s()
        if self.interactive:
            if time.monotonic() >= self._next_redraw:
                self._next_redraw = time.monotonic() + REDRAW_S
                self.stream.write("\x1b[H\x1b[J" + self.screen(sim))
                self.stream.flush()
            return
        for event in sim.recording.events[self._events_shown:]:
            if event["source"] == "scenario":
                self.stream.write(f"  t={event['t_s'] / 60:6.1f} min  {event['text']}\n")
        self._events_shown = len(sim.recording.events)
        if elapsed_s / sim.scenario.duration_s >= self._next_fraction:
            self._next_fraction += LINES_EVERY
            self.stream.write(self.progress_line(sim) + "\n")
        self.stream.flush()

    def progress_line(self, sim: SiteSimulation) -> str:
        site = sim.recording.site
        fraction = sim.elapsed_s() / sim.scenario.duration_s
        bar = "#" * int(20 * fraction) + "." * (20 - int(20 * fraction))
        modes = [board.mode for board in sim.boards.values()]
        safe = sum(mode == "SAFE" for mode in modes)
        return (f"  [{bar}] {sim.elapsed_s() / 3600:5.2f} h  demand {_w(site['demand_w'][-1])}"
                f"  heat {_w(site['heat_w'][-1])}  tank {site['tank_c'][-1]:5.1f} C"
                f"  boards SAFE {safe}/{len(modes)}")

    def screen(self, sim: SiteSimulation) -> str:
        site = sim.recording.site
        lines = [f"hearth sim  {sim.scenario.name}: {sim.scenario.description}"[:100], "",
                 self.progress_line(sim), "",
                 f"  site   demand {_w(site['demand_w'][-1])}  heat to water "
                 f"{_w(site['heat_w'][-1])}  electric {_w(site['electric_w'][-1])}  building "
                 f"{_w(site['load_w'][-1])}",
                 f"         tank {site['tank_c'][-1]:5.1f} C (target {site['target_c'][-1]:.1f} C)",
                 "", "  module  leader   budget     power   oil C  flow L/min  boards "
                 "(. normal  L limited  S safe  s starting)"]
        for name, module in sim.modules.items():
            series = sim.recording.modules[name]
            leader = "up" if module.leader is not None else "DOWN"
            if series["interlock"][-1]:
                leader += " INTERLOCK"
            lines.append(f"  {name:<6}  {leader:<7} {_w(series['budget_w'][-1])} "
                         f"{_w(series['power_w'][-1])}  {series['oil_c'][-1]:6.1f}  "
                         f"{series['flow_l_per_min'][-1]:10.1f}  "
                         f"{mode_marks([b.mode for b in module.boards])}")
        lines += ["", "  recent events:"]
        for event in sim.recording.events[-8:]:
            lines.append(f"    t={event['t_s'] / 60:6.1f} min  {event['source']:<9} "
                         f"{event['text']}"[:110])
        return "\n".join(lines) + "\n"


def _w(value: float | None) -> str:
    return "     - W" if value is None else f"{value:6.1f} W"
