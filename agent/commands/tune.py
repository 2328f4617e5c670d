"""`hearth tune`: relay autotune of the power and SoC loops, gains stored atomically.

The relay runs through the board agent's own tick (sample, supervise, govern), with the relay
in place of the heat controller, so the test sees exactly the plant the PIDs will control:
the governor's dithering and learned model, the real sensors, and the supervisor's ceiling.
Run it with the agent service stopped: two processes must not drive the same actuators.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

from agent.board_agent import BoardAgent
from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.control.autotune import DEFAULT_RULES, RULES, RelayPlan
from agent.control.autotune_run import (
    DEFAULT_PLANS, SOC_ABORT_MARGIN_C, TuneOutcome, describe, store_outcomes, tune_loops)
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.seam import Hardware


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="relay-autotune the power and SoC loops and store the gains",
        description="Drive the board with a relay (power bias ± amplitude) until the power or "
        "SoC temperature oscillates steadily, derive PID gains from the oscillation "
        "(Åström–Hägglund), and store them in STATE_DIR/gains.json for the agent. Stop the "
        "agent service first. Aborts at the lowest setting if the SoC comes within "
        f"{SOC_ABORT_MARGIN_C:g} °C of soc_critical_c.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config file (default {DEFAULT_CONFIG_PATH}; ignored with --sim)")
    parser.add_argument("--sim", action="store_true",
                        help="tune a simulated board, in simulated time")
    parser.add_argument("--loop", choices=("power", "soc", "both"), default="both",
                        help="which loop to tune (default both)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where gains.json is stored (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--bias-w", type=float, metavar="W",
                        help="relay centre in watts (default 4.5)")
    parser.add_argument("--amplitude-w", type=float, metavar="W",
                        help="relay half-amplitude in watts (default 0.5 power, 1.0 soc)")
    parser.add_argument("--power-rule", choices=sorted(RULES), default=DEFAULT_RULES["power"])
    parser.add_argument("--soc-rule", choices=sorted(RULES), default=DEFAULT_RULES["soc"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loops = ["power", "soc"] if args.loop == "both" else [args.loop]
    plans = [_plan(DEFAULT_PLANS[loop], args) for loop in loops]
    rules = {"power": args.power_rule, "soc": args.soc_rule}
    outcomes = _tune_simulated(plans) if args.sim else _tune_board(args.config, plans)
    for outcome in outcomes:
        print(describe(outcome, rules[outcome.loop]), flush=True)
    path, problem = store_outcomes(StateStore(args.state_dir), outcomes, rules)
    if problem is not None and "missing" not in problem:
        print(f"warning: previous {problem}; it was replaced", file=sys.stderr)
    if path is not None:
        print(f"gains stored in {path}; restart the agent to use them", flush=True)
    return 0 if all(o.result is not None for o in outcomes) else 1


def _tune_board(config_path: Path, plans: list[RelayPlan]) -> list[TuneOutcome]:
    config = load_config(config_path)
    agent = BoardAgent(config, Hardware())

    def advance() -> None:
        deadline = agent.timer.advance(agent.clock())
        time.sleep(max(0.0, deadline - agent.clock()))

    return _tune(agent, config, plans, advance)


def _tune_simulated(plans: list[RelayPlan]) -> list[TuneOutcome]:
    from agent.sim.clock import SimClock  # the simulator only when asked for
    from agent.sim.harness import SimulatedAgent
    from agent.sim.scratch import scratch_directory

    with scratch_directory("hearth-tune-sim-") as directory:
        clock = SimClock()
        simulated = SimulatedAgent(Path(directory), clock)

        def advance() -> None:
            clock.advance(simulated.agent.period_s)
            simulated.board.step(simulated.agent.period_s)

        return _tune(simulated.agent, load_config(simulated.config_path), plans, advance)


def _tune(agent: BoardAgent, config, plans: list[RelayPlan],
          advance: Callable[[], None]) -> list[TuneOutcome]:
    try:
        return tune_loops(agent, config.limits, plans, advance)
    finally:
        agent.close()


def _plan(plan: RelayPlan, args: argparse.Namespace) -> RelayPlan:
    if args.bias_w is not None:
        plan = dataclasses.replace(plan, bias_w=args.bias_w)
    if args.amplitude_w is not None:
        plan = dataclasses.replace(plan, amplitude_w=args.amplitude_w)
    return plan
