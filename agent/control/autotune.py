"""Relay autotune (Åström–Hägglund, as Klipper's PID_CALIBRATE) for the power and SoC loops.

Why a relay: it makes the loop oscillate at (close to) its critical frequency with a bounded,
known excitation, on the real plant, with no model. A relay of half-amplitude d around a bias
drives the measurement into a limit cycle of half-amplitude a and period Tu; the describing
function of the relay gives the ultimate gain Ku = 4d / (πa), and a tuning rule turns Ku, Tu
into PID gains. Like Klipper, the amplitude a is half the measured peak-to-peak and the relay's
hysteresis band (there only to keep noise from chattering the relay) is left out of Ku.

Everything here is a control law or plain arithmetic: no I/O, no clock, no logging. `time` is
passed in; agent.control.autotune_run runs it through a board agent, for `hearth tune` and
the console's `tune` alike.
"""

import dataclasses
import math
import statistics
import types
from typing import Any

from agent.control.controller import Decision, HeatController, LimitGains, PowerGains

GAINS_FILE = "gains.json"
GAINS_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TuningRule:
    """PID gains as fractions of Ku and Tu: Kp = kp·Ku, Ti = ti·Tu, Td = td·Tu (0: none)."""

    kp: float
    ti: float
    td: float
    why: str


RULES = types.MappingProxyType({
    "zn-pid": TuningRule(0.6, 0.5, 0.125, "Ziegler–Nichols classic PID (Klipper's rule): fast, "
                         "quarter-amplitude decay, overshoots"),
    "zn-pi": TuningRule(0.45, 1 / 1.2, 0.0, "Ziegler–Nichols PI: no derivative, for loops "
                        "dominated by dead time or measured through noise"),
    "tyreus-luyben-pi": TuningRule(1 / 3.2, 2.2, 0.0, "Tyreus–Luyben PI: much more damped "
                                   "than Ziegler–Nichols, slower"),
    "no-overshoot": TuningRule(0.2, 0.5, 1 / 3, "Ziegler–Nichols 'no overshoot' PID: for a "
                               "limit that must not be crossed"),
})
DEFAULT_RULES = types.MappingProxyType({"power": "zn-pi", "soc": "no-overshoot"})
"""The power loop's plant is one period of dead time (the governor's settings act on the next
sample) seen through dithering, so derivative action only amplifies dither: PI. The SoC loop
is a limit that must not be exceeded, so the rule that aims for no overshoot."""


@dataclasses.dataclass(frozen=True)
class RelayResult:
    """What the oscillation showed, averaged over the measured cycles."""

    ku: float
    tu_s: float
    amplitude: float
    cycles: int
    period_spread: float
    amplitude_spread: float
    """(max - min) / mean of the cycles' periods and amplitudes: small means a steady cycle."""

    def gains(self, rule_name: str) -> tuple[float, float, float]:
        """(kp, ki, kd) in the loop's units, from Ku and Tu by the named rule."""
        rule = RULES[rule_name]
        kp = rule.kp * self.ku
        ki = kp / (rule.ti * self.tu_s)
        kd = kp * rule.td * self.tu_s
        return kp, ki, kd


class RelayAutotune:
    """The relay: output bias ± amplitude, switching when the measurement leaves the band
    target ± hysteresis, and the record of each half cycle's extreme.

    Measured below the band means "too little" for both loops here (power below its target,
    SoC cooler than its target), so the output goes high then.
    """

    def __init__(self, target: float, bias: float, amplitude: float, hysteresis: float,
                 settle_cycles: int, measure_cycles: int, max_spread: float = 0.15):
        if amplitude <= 0 or hysteresis < 0:
            raise ValueError(f"relay amplitude ({amplitude}) must be > 0 and hysteresis "
                             f"({hysteresis}) >= 0")
        self.target = target
        self.bias = bias
        self.amplitude = amplitude
        self.hysteresis = hysteresis
        self.settle_cycles = settle_cycles
        self.measure_cycles = measure_cycles
        self.max_spread = max_spread
        self.high = True
        self.rising_switches: list[float] = []
        """Times the relay switched to high: one per cycle."""
        self.peaks: list[tuple[float, float]] = []
        """(highest, lowest) measurement of each full cycle, in order."""
        self._highest = -math.inf
        self._lowest = math.inf
        self.output = bias + amplitude

    @property
    def cycles(self) -> int:
        return len(self.peaks)

    @property
    def finished(self) -> bool:
        """Enough cycles after the settling ones, and the last of them steady."""
        result = self.result()
        return (result is not None and result.period_spread <= self.max_spread
                and result.amplitude_spread <= self.max_spread)

    def update(self, now: float, measured: float) -> float:
        self._highest = max(self._highest, measured)
        self._lowest = min(self._lowest, measured)
        if self.high and measured > self.target + self.hysteresis:
            self.high = False
        elif not self.high and measured < self.target - self.hysteresis:
            self.high = True
            if self.rising_switches:
                self.peaks.append((self._highest, self._lowest))
            self.rising_switches.append(now)
            self._highest, self._lowest = measured, measured
        self.output = self.bias + (self.amplitude if self.high else -self.amplitude)
        return self.output

    def result(self) -> RelayResult | None:
        """Ku and Tu from the last `measure_cycles` cycles, once the settling ones are past."""
        if self.cycles < self.settle_cycles + self.measure_cycles:
            return None
        switches = self.rising_switches[-self.measure_cycles - 1:]
        periods = [later - earlier for earlier, later in zip(switches, switches[1:])]
        amplitudes = [(high - low) / 2 for high, low in self.peaks[-self.measure_cycles:]]
        period_s, amplitude = statistics.fmean(periods), statistics.fmean(amplitudes)
        if amplitude <= 0 or period_s <= 0:
            return None
        return RelayResult(ku=4 * self.amplitude / (math.pi * amplitude), tu_s=period_s,
                           amplitude=amplitude, cycles=len(amplitudes),
                           period_spread=(max(periods) - min(periods)) / period_s,
                           amplitude_spread=(max(amplitudes) - min(amplitudes)) / amplitude)


@dataclasses.dataclass(frozen=True)
class RelayPlan:
    """One loop's relay test: where it runs, how hard it pushes, and when it gives up."""

    loop: str
    bias_w: float
    amplitude_w: float
    hysteresis: float
    hold_s: float
    """Time at the bias first, so the measurement starts near its equilibrium."""
    settle_cycles: int
    measure_cycles: int
    max_duration_s: float
    target: float | None = None
    """The relay's target; None means the measurement at the end of the hold."""


class RelayController:
    """Stands in for the HeatController during a tune: same `update` contract, but the
    command is the relay's. It refuses to push while the supervisor's ceiling is below the
    relay's high level, and it aborts, commanding the lowest power, when the SoC comes within
    the safety margin of its critical temperature or the test runs too long."""

    def __init__(self, plan: RelayPlan, power_min_w: float, power_max_w: float,
                 soc_abort_c: float):
        low, high = plan.bias_w - plan.amplitude_w, plan.bias_w + plan.amplitude_w
        if low < power_min_w or high > power_max_w:
            raise ValueError(f"relay {low:.2f}-{high:.2f} W is outside the board's power range "
                             f"{power_min_w:.2f}-{power_max_w:.2f} W; choose a smaller "
                             "amplitude or a bias nearer the middle")
        self.plan = plan
        self.power_min_w = power_min_w
        self.soc_abort_c = soc_abort_c
        self.relay: RelayAutotune | None = None
        self.started_s: float | None = None
        self.hold_from_s: float | None = None
        self.abort_reason: str | None = None
        self.max_soc_c = -math.inf

    @property
    def finished(self) -> bool:
        return self.abort_reason is not None or (self.relay is not None and self.relay.finished)

    def update(self, now: float, setpoint_w: float, power_w: float | None,
               temperatures_c: dict[str, float | None], allowed_max_w: float) -> Decision:
        soc_c = temperatures_c.get("soc")
        if soc_c is not None:
            self.max_soc_c = max(self.max_soc_c, soc_c)
        self.watch(now, soc_c)
        if self.abort_reason is not None:
            return Decision(self.power_min_w, "tune-abort")
        measured = power_w if self.plan.loop == "power" else soc_c
        high_w = self.plan.bias_w + self.plan.amplitude_w
        if measured is None or allowed_max_w < high_w:
            self.hold_from_s = None
            return Decision(min(self.plan.bias_w, allowed_max_w), "tune-wait")
        if self.relay is None:
            if self.hold_from_s is None:
                self.hold_from_s = now
            if now - self.hold_from_s < self.plan.hold_s:
                return Decision(self.plan.bias_w, "tune-hold")
            target = self.plan.target if self.plan.target is not None else measured
            self.relay = RelayAutotune(target, self.plan.bias_w, self.plan.amplitude_w,
                                       self.plan.hysteresis, self.plan.settle_cycles,
                                       self.plan.measure_cycles)
        return Decision(self.relay.update(now, measured), "tune-relay")

    def watch(self, now: float, soc_c: float | None) -> None:
        """Abort when the SoC is within the margin of critical or the test ran too long. The
        tune driver calls this every period too, because the agent skips `update` while the
        supervisor holds the board in SAFE."""
        if self.started_s is None:
            self.started_s = now
        if soc_c is not None and soc_c >= self.soc_abort_c:
            self.abort(f"SoC reached {soc_c:.1f} °C, within the safety margin of its critical "
                       f"temperature (abort at {self.soc_abort_c:.1f} °C); let the oil cool or "
                       "lower --bias-w, then tune again")
        if now - self.started_s > self.plan.max_duration_s:
            self.abort(f"no steady oscillation within {self.plan.max_duration_s:g} s "
                       f"({self.relay.cycles if self.relay else 0} cycles seen); check that the "
                       "workload is running and the sensor reads, or raise --amplitude-w")

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason


@dataclasses.dataclass(frozen=True)
class StoredGains:
    """Gains a board starts from; None for a loop keeps the built-in defaults."""

    power: PowerGains | None = None
    soc: LimitGains | None = None


def apply_gains(controller: HeatController, gains: StoredGains) -> None:
    """Give a controller stored gains, bumplessly (PID.set_gains). The derivative filters stay
    as built: the relay measures Ku and Tu, not the sensor's noise, so it has nothing to say
    about them."""
    if gains.power is not None:
        controller.power_pid.set_gains(gains.power.kp, gains.power.ki, gains.power.kd)
    if gains.soc is not None:
        for limit in controller.limits:
            if limit.name == "soc":
                limit.pid.set_gains(gains.soc.kp, gains.soc.ki, gains.soc.kd)


def loop_record(result: RelayResult, rule_name: str, plan: RelayPlan) -> dict[str, Any]:
    """One loop's entry in gains.json: the gains and where they came from."""
    kp, ki, kd = result.gains(rule_name)
    return {"kp": kp, "ki": ki, "kd": kd, "rule": rule_name, "ku": result.ku,
            "tu_s": result.tu_s, "amplitude": result.amplitude, "relay_bias_w": plan.bias_w,
            "relay_amplitude_w": plan.amplitude_w, "cycles": result.cycles}


def gains_from_payload(payload: dict[str, Any]) -> tuple[StoredGains, str | None]:
    """StoredGains from gains.json's payload; a loop whose entry is unusable keeps the defaults
    and is named in the returned problem."""
    found: dict[str, Any] = {}
    problems = []
    for loop, gains_class in (("power", PowerGains), ("soc", LimitGains)):
        entry = payload.get(loop)
        if entry is None:
            continue
        try:
            numbers = {name: float(entry[name]) for name in ("kp", "ki", "kd")}
        except (TypeError, KeyError, ValueError):
            problems.append(f"{loop} gains unreadable ({entry!r})")
            continue
        if not all(math.isfinite(v) and v >= 0 for v in numbers.values()):
            problems.append(f"{loop} gains out of range ({numbers})")
            continue
        found[loop] = dataclasses.replace(gains_class(), **numbers)
    return StoredGains(**found), ("; ".join(problems) + "; those loops keep the built-in gains"
                                  if problems else None)


def load_gains(store) -> tuple[StoredGains, str | None]:
    """The stored gains in `store` (agent.persist.StateStore), or the defaults and why."""
    read = store.read(GAINS_FILE, GAINS_VERSION, {})
    gains, problem = gains_from_payload(read.payload)
    return gains, read.problem or problem
