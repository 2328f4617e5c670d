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
from agent.control.autotune import (
    DEFAULT_RULES, GAINS_FILE, GAINS_VERSION, RULES, RelayController, RelayPlan, loop_record)
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.seam import Hardware
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.scratch import scratch_directory

SOC_ABORT_MARGIN_C = 2.0
"""The relay test stops this far below soc_critical_c: it must never be the cause of a SAFE."""

DEFAULT_PLANS = {
    "power": RelayPlan("power", bias_w=4.5, amplitude_w=0.5, hysteresis=0.05, hold_s=5.0,
                       settle_cycles=3, measure_cycles=6, max_duration_s=60.0),
    "soc": RelayPlan("soc", bias_w=4.5, amplitude_w=1.0, hysteresis=0.3, hold_s=60.0,
                     settle_cycles=2, measure_cycles=4, max_duration_s=900.0),
}


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


class TuneOutcome:
    """One loop's test: the relay result or why it stopped, and what it saw."""

    def __init__(self, plan: RelayPlan, relay: RelayController, duration_s: float):
        self.plan = plan
        self.loop = plan.loop
        self.result = relay.relay.result() if relay.abort_reason is None else None
        self.abort_reason = relay.abort_reason
        self.duration_s = duration_s
        self.max_soc_c = relay.max_soc_c


def tune_loop(agent: BoardAgent, plan: RelayPlan, advance: Callable[[], None],
              soc_critical_c: float, power_min_w: float, power_max_w: float) -> TuneOutcome:
    """Run one relay test to the end, then leave the board at its lowest setting.

    `advance` lets one control period pass: a sleep to the next deadline on a board, a step
    of the simulated plant and clock in the simulator.
    """
    relay = RelayController(plan, power_min_w, power_max_w, soc_critical_c - SOC_ABORT_MARGIN_C)
    started_s = agent.clock()
    try:
        with agent.override_controller(relay):
            while not relay.finished:
                advance()
                report = agent.tick()
                if report.selected == "safe" and relay.relay is not None:
                    relay.abort(f"the safety supervisor put the board in {report.mode} during "
                                "the relay test; see its event, fix the cause, then tune again")
                relay.watch(agent.clock(), report.soc_c)
    finally:
        agent.governor.safe(freeze_workload=False)
    return TuneOutcome(plan, relay, agent.clock() - started_s)


def describe(outcome: TuneOutcome, rule_name: str) -> str:
    if outcome.result is None:
        return (f"{outcome.loop} loop: tune aborted after {outcome.duration_s:.1f} s: "
                f"{outcome.abort_reason}. The board is at its lowest setting; no gains stored "
                "for this loop.")
    result = outcome.result
    kp, ki, kd = result.gains(rule_name)
    unit = "W" if outcome.loop == "power" else "°C"
    return (f"{outcome.loop} loop: Ku = {result.ku:.3f} W/{unit}, Tu = {result.tu_s:.2f} s "
            f"(relay {outcome.plan.bias_w:g} ± {outcome.plan.amplitude_w:g} W, oscillation "
            f"± {result.amplitude:.3f} {unit} over {result.cycles} cycles, "
            f"{outcome.duration_s:.0f} s); rule {rule_name}: kp = {kp:.4g}, ki = {ki:.4g}, "
            f"kd = {kd:.4g}")


def store_outcomes(store: StateStore, outcomes: list[TuneOutcome],
                   rules: dict[str, str]) -> tuple[Path | None, str | None]:
    """Merge the successful loops into gains.json (one atomic write); returns its path (None if
    nothing was tuned) and the problem with the previous file, if any."""
    tuned = [o for o in outcomes if o.result is not None]
    if not tuned:
        return None, None
    previous = store.read(GAINS_FILE, GAINS_VERSION, {})
    payload = dict(previous.payload)
    for outcome in tuned:
        payload[outcome.loop] = loop_record(outcome.result, rules[outcome.loop], outcome.plan)
    return store.write(GAINS_FILE, GAINS_VERSION, payload), previous.problem


def run(args: argparse.Namespace) -> int:
    loops = ["power", "soc"] if args.loop == "both" else [args.loop]
    plans = [_plan(DEFAULT_PLANS[loop], args) for loop in loops]
    rules = {"power": args.power_rule, "soc": args.soc_rule}
    if args.sim:
        with scratch_directory("hearth-tune-sim-") as directory:
            clock = SimClock()
            simulated = SimulatedAgent(Path(directory), clock)

            def advance() -> None:
                clock.advance(simulated.agent.period_s)
                simulated.board.step(simulated.agent.period_s)

            outcomes = _tune(simulated.agent, load_config(simulated.config_path), plans,
                             advance)
    else:
        config = load_config(args.config)
        agent = BoardAgent(config, Hardware())

        def advance() -> None:
            deadline = agent.timer.advance(agent.clock())
            time.sleep(max(0.0, deadline - agent.clock()))

        outcomes = _tune(agent, config, plans, advance)
    for outcome in outcomes:
        print(describe(outcome, rules[outcome.loop]), flush=True)
    path, problem = store_outcomes(StateStore(args.state_dir), outcomes, rules)
    if problem is not None and "missing" not in problem:
        print(f"warning: previous {problem}; it was replaced", file=sys.stderr)
    if path is not None:
        print(f"gains stored in {path}; restart the agent to use them", flush=True)
    return 0 if all(o.result is not None for o in outcomes) else 1


def _tune(agent: BoardAgent, config, plans: list[RelayPlan],
          advance: Callable[[], None]) -> list[TuneOutcome]:
    """Tune each planned loop in turn; after an abort the rest are not tried."""
    limits = config.limits
    outcomes: list[TuneOutcome] = []
    try:
        for plan in plans:
            outcomes.append(tune_loop(agent, plan, advance, limits.soc_critical_c,
                                      limits.power_min_w, limits.power_max_w))
            if outcomes[-1].result is None:
                break
    finally:
        agent.close()
    return outcomes


def _plan(plan: RelayPlan, args: argparse.Namespace) -> RelayPlan:
    if args.bias_w is not None:
        plan = dataclasses.replace(plan, bias_w=args.bias_w)
    if args.amplitude_w is not None:
        plan = dataclasses.replace(plan, amplitude_w=args.amplitude_w)
    return plan
