"""The supervisor's checks, one small class per kind of danger (Klipper's verify_heater is the
model). Each looks at this period's readings and says what is wrong, how bad, and what to do;
none of them acts. The supervisor turns their findings into a mode.
"""

import collections
import dataclasses
import enum
import math

from agent.readings import Reading


POWER_SMOOTHING_S = 5.0
COOL_MARGIN_C = 10.0
"""A SoC this far below its warning threshold must warm visibly when the board heats hard."""


class Level(enum.IntEnum):
    """How bad a finding is; the worst active one sets the mode."""

    NOTICE = 0     # an event for the operator; the mode does not change
    LIMIT = 1      # LIMITED: hold the board's power below a ceiling
    SAFE = 2       # SAFE until the cause is gone, then ramp up again
    FAULT = 3      # SAFE and latched until a reset once the cause is gone
    SHUTDOWN = 4   # stop the workload and power off


@dataclasses.dataclass(frozen=True)
class Finding:
    cause: str
    level: Level
    value: float | str | None
    message: str
    max_power_w: float = math.inf


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the checks see of one period."""

    now: float
    readings: dict[str, Reading]
    command_w: float
    power_min_w: float
    power_max_w: float
    in_safe_state: bool
    interlock_reason: str = ""

    def value(self, name: str | None) -> float | None:
        reading = self.readings.get(name) if name else None
        return reading.value if reading is not None and reading.ok else None


@dataclasses.dataclass(frozen=True)
class Plausible:
    """Physical range and rate-of-change bounds of one quantity, and its noise."""

    low: float
    high: float
    max_rate_per_s: float
    noise: float
    """The most a healthy reading wanders while its quantity holds still: a sensor judged
    stuck is trusted again only once it moves further than this."""


class SensorHealth:
    """A reading must be present, valid, physically plausible and not stuck.

    Garbage is never averaged in: for a reading the loop needs (`level` SAFE), an invalid,
    stale, out-of-range or jumping value sends the board to SAFE for as long as it lasts (the
    loop cannot control what it cannot see). For an advisory reading (`level` NOTICE: the
    water temperatures, which only feed reports) it is an event and nothing more.
    """

    def __init__(self, reading: str, plausible: Plausible, stuck_s: float,
                 level: Level = Level.SAFE):
        self.level = level
        self.reading = reading
        self.cause = f"sensor:{reading}"
        self.plausible = plausible
        self.stuck_s = stuck_s
        self._last: tuple[float, float] | None = None
        self._unchanged_since: float | None = None
        self._command_span: list[float] = []
        self._stuck_at: float | None = None
        """The value a stuck judgement was made on. It holds in SAFE settings and across
        invalid readings: only a reading that leaves it by more than the noise lifts it."""

    def check(self, snapshot: Snapshot) -> list[Finding]:
        reading = snapshot.readings.get(self.reading)
        cause = self.cause
        if reading is None or not reading.ok:
            self._last = None
            why = reading.reason if reading is not None else "no reading at all"
            validity = reading.validity.value if reading is not None else "missing"
            consequence = ("The board is held SAFE until it reads again" if self.level is Level.SAFE
                           else "Reports go without it until it reads again")
            return [Finding(cause, self.level, validity,
                            f"{self.reading} is {validity}: {why}. {consequence}; check the "
                            "sensor's wiring and bus")]
        value, p = reading.value, self.plausible
        if not p.low <= value <= p.high:
            return [Finding(cause, self.level, value,
                            f"{self.reading} reads {value:g}, outside the physical range "
                            f"{p.low:g} to {p.high:g}; the sensor or its conversion is broken")]
        finding = self._rate(snapshot, value, cause) or self._stuck(snapshot, value, cause)
        self._last = (snapshot.now, value)
        return [finding] if finding else []

    def _rate(self, snapshot: Snapshot, value: float, cause: str) -> Finding | None:
        if self._last is None or snapshot.now <= self._last[0]:
            return None
        rate = abs(value - self._last[1]) / (snapshot.now - self._last[0])
        if rate <= self.plausible.max_rate_per_s:
            return None
        return Finding(cause, self.level, value,
                       f"{self.reading} jumped from {self._last[1]:g} to {value:g} "
                       f"({rate:.1f}/s, more than the {self.plausible.max_rate_per_s:g}/s "
                       "physics allows): noise or a loose connection")

    def _stuck(self, snapshot: Snapshot, value: float, cause: str) -> Finding | None:
        """The same exact value for stuck_s while the power command moved by over 1 W.
        Not judged in SAFE settings: nothing moves then, so a still reading is expected; and
        only the command's moves within the board's power range count: below its floor a
        board idles whatever the loop asks. Once judged, the judgement stays until the
        reading moves by more than its noise: SAFE settings that stop the command moving are
        no evidence that the sensor works again."""
        if self.stuck_s == math.inf:  # never judged: nothing to track
            return None
        if self._stuck_at is not None:
            if abs(value - self._stuck_at) <= self.plausible.noise:
                return self._stuck_finding(value, cause)
            self._stuck_at = None
        command_w = min(max(snapshot.command_w, snapshot.power_min_w), snapshot.power_max_w)
        if self._last is None or value != self._last[1] or snapshot.in_safe_state:
            self._unchanged_since = snapshot.now
            self._command_span = [command_w, command_w]
            return None
        span = self._command_span
        if command_w < span[0]:
            span[0] = command_w
        if command_w > span[1]:
            span[1] = command_w
        if snapshot.now - self._unchanged_since < self.stuck_s or span[1] - span[0] < 1.0:
            return None
        self._stuck_at = value
        evidence = (f"for {snapshot.now - self._unchanged_since:.0f} s while the power moved "
                    f"{span[1] - span[0]:.1f} W")
        return self._stuck_finding(value, cause, evidence)

    def _stuck_finding(self, value: float, cause: str,
                       evidence: str = "since it was judged stuck") -> Finding:
        return Finding(cause, self.level, value,
                       f"{self.reading} has read {value:g} {evidence}: the sensor is stuck. It "
                       f"is not trusted until it moves more than {self.plausible.noise:g} away "
                       f"from {self._stuck_at:g}; check the sensor and its bus")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    threshold_c: float
    level: Level
    ceiling_w: float


class TemperatureStages:
    """Warning, limit and critical stages of one temperature, each with hysteresis: a stage
    is entered at its threshold and left only below threshold - hysteresis.

    The control loop's limiter holds the temperature just under its limit, so in normal
    heavy use only the warning stage shows (LIMITED, no ceiling of its own: the limiter is
    in charge). Reaching the limit means the limiter is losing: power drops to its minimum.
    Critical latches a FAULT. A stage is left only on a trusted reading: while the reading is
    missing or suspect, the last stage holds."""

    def __init__(self, name: str, reading: str, warning_c: float, limit_c: float,
                 critical_c: float, hysteresis_c: float, power_min_w: float):
        self.name = name
        self.reading = reading
        self.stages = (Stage("critical", critical_c, Level.FAULT, power_min_w),
                       Stage("limit", limit_c, Level.LIMIT, power_min_w),
                       Stage("warning", warning_c, Level.LIMIT, math.inf))
        self.hysteresis_c = hysteresis_c
        self._active: int | None = None
        self._last_c = math.nan

    def check(self, snapshot: Snapshot) -> list[Finding]:
        value = snapshot.value(self.reading)
        if value is None:
            return [self._finding(self._active, self._last_c)] if self._active is not None else []
        self._last_c = value
        active = None
        for i, stage in enumerate(self.stages):
            if value >= stage.threshold_c:
                active = i
                break
        held = self._active
        if held is not None and value > self.stages[held].threshold_c - self.hysteresis_c:
            active = held if active is None else min(active, held)
        self._active = active
        return [self._finding(active, value)] if active is not None else []

    def _finding(self, index: int, value: float) -> Finding:
        stage = self.stages[index]
        return Finding(f"overtemp:{self.name}:{stage.name}", stage.level, value,
                       f"{self.name} at {value:.1f} C, at or above its {stage.name} threshold "
                       f"{stage.threshold_c:g} C; check the oil flow, the inlet water "
                       "temperature and the heat exchanger", stage.ceiling_w)


class ThermalRunaway:
    """Temperature that does not follow power.

    Rising at minimum power: once the SoC is above its warning threshold, it must not climb
    further while the board draws its minimum (below that, a climb is the harmless settling
    toward idle temperature after a cold start). Not rising at high power: a cool SoC that
    does not warm after the board steps up to heating hard (by at least `step_w` over the
    last window) means the reading no longer sees the heat. High power held steady is not
    judged: the SoC rightly stays put at its equilibrium then.
    """

    def __init__(self, soc_reading: str, hot_c: float, power_reading: str | None = None,
                 window_s: float = 60.0,
                 rise_c: float = 2.0, heating_rise_c: float = 1.0, step_w: float = 1.5):
        self.soc_reading = soc_reading
        self.power_reading = power_reading
        """Judged on measured power where there is one: a command the plant did not follow
        (a workload dip, a heat-fill change) is no reason to expect the SoC to warm."""
        self.hot_c = hot_c
        self.window_s = window_s
        self.rise_c = rise_c
        self.heating_rise_c = heating_rise_c
        self.step_w = step_w
        self._recent_commands: collections.deque[tuple[float, float]] = collections.deque()
        self._power_ema: tuple[float, float] | None = None
        self._hot_at_minimum: collections.deque[tuple[float, float]] = collections.deque()
        self._heating_since: tuple[float, float] | None = None

    def check(self, snapshot: Snapshot) -> list[Finding]:
        soc_c = snapshot.value(self.soc_reading)
        if soc_c is None:
            self._hot_at_minimum.clear()
            self._heating_since = None
            return []
        at_minimum = snapshot.in_safe_state or snapshot.command_w <= snapshot.power_min_w + 0.1
        measured_w = snapshot.value(self.power_reading)
        power_w = self._smoothed_power(snapshot.now,
                                       snapshot.command_w if measured_w is None else measured_w)
        heating_hard = power_w >= 0.8 * snapshot.power_max_w
        commands = self._recent_commands
        commands.append((snapshot.now, power_w))
        while commands and snapshot.now - commands[0][0] > self.window_s:
            commands.popleft()
        return [f for f in (self._rising(snapshot.now, soc_c, at_minimum),
                            self._not_rising(snapshot.now, soc_c, heating_hard, power_w))
                if f]

    def _smoothed_power(self, now: float, power_w: float) -> float:
        """Power averaged over POWER_SMOOTHING_S, as the SoC's heat capacity averages it:
        a dithered or briefly dipping power is not a step."""
        if self._power_ema is None:
            self._power_ema = (now, power_w)
        last_s, ema = self._power_ema
        ema += (power_w - ema) * min(1.0, max(0.0, now - last_s) / POWER_SMOOTHING_S)
        self._power_ema = (now, ema)
        return ema

    def _rising(self, now: float, soc_c: float, at_minimum: bool) -> Finding | None:
        history = self._hot_at_minimum
        if not (at_minimum and soc_c >= self.hot_c):
            history.clear()
            return None
        history.append((now, soc_c))
        while len(history) > 1 and now - history[1][0] >= self.window_s:
            history.popleft()
        start_s, start_c = history[0]
        if now - start_s < self.window_s or soc_c - start_c < self.rise_c:
            return None
        return Finding("thermal_runaway:rising", Level.FAULT, soc_c,
                       f"SoC rose {soc_c - start_c:.1f} C to {soc_c:.1f} C in "
                       f"{now - start_s:.0f} s with the board at its minimum power: heat is "
                       "coming from elsewhere (the oil, a neighbour) or the power is not "
                       "really capped; check the oil loop and the cpufreq cap")

    def _not_rising(self, now: float, soc_c: float, heating_hard: bool,
                    power_w: float) -> Finding | None:
        if not heating_hard:
            self._heating_since = None
            return None
        if self._heating_since is None:
            stepped_up = power_w - min(p for _, p in self._recent_commands) >= self.step_w
            self._heating_since = (now, soc_c) if stepped_up else (now, math.inf)
        start_s, start_c = self._heating_since
        if (now - start_s < self.window_s or start_c >= self.hot_c - COOL_MARGIN_C
                or soc_c - start_c >= self.heating_rise_c):
            return None
        return Finding("thermal_runaway:not_rising", Level.FAULT, soc_c,
                       f"SoC rose only {soc_c - start_c:.1f} C in {now - start_s:.0f} s at high "
                       "power: the temperature reading does not see the heat; check the SoC "
                       "sensor")


class FlowLoss:
    """The oil bath's heat must leave through the water: no flow means no cooling, whether the
    board's own meter says so or the module leader's interlock does."""

    def __init__(self, flow_reading: str | None, min_flow_l_per_min: float, grace_s: float):
        self.flow_reading = flow_reading
        self.min_flow_l_per_min = min_flow_l_per_min
        self.grace_s = grace_s
        self._low_since: float | None = None

    def check(self, snapshot: Snapshot) -> list[Finding]:
        findings = []
        if snapshot.interlock_reason:
            findings.append(Finding("interlock", Level.SAFE, snapshot.interlock_reason,
                                    f"the module leader's interlock is set: "
                                    f"{snapshot.interlock_reason}; it clears when the leader "
                                    "clears it"))
        if self.flow_reading is None:
            return findings
        reading = snapshot.readings.get(self.flow_reading)
        if reading is None or not reading.ok:
            return findings  # unknown flow is SensorHealth's business
        if reading.value >= self.min_flow_l_per_min:
            self._low_since = None
            return findings
        self._low_since = self._low_since if self._low_since is not None else snapshot.now
        if snapshot.now - self._low_since >= self.grace_s:
            findings.append(Finding("flow_lost", Level.SAFE, reading.value,
                                    f"water flow {reading.value:.2f} L/min, below "
                                    f"{self.min_flow_l_per_min:g} L/min for "
                                    f"{snapshot.now - self._low_since:.0f} s: check the pump "
                                    "and valves"))
        return findings


class SupplyHealth:
    """The firmware's flags: under-voltage means the supply cannot carry the load; throttling
    means the firmware, not Hearth, is limiting the SoC (our limits sit below its 80 C)."""

    def __init__(self, throttle_prefix: str | None, power_min_w: float, power_max_w: float):
        self.prefix = throttle_prefix
        self.power_min_w = power_min_w
        self.power_max_w = power_max_w
        self._under_voltage = f"{throttle_prefix}.under_voltage"
        self._throttled = f"{throttle_prefix}.throttled"
        self._soft_temp_limit = f"{throttle_prefix}.soft_temp_limit"

    def check(self, snapshot: Snapshot) -> list[Finding]:
        if self.prefix is None:
            return []
        findings = []
        if snapshot.value(self._under_voltage) == 1.0:
            findings.append(Finding("under_voltage", Level.LIMIT, 1.0,
                                    "the firmware reports under-voltage: the 5 V supply sags "
                                    "under load; power is held at its minimum. Check the "
                                    "supply and its cabling", self.power_min_w))
        if (snapshot.value(self._throttled) == 1.0
                or snapshot.value(self._soft_temp_limit) == 1.0):
            findings.append(Finding("firmware_throttling", Level.LIMIT, 1.0,
                                    "the firmware is throttling the Arm (80 C soft limit or "
                                    "85 C): Hearth's own limit did not hold; power reduced",
                                    0.75 * self.power_max_w))
        return findings
