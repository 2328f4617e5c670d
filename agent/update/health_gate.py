"""The health gate: on the trial boot of a new slot, is this board healthy enough to commit it?

Why a gate: a new slot is tried once; only a board whose agent runs (systemd has it active
after READY=1, not restarting), whose sensors are valid, which reached the broker and follows
the leader's setpoints, held continuously for `hold_s` within `window_s`, commits it (balenaOS
re-checks for 15 minutes; greenboot allows three tries). Anything else fails the trial with a
reason, and the firmware boots the old slot again.

The gate is a small class with no I/O: `check(now_s, service, state)` takes what systemd says
of hearth-agent.service and the newest `state` the board published on the broker (with when it
arrived), and answers PASS, FAIL with a reason, or None (keep watching). The updater feeds it;
tests drive it with plain values.
"""

import dataclasses
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.errors import ConfigFileError, ConfigValueError
from agent.update.slots import ServiceFacts

DEFAULT_SETTINGS_FILE = Path("/etc/hearth/update.toml")
AGENT_UNIT = "hearth-agent.service"
WINDOW_FLOOR_S = 30.0
"""No window is shorter: a board needs this long to boot its agent and hear the leader."""
HEALTHY_MODES = ("NORMAL", "LIMITED")
PASS = "pass"


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The keys of `/etc/hearth/update.toml`: the gate's, and where the firmware's facts are."""

    window_s: float = 900.0
    """From the start of the trial: the board must have been healthy for hold_s by then."""
    hold_s: float = 120.0
    """How long every check must hold without a break."""
    max_restarts: int = 2
    """Restarts of hearth-agent.service allowed on the trial boot; one more is a crash loop."""
    state_stale_s: float = 10.0
    """A board state older than this no longer counts as the board reaching the broker."""
    bootloader_dir: str = ""
    """Where the firmware's booted partition and tryboot flag are read (the tryboot backend
    reads the same key); empty: the Pi's device tree. The VM names its own."""

    @classmethod
    def from_file(cls, path: Path = DEFAULT_SETTINGS_FILE) -> "GateSettings":
        """The settings from `path` (absent: the defaults), each key checked and named."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigFileError(f"{path}: cannot be read as TOML ({error}); fix or remove it")
        return cls.from_table(data, str(path))

    @classmethod
    def from_table(cls, data: dict[str, Any], where: str) -> "GateSettings":
        known = {"health_window_s", "health_hold_s", "max_agent_restarts", "state_stale_s",
                 "bootloader_dir"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigValueError(f"{where}: unknown key {unknown[0]!r}; the keys are "
                                   f"{', '.join(sorted(known))}")
        window_s = _number(data, "health_window_s", cls.window_s, WINDOW_FLOOR_S, 86400.0, where)
        hold_s = _number(data, "health_hold_s", cls.hold_s, 1.0, window_s, where)
        restarts = _number(data, "max_agent_restarts", cls.max_restarts, 0, 10, where)
        if restarts != int(restarts):
            raise ConfigValueError(f"{where}: max_agent_restarts = {restarts} must be a whole "
                                   "number from 0 to 10")
        stale_s = _number(data, "state_stale_s", cls.state_stale_s, 1.0, 300.0, where)
        bootloader_dir = data.get("bootloader_dir", "")
        if not isinstance(bootloader_dir, str) or not bootloader_dir.startswith("/") and (
                bootloader_dir):
            raise ConfigValueError(f"{where}: bootloader_dir = {bootloader_dir!r} must be an "
                                   "absolute directory path, or absent for the Pi's")
        return cls(window_s, hold_s, int(restarts), stale_s, bootloader_dir)


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float,
            where: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high):
        raise ConfigValueError(f"{where}: {key} = {value!r} must be a number from {low:g} to "
                               f"{high:g}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class ObservedState:
    """The board's newest `state` payload as it came off the broker, and when (gate clock)."""

    payload: dict[str, Any]
    received_s: float


def state_problem(payload: dict[str, Any]) -> str | None:
    """Why this board state is not healthy, or None. The board takes the leader's setpoint
    (setpoint_source "leader"), runs NORMAL or LIMITED (the supervisor is content with its
    sensors), has no latched fault and a valid SoC and power reading."""
    mode, source = payload.get("mode"), payload.get("setpoint_source")
    if mode not in HEALTHY_MODES:
        return f"the agent runs in mode {mode!r}, not NORMAL or LIMITED"
    if source != "leader":
        return f"the agent's setpoint comes from {source!r}, not the leader"
    faults = payload.get("faults")
    if faults != []:
        return f"the agent has latched faults {faults!r}"
    for key in ("soc_c", "power_w"):
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"the agent reports no valid {key} ({value!r})"
    return None


def service_problem(service: ServiceFacts, max_restarts: int) -> tuple[str | None, bool]:
    """(why hearth-agent.service is not healthy or None, whether that is final)."""
    if service.restarts > max_restarts:
        return (f"hearth-agent.service crash-loops: restarted {service.restarts} times on the "
                f"trial boot (allowed {max_restarts})", True)
    if service.active_state == "failed":
        return f"hearth-agent.service failed ({service.sub_state})", True
    if (service.active_state, service.sub_state) != ("active", "running"):
        return (f"hearth-agent.service is {service.active_state}/{service.sub_state}, not "
                "active/running after READY=1", False)
    return None, False


class HealthGate:
    """One trial's verdict. Feed check() about once a second from the trial's start."""

    def __init__(self, settings: GateSettings, started_s: float):
        self.settings = settings
        self.started_s = started_s
        self.healthy_since_s: float | None = None
        self.last_problem = "no check ran yet"

    def check(self, now_s: float, service: ServiceFacts,
              state: ObservedState | None) -> str | None:
        """PASS, a failure reason, or None while the verdict is still open."""
        problem, final = service_problem(service, self.settings.max_restarts)
        if problem is None:
            problem = self._state_problem(now_s, state)
        if final:
            return problem
        if problem is not None:
            self.healthy_since_s = None
            self.last_problem = problem
        elif self.healthy_since_s is None:
            self.healthy_since_s = now_s
        if (self.healthy_since_s is not None
                and now_s - self.healthy_since_s >= self.settings.hold_s):
            return PASS
        if now_s - self.started_s >= self.settings.window_s:
            held = ("" if self.healthy_since_s is None
                    else f"; healthy only for the last {now_s - self.healthy_since_s:.0f} s")
            return (f"the health window of {self.settings.window_s:.0f} s ran out before the "
                    f"board was healthy for {self.settings.hold_s:.0f} s without a break; last "
                    f"problem: {self.last_problem}{held}")
        return None

    def _state_problem(self, now_s: float, state: ObservedState | None) -> str | None:
        if state is None:
            return "no board state seen on the broker (the agent has not reached the broker)"
        age_s = now_s - state.received_s
        if age_s > self.settings.state_stale_s:
            return (f"the board's last state on the broker is {age_s:.0f} s old (the agent "
                    "lost the broker)")
        return state_problem(state.payload)


class SystemdService:
    """systemd's facts of a unit, from `systemctl show`: the gate's ServiceFacts on a board.
    What systemctl cannot tell reads as state "unknown": never healthy, so the gate does not
    pass on a guess, and not final, so one slow answer does not end a trial."""

    def __init__(self, unit: str = AGENT_UNIT, systemctl: str = "systemctl",
                 run: Callable[[Sequence[str]], subprocess.CompletedProcess] | None = None):
        self.unit = unit
        self.systemctl = systemctl
        self.run = run or (lambda argv: subprocess.run(list(argv), capture_output=True,
                                                       text=True, check=False, timeout=10))

    def __call__(self) -> ServiceFacts:
        try:
            result = self.run([self.systemctl, "show", "-p", "ActiveState,SubState,NRestarts",
                               self.unit])
        except (OSError, subprocess.SubprocessError) as error:
            return ServiceFacts("unknown", f"systemctl show {self.unit} failed: {error}", 0)
        values = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
        restarts = values.get("NRestarts", "")
        if result.returncode != 0 or not restarts.isdigit() or "ActiveState" not in values:
            return ServiceFacts("unknown", f"systemctl show {self.unit} gave nothing usable "
                                f"({result.stderr.strip()[:100]})", 0)
        return ServiceFacts(values["ActiveState"], values.get("SubState", ""), int(restarts))
