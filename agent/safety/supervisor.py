"""The safety supervisor (DESIGN.md section 4): turns the checks' findings into a mode and
the power the control loop is allowed, every period, before the control law runs.

Modes: STARTING -> NORMAL <-> LIMITED -> SAFE -> SHUTDOWN, plus a latched FAULT that only an
explicit reset clears, and only once its cause is gone. The board starts in STARTING (SAFE
settings) and ramps up at a limited rate once its required sensors read well; after a SAFE
cause clears it waits `recover_s` and ramps up again the same way.
"""

import dataclasses
import enum
import math

from agent.readings import Reading
from agent.safety.checks import Finding, Level, Snapshot
from agent.safety.events import Event, EventLog
from agent.safety.shutdown import ShutdownPath
from agent.supervisor_hook import Allowance


class Mode(enum.Enum):
    STARTING = "STARTING"
    NORMAL = "NORMAL"
    LIMITED = "LIMITED"
    SAFE = "SAFE"
    FAULT = "FAULT"
    SHUTDOWN = "SHUTDOWN"


SAFE_MODES = (Mode.STARTING, Mode.SAFE, Mode.FAULT, Mode.SHUTDOWN)


@dataclasses.dataclass(frozen=True)
class SafetySettings:
    ramp_w_per_s: float = 1.0
    """How fast the allowed power rises after STARTING or SAFE."""
    recover_s: float = 5.0
    """A SAFE cause must stay gone this long before the board ramps up again."""
    shutdown_after_s: float = 120.0
    """A critical temperature still there this long after its FAULT powers the board off."""


class Supervisor:
    def __init__(self, sensor_checks: list, checks: list, settings: SafetySettings, power_min_w: float,
                 power_max_w: float, events: EventLog, shutdown: ShutdownPath, now: float,
                 latched: dict[str, str] | None = None):
        self.sensor_checks = sensor_checks
        """SensorHealth checks: run first; a reading they flag is hidden from the rest."""
        self.checks = checks
        self._added: list[tuple[object, object]] = []
        """Checks other parts added (a technician's SAFE request), with their owners."""
        self.settings = settings
        self.power_min_w = power_min_w
        self.power_max_w = power_max_w
        self.events = events
        self.shutdown = shutdown
        self.mode = Mode.STARTING
        self.active: dict[str, Finding] = {}
        self.latched: dict[str, str] = dict(latched or {})
        """Latched FAULT causes -> their message; persisted by the shutdown path."""
        self._unsafe_until = now + settings.recover_s
        self._ramp_from: float | None = None
        self._critical_since: float | None = None
        self.interlock_reason = ""
        """Set by the module leader's interlock (flow lost, oil over-temperature)."""

    def supervise(self, now: float, readings: dict[str, Reading],
                  command_w: float) -> Allowance:
        snapshot = Snapshot(now, readings, command_w, self.power_min_w, self.power_max_w,
                            self.mode in SAFE_MODES, self.interlock_reason)
        findings: dict[str, Finding] = {}
        for check in self.sensor_checks:
            for finding in check.check(snapshot):
                findings[finding.cause] = finding
        trusted = snapshot
        if findings:
            suspect = {check.reading for check in self.sensor_checks if check.cause in findings}
            trusted = dataclasses.replace(
                snapshot, readings={k: v for k, v in readings.items() if k not in suspect})
        for check in self.checks:
            for finding in check.check(trusted):
                findings[finding.cause] = finding
        for cause, finding in findings.items():
            if cause not in self.active:
                self._raised(now, finding)
        if self.active:
            for cause in self.active.keys() - findings.keys():
                self.events.record(Event(now, cause, None, f"{cause} cleared", self.mode.value,
                                         "info"))
        self.active = findings
        self._escalate(now, findings)
        self.shutdown.power_off(now)
        return self._allowance(now, findings)

    def add_check(self, owner: object, check) -> None:
        """Run `check` after the built-in ones every period until `remove_checks(owner)`."""
        self._added.append((owner, check))
        self.checks.append(check)

    def remove_checks(self, owner: object) -> None:
        for added_by, check in [entry for entry in self._added if entry[0] is owner]:
            self._added.remove((added_by, check))
            self.checks.remove(check)

    def _raised(self, now: float, finding: Finding) -> None:
        severity = {Level.NOTICE: "warning", Level.LIMIT: "warning", Level.SAFE: "error", Level.FAULT: "critical",
                    Level.SHUTDOWN: "critical"}[finding.level]
        self.events.record(Event(now, finding.cause, finding.value, finding.message,
                                 self.mode.value, severity))
        if finding.level >= Level.FAULT:
            self.latched[finding.cause] = finding.message
            self.shutdown.fault(now, finding, self.latched)

    def _escalate(self, now: float, findings: dict[str, Finding]) -> None:
        """A critical temperature that SAFE settings do not bring down ends in SHUTDOWN."""
        critical = [f for f in findings.values() if f.cause.endswith(":critical")]
        if not critical:
            self._critical_since = None
            return
        if self._critical_since is None:
            self._critical_since = now
        elif now - self._critical_since >= self.settings.shutdown_after_s:
            self.shutdown.power_off(now, critical[0])

    def _allowance(self, now: float, findings: dict[str, Finding]) -> Allowance:
        worst = max((f.level for f in findings.values()), default=Level.NOTICE)
        if worst >= Level.SAFE:
            self._unsafe_until = now + self.settings.recover_s
        if self.shutdown.started:
            mode = Mode.SHUTDOWN
        elif self.latched:
            mode = Mode.FAULT
        elif now < self._unsafe_until:
            mode = Mode.STARTING if self.mode is Mode.STARTING else Mode.SAFE
        else:
            mode = Mode.LIMITED if worst == Level.LIMIT else Mode.NORMAL
        if mode in SAFE_MODES:
            self._ramp_from = None
            self._set_mode(now, mode)
            return Allowance(mode.value, self.power_min_w, safe=True,
                             freeze_workload=mode in (Mode.FAULT, Mode.SHUTDOWN))
        if self._ramp_from is None:
            self._ramp_from = now
        ramp_w = self.power_min_w + (now - self._ramp_from) * self.settings.ramp_w_per_s
        ceiling_w = min([ramp_w] + [f.max_power_w for f in findings.values()])
        self._set_mode(now, mode)
        return Allowance(mode.value, ceiling_w if ceiling_w < self.power_max_w else math.inf)

    def _set_mode(self, now: float, mode: Mode) -> None:
        if mode is not self.mode:
            self.events.record(Event(now, "mode", mode.value,
                                     f"mode {self.mode.value} -> {mode.value}", mode.value,
                                     "info"))
            self.mode = mode

    def reset(self, now: float) -> tuple[bool, str]:
        """Clear latched faults whose causes are gone; say which remain and why.

        The cleared state is saved first and the faults stay latched if it cannot be: a
        reset that a restart would undo is no reset, and a damaged latch file
        (`state_file:latched`) is cleared only by rewriting it good."""
        if not self.latched:
            return False, "nothing is latched"
        still = sorted(cause for cause in self.latched if cause in self.active)
        if still:
            return False, (f"not reset: {', '.join(still)} still present; remove the cause "
                           "first")
        failure = self.shutdown.persist_latched(now, {})
        if failure is not None:
            return False, (f"not reset: the latched faults could not be saved ({failure}); "
                           "check the state directory and the SD card, then reset again")
        cleared = sorted(self.latched)
        self.latched.clear()
        self._unsafe_until = now + self.settings.recover_s
        self.events.record(Event(now, "reset", ", ".join(cleared),
                                 f"latched fault(s) {', '.join(cleared)} reset by a technician",
                                 self.mode.value, "warning"))
        return True, f"reset {', '.join(cleared)}; ramping up after {self.settings.recover_s:g} s"
