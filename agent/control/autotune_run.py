"""Running the relay autotune on a board agent: the default plans, the watch kept each period,
the outcome, how it reads and how it is stored. `hearth tune` (the agent service stopped) and
the console's `tune` (the live loop) both run it, so a tune ends the same way from either.
"""

import dataclasses
from pathlib import Path
from typing import Callable

from agent.control.autotune import (
    GAINS_FILE, GAINS_VERSION, RelayController, RelayPlan, RelayResult, StoredGains,
    loop_record)
from agent.control.controller import LimitGains, PowerGains

SOC_ABORT_MARGIN_C = 2.0
"""The relay test stops this far below soc_critical_c: it must never be the cause of a SAFE."""

DEFAULT_PLANS = {
    "power": RelayPlan("power", bias_w=4.5, amplitude_w=0.5, hysteresis=0.05, hold_s=5.0,
                       settle_cycles=3, measure_cycles=6, max_duration_s=60.0),
    "soc": RelayPlan("soc", bias_w=4.5, amplitude_w=1.0, hysteresis=0.3, hold_s=60.0,
                     settle_cycles=2, measure_cycles=4, max_duration_s=900.0),
}


def relay_for(plan: RelayPlan, soc_critical_c: float, power_min_w: float,
              power_max_w: float) -> RelayController:
    """The relay for `plan` within the board's power range, aborting short of critical."""
    return RelayController(plan, power_min_w, power_max_w, soc_critical_c - SOC_ABORT_MARGIN_C)


def watch_period(relay: RelayController, now: float, report) -> None:
    """Once per period after the agent's tick (`report`, a TickReport or None): the agent skips
    the relay while the supervisor holds the board in SAFE, so the abort is decided here."""
    if report is not None and report.selected == "safe" and relay.relay is not None:
        relay.abort(f"the safety supervisor put the board in {report.mode} during the relay "
                    "test; see its event, fix the cause, then tune again")
    relay.watch(now, report.soc_c if report is not None else None)


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """One loop's test: the relay result or why it stopped, and what it saw."""

    plan: RelayPlan
    result: RelayResult | None
    """None when the test aborted."""
    abort_reason: str | None
    duration_s: float
    max_soc_c: float

    @classmethod
    def of(cls, relay: RelayController, duration_s: float) -> "TuneOutcome":
        result = relay.relay.result() if relay.abort_reason is None else None
        return cls(relay.plan, result, relay.abort_reason, duration_s, relay.max_soc_c)

    @property
    def loop(self) -> str:
        return self.plan.loop

    def stored_gains(self, rule_name: str) -> StoredGains | None:
        """The gains this outcome gives its loop by `rule_name` (None when it aborted)."""
        if self.result is None:
            return None
        kp, ki, kd = self.result.gains(rule_name)
        if self.loop == "power":
            return StoredGains(power=PowerGains(kp=kp, ki=ki, kd=kd))
        return StoredGains(soc=LimitGains(kp=kp, ki=ki, kd=kd))


def tune_loop(agent, plan: RelayPlan, advance: Callable[[], None], soc_critical_c: float,
              power_min_w: float, power_max_w: float) -> TuneOutcome:
    """Run one relay test to the end on an agent nobody else ticks, then leave the board at
    its lowest setting.

    `advance` lets one control period pass: a sleep to the next deadline on a board, a step
    of the simulated plant and clock in the simulator.
    """
    relay = relay_for(plan, soc_critical_c, power_min_w, power_max_w)
    started_s = agent.clock()
    try:
        with agent.override_controller(relay):
            while not relay.finished:
                advance()
                report = agent.tick()
                watch_period(relay, agent.clock(), report)
    finally:
        agent.governor.safe(freeze_workload=False)
    return TuneOutcome.of(relay, agent.clock() - started_s)


def tune_loops(agent, limits, plans: list[RelayPlan],
               advance: Callable[[], None]) -> list[TuneOutcome]:
    """Tune each planned loop in turn (`limits`: the config's [limits]); after an abort the
    rest are not tried."""
    outcomes: list[TuneOutcome] = []
    for plan in plans:
        outcomes.append(tune_loop(agent, plan, advance, limits.soc_critical_c,
                                  limits.power_min_w, limits.power_max_w))
        if outcomes[-1].result is None:
            break
    return outcomes


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


def store_outcomes(store, outcomes: list[TuneOutcome],
                   rules) -> tuple[Path | None, str | None]:
    """Merge the successful loops into gains.json in `store` (agent.persist.StateStore), one
    atomic write; returns its path (None if nothing was tuned) and the problem with the
    previous file, if any."""
    tuned = [o for o in outcomes if o.result is not None]
    if not tuned:
        return None, None
    previous = store.read(GAINS_FILE, GAINS_VERSION, {})
    payload = dict(previous.payload)
    for outcome in tuned:
        payload[outcome.loop] = loop_record(outcome.result, rules[outcome.loop], outcome.plan)
    return store.write(GAINS_FILE, GAINS_VERSION, payload), previous.problem
