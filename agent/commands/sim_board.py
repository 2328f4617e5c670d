"""`hearth sim-board`: simulated boards (no MQTT, no leader) playing a board scenario, with
progress and a summary; the whole site with MQTT is `hearth sim`.

Each board is a full board agent on its own simulated board (own sysfs tree, I2C bus and
GPIO pins), all in this one process on one simulated clock.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.scenario import ScenarioPlayer, builtin_names, load_scenario
from agent.sim.scratch import scratch_directory

PROGRESS_EVERY_S = 30.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sim-board", help="run simulated boards, without MQTT, through a board scenario",
        description="Run N simulated boards, each with its own agent, through a scenario; "
        "print progress and a summary a person can read at a glance.")
    parser.add_argument("--boards", type=int, default=8, metavar="N",
                        help="how many boards (default 8)")
    parser.add_argument("--scenario", default="setpoint-steps", metavar="NAME|FILE",
                        help=f"a built-in scenario ({', '.join(builtin_names())}) or a "
                        ".toml file (default setpoint-steps)")
    parser.add_argument("--speed", type=float, default=0.0, metavar="X",
                        help="times faster than real time; 0 (default) runs as fast as it can")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the summary as JSON to FILE")
    parser.set_defaults(run=run)


class BoardTally:
    """What one board did over the run, for the summary."""

    def __init__(self):
        self.requested_j = 0.0
        self.drawn_j = 0.0
        self.abs_error_ws = 0.0
        self.max_soc_c = 0.0
        self.limited_s = 0.0

    def add(self, report, period_s: float) -> None:
        power_w = report.power_w or 0.0
        self.requested_j += report.setpoint_w * period_s
        self.drawn_j += power_w * period_s
        self.abs_error_ws += abs(power_w - report.setpoint_w) * period_s
        self.max_soc_c = max(self.max_soc_c, report.soc_c or 0.0)
        if report.selected not in ("power", "range"):
            self.limited_s += period_s


def run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    clock = SimClock()
    print(f"hearth sim-board: {args.boards} boards, scenario {scenario.name!r}: "
          f"{scenario.description} ({scenario.duration_s:g} s simulated)", flush=True)
    with scratch_directory("hearth-sim-") as directory:
        boards = [SimulatedAgent(Path(directory) / f"board{i:03d}", clock, seed=i)
                  for i in range(args.boards)]
        players = [ScenarioPlayer(scenario, b.board, b.agent) for b in boards]
        tallies = [BoardTally() for _ in boards]
        period_s = boards[0].agent.period_s
        heat_start_j = [b.board.plant.energy_to_water_j for b in boards]
        start_s, wall_start = clock(), time.monotonic()
        next_progress_s = 0.0
        for step in range(round(scenario.duration_s / period_s)):
            elapsed_s = clock() - start_s
            for index, player in enumerate(players):
                for event in player.apply(elapsed_s):
                    if index == 0:
                        print(f"  event  {event}", flush=True)
            clock.advance(period_s)
            reports = []
            for sim, tally in zip(boards, tallies):
                sim.board.step(period_s)
                report = sim.agent.tick()
                tally.add(report, period_s)
                reports.append(report)
            if elapsed_s >= next_progress_s:
                next_progress_s += PROGRESS_EVERY_S
                _progress(elapsed_s, scenario.duration_s, reports)
            if args.speed > 0:
                ahead_s = (elapsed_s / args.speed) - (time.monotonic() - wall_start)
                if ahead_s > 0:
                    time.sleep(ahead_s)
        heat_j = sum(b.board.plant.energy_to_water_j - h for b, h in zip(boards, heat_start_j))
        summary = _summary(scenario, tallies, heat_j, time.monotonic() - wall_start)
        for sim in boards:
            sim.agent.close()
    _print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"summary written to {args.json}")
    return 0


def _progress(elapsed_s: float, duration_s: float, reports) -> None:
    done = int(20 * elapsed_s / duration_s)
    setpoint_w = sum(r.setpoint_w for r in reports)
    power_w = sum(r.power_w or 0.0 for r in reports)
    hottest_c = max(r.soc_c or 0.0 for r in reports)
    limited = sum(r.selected not in ("power", "range") for r in reports)
    print(f"  [{'#' * done}{'.' * (20 - done)}] t={elapsed_s:6.0f} s  setpoint {setpoint_w:6.1f} W"
          f"  drawn {power_w:6.1f} W  hottest SoC {hottest_c:5.1f} C  limited {limited}",
          flush=True)


def _summary(scenario, tallies, heat_j: float, wall_s: float) -> dict:
    requested_j = sum(t.requested_j for t in tallies)
    drawn_j = sum(t.drawn_j for t in tallies)
    return {
        "scenario": scenario.name,
        "boards": len(tallies),
        "simulated_s": scenario.duration_s,
        "wall_s": round(wall_s, 2),
        "energy_requested_wh": round(requested_j / 3600, 3),
        "energy_drawn_wh": round(drawn_j / 3600, 3),
        "heat_to_water_wh": round(heat_j / 3600, 3),
        "delivered_over_requested": round(drawn_j / requested_j, 4) if requested_j else None,
        "mean_abs_power_error_w": round(
            statistics.fmean(t.abs_error_ws / scenario.duration_s for t in tallies), 4),
        "hottest_soc_c": round(max(t.max_soc_c for t in tallies), 2),
        "seconds_temperature_limited": round(max(t.limited_s for t in tallies), 1),
    }


def _print_summary(summary: dict) -> None:
    ratio = summary["delivered_over_requested"]
    print()
    print(f"Result: {summary['boards']} boards, {summary['simulated_s']:g} s simulated in "
          f"{summary['wall_s']:g} s")
    print(f"  energy requested  {summary['energy_requested_wh']:10.2f} Wh")
    print(f"  energy drawn      {summary['energy_drawn_wh']:10.2f} Wh"
          + (f"  ({100 * ratio:.1f} % of requested)" if ratio else ""))
    print(f"  heat to water     {summary['heat_to_water_wh']:10.2f} Wh")
    print(f"  mean |P - setpoint|  {summary['mean_abs_power_error_w']:.3f} W per board")
    print(f"  hottest SoC       {summary['hottest_soc_c']:10.1f} C")
    print(f"  temperature-limited for up to {summary['seconds_temperature_limited']:g} s")
    sys.stdout.flush()
