"""What each console command does, on the agent's own objects and the hardware seam.

Each handler takes (processor, args, source) and returns (text, data) or raises
CommandRefused. Work on the agent goes through `processor.in_loop`, so it runs between two
control periods in the loop's thread; file and config reads that do not touch the agent run
on the caller's thread.
"""

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

from agent.config import effective_toml, load_config
from agent.errors import ConfigError
from agent.readings import Reading
from agent.safety.checks import Finding, Level
from agent.safety.events import Event
from agent.console.spec import CommandRefused

W1_DEVICES = "/sys/bus/w1/devices"
I2C_FIRST, I2C_LAST = 0x03, 0x77
I2C_PROBES_PER_PERIOD = 16
"""A scan probes this many addresses per control period, so it never stretches one."""
SOC_ABORT_MARGIN_C = 2.0
REBOOT_COMMAND = ["systemctl", "reboot"]


class TechnicianRequest:
    """A supervisor check that holds the board in SAFE while a technician asks for it."""

    def __init__(self) -> None:
        self.source = ""

    def check(self, snapshot) -> list[Finding]:
        if not self.source:
            return []
        return [Finding("console:safe", Level.SAFE, self.source,
                        f"a technician put the board in SAFE ({self.source}); `mode auto` "
                        "releases it")]


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


class TuneJob:
    """A relay autotune run by the live loop: the relay stands in for the heat controller until
    it finishes or aborts; the gains are then applied bumplessly and stored."""

    def __init__(self, agent, plan, relay, now: float):
        self.agent = agent
        self.plan = plan
        self.relay = relay
        self.started_s = now
        self._override = contextlib.ExitStack()
        """Holds the relay in the agent from this period until `restore()`."""
        self._override.enter_context(agent.override_controller(relay))

    def restore(self) -> None:
        self._override.close()


def _number(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _event(processor, cause: str, value: Any, message: str, severity: str = "warning") -> None:
    agent = processor.agent
    agent.events.record(Event(agent.clock(), cause, value, message,
                              agent.supervisor.mode.value, severity))


def _where(source: str) -> str:
    return {"serial": "the serial console", "socket": "hearth ctl"}.get(source,
                                                                        f"MQTT ({source})")


# ----------------------------------------------------------------------------- information

def help_(processor, args, source):
    from agent.console.commands import COMMANDS, command_named

    if args["command"]:
        command = command_named(args["command"])
        if command is None:
            raise CommandRefused(f"no command {args['command']!r}; type `help` for the list")
        lines = [f"usage: {command.usage()}", f"  {command.help}"]
        lines += [f"  {arg.name}: {arg.help} ({arg.expected()})" for arg in command.args]
        if command.destructive:
            lines.append("  asks for confirmation (or add --yes)")
        lines.append("  add --json for machine-readable output")
        return "\n".join(lines), {"usage": command.usage(), "help": command.help}
    width = max(len(command.usage()) for command in COMMANDS)
    lines = [f"{command.usage():<{width}}  {command.help.split('.')[0]}"
             for command in COMMANDS]
    lines.append("Add --json to any command for JSON; `help <command>` for details.")
    return "\n".join(lines), {"commands": [c.name for c in COMMANDS]}


def status(processor, args, source):
    def snapshot():
        agent = processor.agent
        report = agent.last_report
        now = agent.clock()
        data = {
            "board": processor.board_id, "mode": agent.supervisor.mode.value,
            "setpoint_w": agent.setpoints.current_w(now),
            "setpoint_source": agent.setpoints.status,
            "console_mode": processor.console_mode(),
            "override_left_s": (None if processor.override_until is None
                                else max(0.0, processor.override_until - now)),
            "power_w": report.power_w if report else None,
            "command_w": report.command_w if report else None,
            "selected": report.selected if report else None,
            "soc_c": report.soc_c if report else None,
            "oil_c": report.oil_c if report else None,
            "freq_mhz": report.settings.freq_khz // 1000 if report else None,
            "latched": sorted(agent.supervisor.latched),
            "active": sorted(agent.supervisor.active),
            "tune": processor.tune.plan.loop if processor.tune else None,
            "calibrating_flow": processor.calibration is not None,
            "refused_commands": processor.refused_commands,
        }
        return data

    data = processor.in_loop(snapshot)
    override = ("" if data["override_left_s"] is None
                else f" for {data['override_left_s'] / 60:.0f} more min")
    lines = [
        f"board {data['board']}  mode {data['mode']}  console {data['console_mode']}",
        f"setpoint {data['setpoint_w']:.2f} W from {data['setpoint_source']}{override}",
        f"power {_number(data['power_w'], 'W')}  command {_number(data['command_w'], 'W')} "
        f"({data['selected'] or '-'})  freq {data['freq_mhz'] or '-'} MHz",
        f"soc {_number(data['soc_c'], 'C', 1)}  oil {_number(data['oil_c'], 'C', 1)}",
        f"latched faults: {', '.join(data['latched']) or 'none'}; active findings: "
        f"{', '.join(data['active']) or 'none'}",
    ]
    if data["tune"]:
        lines.append(f"tuning the {data['tune']} loop")
    return "\n".join(lines), data


def sensors(processor, args, source):
    readings = processor.in_loop(lambda: list(processor.agent.readings.values()))
    lines = []
    for reading in readings:
        value = "-" if reading.value is None else f"{reading.value:.3f} {reading.unit}"
        lines.append(f"{reading.sensor:<28} {value:>16}  {reading.validity.value:<8} "
                     f"{reading.reason}".rstrip())
    return "\n".join(lines) or "no readings yet", {"readings": [r.as_dict() for r in readings]}


def limits(processor, args, source):
    configured = dataclasses.asdict(processor.config.limits)

    def current():
        supervisor = processor.agent.supervisor
        ceiling = min((f.max_power_w for f in supervisor.active.values()), default=math.inf)
        return supervisor.mode.value, _finite(ceiling)

    mode, ceiling_w = processor.in_loop(current)
    lines = [f"{key:<16} {value:g}" for key, value in configured.items()]
    lines.append(f"now: mode {mode}, power ceiling "
                 f"{'none' if ceiling_w is None else f'{ceiling_w:.2f} W'}")
    return "\n".join(lines), {"configured": configured, "mode": mode,
                              "ceiling_w": ceiling_w}


def faults(processor, args, source):
    def collect():
        supervisor = processor.agent.supervisor
        return (dict(supervisor.latched),
                [{"cause": f.cause, "level": f.level.name, "value": f.value,
                  "message": f.message} for f in supervisor.active.values()])

    latched, active = processor.in_loop(collect)
    lines = [f"latched {cause}: {message}" for cause, message in sorted(latched.items())]
    lines += [f"active  {f['cause']} ({f['level']}): {f['message']}" for f in active]
    if latched:
        lines.append("`reset` clears latched faults once their causes are gone")
    return "\n".join(lines) or "no faults", {"latched": latched, "active": active}


def events(processor, args, source):
    def collect():
        agent = processor.agent
        return agent.clock(), agent.events.latest(args["count"])

    now, latest = processor.in_loop(collect)
    lines = [f"{now - e.time:8.1f} s ago  {e.severity:<8} {e.cause}: {e.message}"
             for e in latest]
    return "\n".join(lines) or "no events", {"now": now,
                                             "events": [e.as_dict() for e in latest]}


# ----------------------------------------------------------------------------- control

def setpoint(processor, args, source):
    watts, minutes = args["watts"], args["minutes"]

    def apply():
        agent = processor.agent
        if source == "leader":
            return agent.set_setpoint(watts, "leader")
        accepted, reason = agent.set_setpoint(watts, "local")
        if accepted:
            processor.override_until = agent.clock() + minutes * 60.0
            processor.request.source = ""
            _event(processor, "console:setpoint", watts,
                   f"local setpoint {watts:g} W for {minutes:g} min from {_where(source)}; "
                   "`mode auto` returns control to the leader")
        return accepted, reason

    accepted, reason = processor.in_loop(apply)
    if not accepted:
        raise CommandRefused(f"setpoint {watts:g} W rejected: {reason}")
    if source == "leader":
        return f"setpoint {watts:g} W from the leader", {"watts": watts}
    return (f"setpoint {watts:g} W (local) for {minutes:g} min, then the leader's again; "
            "`mode auto` ends it now", {"watts": watts, "minutes": minutes})


def mode(processor, args, source):
    wanted = args["mode"]

    def apply():
        agent = processor.agent
        if wanted == "safe":
            processor.request.source = f"from {_where(source)}"
            _event(processor, "console:mode", "safe",
                   f"SAFE requested from {_where(source)}; `mode auto` releases it")
            return None
        processor.request.source = ""
        if wanted == "auto":
            agent.setpoints.clear_local()
            processor.override_until = None
            _event(processor, "console:mode", "auto",
                   f"automatic control from {_where(source)}: the leader's setpoint (or the "
                   "fallback) applies again", "info")
            return None
        held_w = agent.setpoints.current_w(agent.clock())
        agent.set_setpoint(held_w, "local")
        processor.override_until = agent.clock() + processor.hold_minutes * 60.0
        _event(processor, "console:mode", "hold",
               f"setpoint held at {held_w:g} W for {processor.hold_minutes:g} min from "
               f"{_where(source)}")
        return held_w

    held_w = processor.in_loop(apply)
    text = {"safe": "SAFE requested: lowest frequency, workload at minimum, heat-fill off; "
                    "`mode auto` releases it",
            "auto": "automatic: the leader's setpoint (or the fallback) applies",
            "hold": f"holding {held_w or 0:g} W for {processor.hold_minutes:g} min, whatever "
                    "the leader says; `mode auto` ends it"}[wanted]
    return text, {"mode": wanted, "held_w": held_w}


def reset(processor, args, source):
    def apply():
        agent = processor.agent
        return agent.supervisor.reset(agent.clock())

    ok, reason = processor.in_loop(apply)
    if not ok:
        raise CommandRefused(reason)
    return reason, {"reset": True, "message": reason}


def tune(processor, args, source):
    from agent.commands.tune import DEFAULT_PLANS
    from agent.control.autotune import RelayController

    loop = args["loop"]

    def start():
        agent = processor.agent
        if loop == "stop":
            if processor.tune is None:
                raise CommandRefused("no tune is running")
            processor.tune.relay.abort(f"stopped from {_where(source)}")
            return None
        if processor.tune is not None:
            raise CommandRefused(f"the {processor.tune.plan.loop} loop is being tuned already; "
                                 "`tune stop` ends it")
        if agent.supervisor.mode.value not in ("NORMAL", "LIMITED"):
            raise CommandRefused(f"the board is in {agent.supervisor.mode.value}; a tune needs "
                                 "NORMAL or LIMITED: clear the cause first (`faults`)")
        limits = processor.config.limits
        plan = DEFAULT_PLANS[loop]
        relay = RelayController(plan, limits.power_min_w, limits.power_max_w,
                                limits.soc_critical_c - SOC_ABORT_MARGIN_C)
        processor.tune = TuneJob(agent, plan, relay, agent.clock())
        _event(processor, "console:tune", loop,
               f"relay autotune of the {loop} loop started from {_where(source)} "
               f"({plan.bias_w:g} ± {plan.amplitude_w:g} W, at most {plan.max_duration_s:g} s)")
        return plan

    plan = processor.in_loop(start)
    if plan is None:
        return "tune stopped; the board returns to normal control", {"loop": "stop"}
    return (f"tuning the {loop} loop: relay {plan.bias_w:g} ± {plan.amplitude_w:g} W for at "
            f"most {plan.max_duration_s:g} s; the result comes as an event (`events`), "
            "`tune stop` aborts", {"loop": loop, "max_duration_s": plan.max_duration_s})


def finish_tune(processor) -> None:
    """Called from poll(): watch the relay; when it is done, put the controller back, apply
    and store the gains, and leave an event with the outcome."""
    from agent.commands.tune import TuneOutcome, describe, store_outcomes
    from agent.control.autotune import DEFAULT_RULES, StoredGains, apply_gains
    from agent.control.controller import LimitGains, PowerGains

    job, agent = processor.tune, processor.agent
    report = agent.last_report
    if report is not None and report.selected == "safe" and job.relay.relay is not None:
        job.relay.abort(f"the safety supervisor put the board in {report.mode} during the relay "
                        "test; see its event, fix the cause, then tune again")
    job.relay.watch(agent.clock(), report.soc_c if report else None)
    if not job.relay.finished:
        return
    job.restore()
    processor.tune = None
    outcome = TuneOutcome(job.plan, job.relay, agent.clock() - job.started_s)
    rule = DEFAULT_RULES[job.plan.loop]
    message = describe(outcome, rule)
    if outcome.result is not None:
        kp, ki, kd = outcome.result.gains(rule)
        gains = (StoredGains(power=PowerGains(kp=kp, ki=ki, kd=kd)) if job.plan.loop == "power"
                 else StoredGains(soc=LimitGains(kp=kp, ki=ki, kd=kd)))
        apply_gains(agent.controller, gains)
        if processor.state_store is not None:
            try:
                path, _ = store_outcomes(processor.state_store, [outcome], DEFAULT_RULES)
                message += f"; applied now and stored in {path}"
            except OSError as error:
                message += (f"; applied now but NOT stored ({error}): they are lost at the "
                            "next restart")
        else:
            message += "; applied now (not stored: this agent has no state directory)"
    _event(processor, "console:tune_done", job.plan.loop, message,
           "info" if outcome.result is not None else "warning")


def identify(processor, args, source):
    seconds = args["seconds"]

    def blink():
        from gpiozero import LED

        if processor.led is None:
            processor.led = LED(processor.config.pins.status_led_gpio,
                                pin_factory=processor.agent.context.hardware.pin_factory)
        processor.led.blink(on_time=0.25, off_time=0.25, n=max(1, round(seconds * 2)),
                            background=True)

    processor.in_loop(blink)
    pin = processor.config.pins.status_led_gpio
    return (f"blinking the status LED (GPIO {pin}) for {seconds:g} s",
            {"gpio": pin, "seconds": seconds})


# ----------------------------------------------------------------------------- diagnostics

def i2c_scan(processor, args, source):
    expected = {(s.settings["bus"], s.settings["address"]): s for s in processor.config.sensors
                if "bus" in s.settings and "address" in s.settings}
    bus = args["bus"] if args["bus"] >= 0 else min(
        (b for b, _ in expected), default=1)
    found: list[int] = []

    def probe(addresses):
        try:
            handle = processor.agent.context.i2c(bus)
        except OSError as error:
            raise CommandRefused(f"I2C bus {bus} could not be opened ({error}); this board's "
                                 f"sensors are on bus(es) "
                                 f"{sorted({b for b, _ in expected}) or [1]}") from None
        answered = []
        for address in addresses:
            try:
                handle.read_byte(address)
            except OSError:
                continue
            answered.append(address)
        return answered

    addresses = list(range(I2C_FIRST, I2C_LAST + 1))
    for start in range(0, len(addresses), I2C_PROBES_PER_PERIOD):
        found += processor.in_loop(lambda chunk=addresses[start:start + I2C_PROBES_PER_PERIOD]:
                                   probe(chunk))
    rows = [{"address": f"0x{a:02x}", "sensor": expected[(bus, a)].name if (bus, a) in expected
             else None, "kind": expected[(bus, a)].kind if (bus, a) in expected else None}
            for a in found]
    silent = [{"address": f"0x{a:02x}", "sensor": s.name, "kind": s.kind}
              for (b, a), s in sorted(expected.items()) if b == bus and a not in found]
    lines = [f"I2C bus {bus}: {len(found)} device(s) answered"]
    lines += [f"  {row['address']}  {row['sensor'] or 'not in the config'}"
              + (f" ({row['kind']})" if row["kind"] else "") for row in rows]
    lines += [f"  {row['address']}  {row['sensor']} ({row['kind']}) is configured but did NOT "
              "answer: check its wiring, supply and address straps" for row in silent]
    return "\n".join(lines), {"bus": bus, "found": rows, "silent": silent}


def w1_list(processor, args, source):
    devices_dir = processor.root / W1_DEVICES.lstrip("/")
    present = sorted(p.name for p in devices_dir.glob("28-*"))
    configured = {s.settings.get("id"): s.name for s in processor.config.sensors
                  if s.kind == "ds18b20"} if processor.config else {}
    readings = processor.in_loop(lambda: dict(processor.agent.readings)) \
        if processor.agent is not None else {}
    rows = []
    for device_id in present:
        name = configured.get(device_id)
        reading = readings.get(name) if name else None
        rows.append({"id": device_id, "sensor": name,
                     "value_c": reading.value if reading is not None and reading.ok else None})
    missing = sorted(name for device_id, name in configured.items()
                     if device_id not in present)
    lines = [f"{row['id']}  {row['sensor'] or 'not in the config'}"
             + (f"  {row['value_c']:.2f} C" if row["value_c"] is not None else "")
             for row in rows] or [f"no DS18B20 on the 1-wire bus ({devices_dir} has no 28-*): "
                                  "check the w1-gpio overlay and the data line's pull-up"]
    lines += [f"{name} is configured but its device is not on the bus" for name in missing]
    return "\n".join(lines), {"devices": rows, "configured_missing": missing}


def config_show(processor, args, source):
    from agent.drivers.registry import SENSOR_CLASSES

    if processor.config is None:
        raise CommandRefused(f"{processor.config_path} does not load; `config check` says why")
    return (effective_toml(processor.config, SENSOR_CLASSES).rstrip("\n"),
            processor.config.to_dict())


def config_check(processor, args, source):
    path = processor.config_path
    try:
        config = load_config(path)
    except ConfigError as error:
        problems = [str(p) for p in error.problems] or [str(error)]
        raise CommandRefused(f"{path} has {len(problems)} problem(s):\n  "
                             + "\n  ".join(problems)) from None
    running = "" if processor.agent is None else (
        "; the agent runs on the config it started with: restart it to apply changes")
    return (f"{path}: OK: board type {config.board_type}, {len(config.sensors)} sensors{running}",
            {"path": str(path), "ok": True, "sensors": len(config.sensors)})


def calibrate_flow(processor, args, source):
    action = args["litres"]
    meter = next((s for s in processor.config.sensors if s.kind == "flow"), None)
    if meter is None:
        raise CommandRefused("this board has no flow meter in its config")

    def apply():
        agent = processor.agent
        now = agent.clock()
        if action == "start":
            processor.calibration = FlowCalibration(meter.name,
                                                    meter.settings["pulses_per_litre"], now)
            return None
        calibration = processor.calibration
        if calibration is None:
            raise CommandRefused("no calibration is running: `calibrate flow start`, run a "
                                 "known volume through the meter, then `calibrate flow <litres>`")
        processor.calibration = None
        if action == "cancel":
            return None
        calibration.poll(now, agent.readings.get(meter.name))
        return calibration, now

    outcome = processor.in_loop(apply)
    if action == "start":
        return (f"counting {meter.name} pulses: run a known volume through the meter, then type "
                "`calibrate flow <litres>`", {"started": True})
    if action == "cancel":
        return "calibration cancelled", {"cancelled": True}
    calibration, now = outcome
    pulses = calibration.pulses
    if pulses < 10:
        raise CommandRefused(f"only {pulses:.0f} pulses counted in {now - calibration.started_s:.0f}"
                             " s: is water flowing through the meter? Start again")
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


def selftest(processor, args, source):
    def run():
        agent = processor.agent
        items = []
        for sensor in agent.sensors:
            readings = [r for r in agent.readings.values()
                        if r.sensor == sensor.name or r.sensor.startswith(sensor.name + ".")]
            bad = [r for r in readings if not r.ok]
            passed = bool(readings) and not bad
            detail = ("no reading" if not readings else
                      "; ".join(f"{r.sensor}: {r.validity.value} {r.reason}".strip()
                                for r in bad) or
                      ", ".join(f"{r.sensor} {r.value:.3g} {r.unit}" for r in readings))
            items.append({"item": f"sensor {sensor.name} ({sensor.kind})", "pass": passed,
                          "detail": detail})
        items.append(_rewrite("cpufreq cap", agent.policy.max_freq.path))
        for label, group in (("workload", agent.workload), ("heat-fill", agent.heatfill)):
            items.append(_rewrite(f"{label} cpu.max", group.cpu_max.path))
            items.append(_rewrite(f"{label} cgroup.freeze", group.freeze_file.path))
        items.append(_led(processor))
        return items

    items = processor.in_loop(run)
    failed = [item for item in items if not item["pass"]]
    lines = [f"{'PASS' if item['pass'] else 'FAIL'}  {item['item']}: {item['detail']}"
             for item in items]
    lines.append(f"{len(items) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(lines), {"items": items, "passed": not failed}


def _rewrite(item: str, path: Path) -> dict:
    """Write an actuator file's present value back and read it again: the write path works
    and the board's settings do not change."""
    try:
        value = path.read_text()
        path.write_text(value)
        again = path.read_text()
    except OSError as error:
        return {"item": item, "pass": False, "detail": f"{path}: {error.strerror or error}; "
                "check the tmpfiles.d permissions and that the agent runs as hearth"}
    passed = again == value
    return {"item": item, "pass": passed,
            "detail": f"{path.name} = {value.strip()}" + ("" if passed else
                                                          f", read back {again.strip()!r}")}


def _led(processor) -> dict:
    from gpiozero import LED

    pin = processor.config.pins.status_led_gpio
    item = f"status LED (GPIO {pin})"
    try:
        if processor.led is None:
            processor.led = LED(pin, pin_factory=processor.agent.context.hardware.pin_factory)
        led = processor.led
        led.on()
        lit = led.is_lit
        led.off()
        dark = not led.is_lit
    except Exception as error:  # gpiozero raises many kinds; each is a failed item
        return {"item": item, "pass": False, "detail": f"{type(error).__name__}: {error}"}
    return {"item": item, "pass": lit and dark,
            "detail": "on and off" if lit and dark else f"lit={lit} after on, dark={dark} after off"}


def reboot(processor, args, source):
    processor.in_loop(lambda: setattr(processor.request, "source", f"reboot from {_where(source)}"))
    _command(processor, REBOOT_COMMAND, source, "reboot")
    return "SAFE now; reboot requested", {"command": REBOOT_COMMAND}


def shutdown(processor, args, source):
    def apply():
        agent = processor.agent
        agent.supervisor.shutdown.power_off(agent.clock(), Finding(
            "console:shutdown", Level.SHUTDOWN, source,
            f"a technician asked for a shutdown from {_where(source)}"))
        return agent.supervisor.shutdown.grace_s

    grace_s = processor.in_loop(apply)
    return (f"shutting down: workload stopped now (TERM), killed and powered off after "
            f"{grace_s:g} s", {"grace_s": grace_s})


def _command(processor, argv: list[str], source: str, what: str) -> None:
    """Run a system command (systemctl) on the caller's thread, never the loop's: it may
    take seconds."""
    try:
        processor.run_command(argv)
    except Exception as error:  # a failed systemctl must be reported, not raised into a transport
        raise CommandRefused(f"{' '.join(argv)} failed ({error}); the board stays in SAFE: "
                             f"{what} it by hand, or `mode auto` to resume") from None
    processor.in_loop(lambda: _event(processor, f"console:{what}", " ".join(argv),
                                     f"{what} requested from {_where(source)}", "critical"))
