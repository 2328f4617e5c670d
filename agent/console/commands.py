"""The technician commands, declared once, and the processor every transport runs them through.

Serial console, `hearth ctl` (local socket) and the MQTT command path all call the same
`CommandProcessor.execute`, so a command cannot behave differently depending on how it
arrived, and a remote caller gets exactly the subset declared remote here.

API (for transports, including the MQTT command path)
-----------------------------------------------------
    from agent.console.commands import COMMANDS, CommandProcessor, remote_commands
    processor = CommandProcessor(agent, config, run_in_loop=mailbox.call, state_dir=...)
    result = processor.execute("setpoint", {"watts": 4.5}, source="leader", confirmed=True)

* `execute(name, args, source, confirmed=False) -> Result` never raises, whatever it is
  given. `args` is a dict of JSON values; each is checked by its `Arg` (type, bounds,
  choices) and unknown names are refused. A number must be a JSON number (int or float, not
  bool, finite, within bounds): `"3"` is text and is refused. `Result.ok`, `.data` (JSON-able
  dict), `.text` (for people), `.reason` (why nothing was done: what was wrong, the value, and
  what to type instead). Every Result can be encoded (no lone surrogates); refusals are
  counted in `refused_commands`. `Result.as_dict()` is the reply payload;
  `Result.render(as_json)` the console's output.
* `execute_line(line, source, confirmed=False) -> (Result, as_json)` parses a typed line
  (`setpoint 4.5 for 30 --json`) with `parse_line`, the one place typed text becomes numbers
  (ASCII digits only), and executes it. A line that is not printable text or is longer than
  spec.MAX_LINE is refused whole.
* Sources: "serial" and "socket" are local and may run every command. Anything else is remote
  ("leader", "operator" on MQTT) and may run only commands whose `remote` names it (docs/mqtt.md
  "Commands": setpoint, mode, reset, identify, tune); others are refused, changing nothing.
  For `setpoint`, source "leader" offers the leader's setpoint; any other source sets a local
  override that expires (`minutes`, default 60).
* Destructive commands (`Command.destructive` is the question) return ok=False with `confirm`
  set unless confirmed=True: the console asks and re-executes; a remote command message is
  itself the deliberate act, so the MQTT path passes confirmed=True.
* One processor per agent. It owns the console's state (a technician's SAFE request, a local
  setpoint's expiry, a running tune or flow calibration), so every transport, MQTT included,
  must share the agent's one processor (`ConsoleService.processor`).
* Threads: execute() may be called from any thread. What touches the agent runs in the loop's
  thread through `run_in_loop` (a LoopMailbox's `call`), between two periods; the loop calls
  `LoopMailbox.service()` and `poll()` once per period (ConsoleService registers both as one
  of the agent's inputs).
  Without `run_in_loop` (a test stepping a SimulatedAgent itself) calls are direct.
* `CommandProcessor(None, None, config_path=...)` is the processor of `hearth console` while
  the agent is down: commands with needs_agent=False still work, the rest say the agent is
  not running.
"""

import json
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.config import DEFAULT_CONFIG_PATH, BoardConfig, load_config
from agent.console.handlers import (
    calibration, control, diagnostics, faults, info, selftest, update)
from agent.console.handlers.calibration import FlowCalibration, TuneJob, finish_tune
from agent.console.handlers.control import TechnicianRequest
from agent.console.loop import LoopUnavailable
from agent.console.spec import (
    LOCAL_SOURCES, Arg, Command, CommandRefused, ParsedLine, Result, command_named, parse_line,
    shown)
from agent.errors import ConfigError
from agent.persist import StateStore

OVERRIDE_MAX_MIN = 24 * 60.0
OVERRIDE_DEFAULT_MIN = 60.0
"""A local setpoint or hold lasts this long unless told otherwise: a forgotten override must not
keep a board off the leader's plan for good."""

CONFIRM_TAIL = " Type yes to go ahead; anything else cancels."

COMMANDS: tuple[Command, ...] = (
    Command("help", "List the commands, or explain one.", info.help_,
            (Arg("command", str, "a command name", default="", rest=True),), needs_agent=False),
    Command("status", "Mode, setpoint and where it comes from, power, temperatures, faults.",
            info.status),
    Command("sensors", "Every reading of the last control period with its validity and reason.",
            info.sensors),
    Command("limits", "The configured safety limits and the power ceiling in force now.",
            info.limits),
    Command("faults", "Latched faults and the supervisor's active findings.", faults.faults),
    Command("events", "The latest safety and console events, oldest first.", info.events,
            (Arg("count", int, "how many", min=1, max=256, default=10),)),
    Command("setpoint", "Set the board's power setpoint as a local override that expires "
            "(the leader's setpoint over MQTT).", control.setpoint,
            (Arg("watts", float, "power setpoint", unit="W", min=0.0, max=15.0),
             Arg("minutes", float, "how long the local override lasts", unit="min", min=1.0,
                 max=OVERRIDE_MAX_MIN, default=OVERRIDE_DEFAULT_MIN, keyword="for")),
            remote=("leader", "operator")),
    Command("mode", "auto: the leader decides; safe: hold the board in SAFE; hold: keep the "
            "present setpoint whatever the leader says.", control.mode,
            (Arg("mode", str, "the control mode", choices=("auto", "safe", "hold")),),
            remote=("operator",)),
    Command("reset", "Clear latched faults, only once their causes are gone.", faults.reset,
            destructive="reset clears the latched faults and lets the board heat again.",
            remote=("operator",)),
    Command("tune", "Relay-autotune the power or SoC loop on the running board; `tune stop` "
            "aborts.", calibration.tune,
            (Arg("loop", str, "which loop", choices=("power", "soc", "stop"),
                 default="power"),),
            destructive="tune drives the board with a relay (power swinging around 4.5 W) for "
            "up to 60 s (power) or 15 min (soc), then applies the new gains.",
            remote=("operator",)),
    Command("identify", "Blink the board's status LED so you can find it in the rack.",
            diagnostics.identify,
            (Arg("seconds", float, "how long", unit="s", min=1.0, max=600.0, default=10.0),),
            remote=("leader", "operator")),
    Command("i2c scan", "Probe I2C addresses 0x03-0x77 and name the configured chips that "
            "answer (or do not).", diagnostics.i2c_scan,
            (Arg("bus", int, "I2C bus number (default: the sensors' bus)", min=0, max=31,
                 default=-1),)),
    Command("w1 list", "The DS18B20 sensors on the 1-wire bus, with their configured names.",
            diagnostics.w1_list, needs_agent=False),
    Command("config show", "The effective config (board definition and site merged).",
            diagnostics.config_show, needs_agent=False),
    Command("config check", "Check the config file on disk; every problem with key, value and "
            "expectation.", diagnostics.config_check, needs_agent=False),
    Command("calibrate flow", "Flow meter K factor: `calibrate flow start`, run a known volume "
            "through the meter, then `calibrate flow <litres>`.", calibration.calibrate_flow,
            (Arg("litres", float, "the volume that ran through", unit="L", min=0.1,
                 max=10000.0, choices=("start", "cancel")),)),
    Command("version", "The Hearth version installed, the slot it booted from, and the other "
            "slot's version and state.", update.version, needs_agent=False),
    Command("update status", "The board's last update: its state, target version, reason and "
            "when.", update.update_status, needs_agent=False),
    Command("selftest", "Exercise every sensor and actuator through the agent's drivers; "
            "pass/fail per item.", selftest.selftest),
    Command("reboot", "Put the board in SAFE and reboot it.", faults.reboot,
            destructive="reboot stops heating and restarts the board (about a minute)."),
    Command("shutdown", "Stop the workload and power the board off through the agent's "
            "shutdown path.", faults.shutdown,
            destructive="shutdown powers the board off; it stays off until someone powers it "
            "on again."),
)


def remote_commands(source: str) -> list[Command]:
    """The commands a remote source (MQTT "leader" or "operator") may send."""
    return [command for command in COMMANDS if source in command.remote]


def _sendable(result: Result) -> Result:
    """The result, or a refusal in its place when it holds something no transport could
    send (a lone surrogate, an object JSON cannot hold): nothing unsendable leaves here."""
    try:
        json.dumps(result.as_dict(), ensure_ascii=False, default=str).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as error:
        return Result(False, result.command, reason=f"{result.command} produced an answer "
                      f"that cannot be sent ({type(error).__name__}); see the journal")
    return result


def default_board_id(config: BoardConfig | None) -> str:
    """The board's name in the prompt: its configured identity, else the host name."""
    if config is not None and config.identity is not None:
        return config.identity.board
    return socket.gethostname()


class CommandProcessor:
    def __init__(self, agent, config: BoardConfig | None, *, config_path: Path | None = None,
                 board_id: str | None = None,
                 run_in_loop: Callable[[Callable[[], Any]], Any] | None = None,
                 state_dir: Path | None = None,
                 run_command: Callable[[list[str]], None] | None = None,
                 root: Path | None = None, hold_minutes: float = OVERRIDE_DEFAULT_MIN,
                 commands: Sequence[Command] = COMMANDS):
        self.agent = agent
        self.commands = commands
        """The table this processor runs; `help` lists it (handlers never import it)."""
        self.config = config
        self.config_path = config_path or (config.path if config else DEFAULT_CONFIG_PATH)
        self.board_id = board_id or default_board_id(config)
        self.run_in_loop = run_in_loop
        self.state_store = StateStore(state_dir) if state_dir is not None else None
        self.run_command = run_command or (agent.run_command if agent else None)
        self.root = root or (agent.context.hardware.root if agent else Path("/"))
        self.hold_minutes = hold_minutes
        self.request = TechnicianRequest()
        self.override_until: float | None = None
        self.tune: TuneJob | None = None
        self.calibration: FlowCalibration | None = None
        self.led = None
        self.refused_commands = 0
        self._count_lock = threading.Lock()
        self.agent_mode = agent.status().mode if agent is not None else "NO-AGENT"
        """The mode the supervisor last announced, kept so the prompt never waits for the loop."""
        if agent is not None:
            agent.supervisor.add_check(self, self.request)
            agent.subscribe_events(self, self._note_mode)

    @classmethod
    def without_agent(cls, config_path: Path, board_id: str | None = None,
                      root: Path = Path("/")) -> "CommandProcessor":
        """For `hearth console` while the agent is down: what works without it."""
        try:
            config = load_config(config_path)
        except (ConfigError, OSError):
            config = None
        return cls(None, config, config_path=config_path, board_id=board_id, root=root)

    def in_loop(self, action: Callable[[], Any]) -> Any:
        return action() if self.run_in_loop is None else self.run_in_loop(action)

    def console_mode(self) -> str:
        if self.request.source:
            return "safe"
        if self.override_until is not None:
            return "local"
        return "auto"

    def prompt(self) -> str:
        return f"hearth {self.board_id} {self.agent_mode}> "

    def execute(self, name: Any, args: Any, source: Any, confirmed: bool = False) -> Result:
        """Never raises: whatever the caller passes, the answer is a Result any transport can
        encode, and a refused command (counted in `refused_commands`) changed nothing."""
        try:
            result = _sendable(self._execute(name, args, source, confirmed))
        except Exception as error:  # a console command must never take a transport down
            result = Result(False, "", reason=f"the command could not be run "
                            f"({type(error).__name__}); nothing was done; see the journal")
        if not result.ok and not result.confirm:
            with self._count_lock:
                self.refused_commands += 1
        return result

    def _execute(self, name: Any, args: Any, source: Any, confirmed: bool) -> Result:
        command = command_named(self.commands, name) if isinstance(name, str) else None
        if command is None:
            return Result(False, "", reason=f"unknown command {shown(name)}: `help` lists them")
        if source not in LOCAL_SOURCES and source not in command.remote:
            allowed = ", ".join(c.name for c in self.commands if source in c.remote) or "none"
            return Result(False, command.name, reason=f"{command.name} is not allowed from "
                          f"{shown(source)}; allowed from there: {allowed}. Use the board's "
                          "console")
        try:
            values = command.coerce_args(args if args is not None else {})
        except CommandRefused as error:
            return Result(False, command.name, reason=f"{error}; usage: {command.usage()}")
        if command.needs_agent and self.agent is None:
            return Result(False, command.name, reason="the agent is not running, so "
                          f"{command.name} cannot be done; `systemctl status hearth-agent` and "
                          "`journalctl -u hearth-agent` say why")
        if command.destructive and confirmed is not True:
            return Result(False, command.name, reason="needs confirmation",
                          confirm=command.destructive + CONFIRM_TAIL)
        try:
            text, data = command.handler(self, values, source)
        except (CommandRefused, LoopUnavailable) as error:
            return Result(False, command.name, reason=str(error))
        except Exception as error:  # a console command must never take a transport down
            return Result(False, command.name, reason=f"{command.name} failed: "
                          f"{type(error).__name__}: {shown(str(error))}; see `events` and the "
                          "journal")
        return Result(True, command.name, text, data)

    def execute_line(self, line: str, source: str,
                     confirmed: bool = False) -> tuple[Result, bool]:
        try:
            parsed: ParsedLine = parse_line(line, self.commands)
        except CommandRefused as error:
            with self._count_lock:
                self.refused_commands += 1
            as_json = isinstance(line, str) and line.isprintable() and "--json" in line.split()
            return Result(False, error.command, reason=str(error)), as_json
        result = self.execute(parsed.command.name, parsed.args, source,
                              confirmed or parsed.confirmed)
        return result, parsed.as_json

    def _note_mode(self, event) -> None:
        """The supervisor announces every change of mode as a `mode` event."""
        if event.cause == "mode":
            self.agent_mode = event.mode

    def poll(self) -> None:
        """Once per period in the loop's thread: expire a local override, watch a tune, count
        flow pulses."""
        agent = self.agent
        if agent is None:
            return
        if self.tune is None and self.calibration is None and self.override_until is None:
            return
        state = agent.status()
        if self.override_until is not None and state.time >= self.override_until:
            self.override_until = None
            agent.clear_local_setpoint()
            agent.record("console:override_expired", None,
                         "the console's local setpoint expired; the leader's setpoint (or the "
                         "fallback) applies again", "info")
        if self.tune is not None:
            finish_tune(self, state)
        if self.calibration is not None:
            self.calibration.poll(state.time, state.readings.get(self.calibration.reading))

    def close(self) -> None:
        if self.agent is not None:
            self.agent.remove(self)
        if self.tune is not None:
            self.tune.restore()
            self.tune = None
        if self.led is not None:
            self.led.close()
            self.led = None
