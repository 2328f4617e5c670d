"""Calibrating on the live loop: the relay autotune of a control loop, the flow meter's K factor."""

import contextlib

from agent.console.spec import CommandRefused, described_source
from agent.control.autotune import DEFAULT_RULES
from agent.control.autotune_run import (
    DEFAULT_PLANS, TuneOutcome, describe, relay_for, store_outcomes, watch_period)
from agent.readings import Reading


class TuneJob:
    """A relay autotune run by the live loop: the relay stands in for the heat controller until
    it finishes or aborts; the gains are then applied bumplessly and stored."""

    def __init__(self, agent, plan, relay, now: float):
        self.plan = plan
        self.relay = relay
        self.started_s = now
        self._override = contextlib.ExitStack()
        """Holds the relay in the agent from this period until `restore()`."""
        self._override.enter_context(agent.override_controller(relay))

    def restore(self) -> None:
        self._override.close()


class FlowCalibration:
    """Counts the meter's pulses while a technician runs a known volume through it.

    The driver gives flow as pulses in a sliding window over its K factor; integrating that
    reading over time and multiplying by K gives back the pulse count (exactly for a volume
    that starts and stops inside the count, and for steady flow).
    """

    def __init__(self, reading: str, pulses_per_litre: float, now: float):
        self.reading = reading
        self.pulses_per_litre = pulses_per_litre
        self.started_s = now
        self.last_s = now
        self.litres_at_k = 0.0
        self.gap_s = 0.0

    def poll(self, now: float, reading: Reading | None) -> None:
        dt_s, self.last_s = now - self.last_s, now
        if reading is not None and reading.ok and reading.value is not None:
            self.litres_at_k += reading.value / 60.0 * dt_s
        else:
            self.gap_s += dt_s

    @property
    def pulses(self) -> float:
        return self.litres_at_k * self.pulses_per_litre


def tune(processor, args, source):
    loop = args["loop"]

    def start():
        agent = processor.agent
        if loop == "stop":
            if processor.tune is None:
                raise CommandRefused("no tune is running")
            processor.tune.relay.abort(f"stopped from {described_source(source)}")
            return None
        if processor.tune is not None:
            raise CommandRefused(f"the {processor.tune.plan.loop} loop is being tuned already; "
                                 "`tune stop` ends it")
        mode = agent.status().mode
        if mode not in ("NORMAL", "LIMITED"):
            raise CommandRefused(f"the board is in {mode}; a tune needs NORMAL or LIMITED: "
                                 "clear the cause first (`faults`)")
        limits = processor.config.limits
        plan = DEFAULT_PLANS[loop]
        relay = relay_for(plan, limits.soc_critical_c, limits.power_min_w, limits.power_max_w)
        processor.tune = TuneJob(agent, plan, relay, agent.clock())
        agent.record("console:tune", loop,
                     f"relay autotune of the {loop} loop started from {described_source(source)}"
                     f" ({plan.bias_w:g} ± {plan.amplitude_w:g} W, at most "
                     f"{plan.max_duration_s:g} s)")
        return plan

    plan = processor.in_loop(start)
    if plan is None:
        return "tune stopped; the board returns to normal control", {"loop": "stop"}
    return (f"tuning the {loop} loop: relay {plan.bias_w:g} ± {plan.amplitude_w:g} W for at "
            f"most {plan.max_duration_s:g} s; the result comes as an event (`events`), "
            "`tune stop` aborts", {"loop": loop, "max_duration_s": plan.max_duration_s})


def finish_tune(processor, state) -> None:
    """Called from poll() with the period's status: watch the relay; when it is done, put the
    controller back, apply and store the gains, and leave an event with the outcome."""
    job, agent = processor.tune, processor.agent
    watch_period(job.relay, state.time, state.last_report)
    if not job.relay.finished:
        return
    job.restore()
    processor.tune = None
    outcome = TuneOutcome.of(job.relay, state.time - job.started_s)
    rule = DEFAULT_RULES[job.plan.loop]
    message = describe(outcome, rule)
    gains = outcome.stored_gains(rule)
    if gains is not None:
        agent.apply_gains(gains)
        if processor.state_store is not None:
            try:
                path, _ = store_outcomes(processor.state_store, [outcome], DEFAULT_RULES)
                message += f"; applied now and stored in {path}"
            except OSError as error:
                message += (f"; applied now but NOT stored ({error}): they are lost at the "
                            "next restart")
        else:
            message += "; applied now (not stored: this agent has no state directory)"
    agent.record("console:tune_done", job.plan.loop, message,
                 "info" if gains is not None else "warning")


def calibrate_flow(processor, args, source):
    action = args["litres"]
    meter = next((s for s in processor.config.sensors if s.kind == "flow"), None)
    if meter is None:
        raise CommandRefused("this board has no flow meter in its config")

    def apply():
        state = processor.agent.status()
        if action == "start":
            processor.calibration = FlowCalibration(meter.name,
                                                    meter.settings["pulses_per_litre"],
                                                    state.time)
            return None
        calibration = processor.calibration
        if calibration is None:
            raise CommandRefused("no calibration is running: `calibrate flow start`, run a "
                                 "known volume through the meter, then `calibrate flow <litres>`")
        processor.calibration = None
        if action == "cancel":
            return None
        calibration.poll(state.time, state.readings.get(meter.name))
        return calibration, state.time

    outcome = processor.in_loop(apply)
    if action == "start":
        return (f"counting {meter.name} pulses: run a known volume through the meter, then type "
                "`calibrate flow <litres>`", {"started": True})
    if action == "cancel":
        return "calibration cancelled", {"cancelled": True}
    calibration, now = outcome
    pulses = calibration.pulses
    if pulses < 10:
        raise CommandRefused(f"only {pulses:.0f} pulses counted in "
                             f"{now - calibration.started_s:.0f} s: is water flowing through "
                             "the meter? Start again")
    factor = pulses / action
    configured = calibration.pulses_per_litre
    change = (factor / configured - 1.0) * 100.0
    text = (f"{pulses:.0f} pulses over {now - calibration.started_s:.0f} s for {action:g} L: "
            f"K = {factor:.1f} pulses/L (configured {configured:g}, {change:+.1f} %). To use it, "
            f"set pulses_per_litre = {factor:.1f} in the [[sensor]] table named "
            f"\"{meter.name}\" of {processor.config_path} and restart the agent")
    if calibration.gap_s > 0:
        text += (f". Warning: the meter's reading was unusable for {calibration.gap_s:.1f} s of "
                 "the count; repeat it if that was while water flowed")
    return text, {"sensor": meter.name, "pulses": pulses, "litres": action,
                  "pulses_per_litre": factor, "configured": configured,
                  "change_percent": change, "unusable_s": calibration.gap_s}
