"""What the board is doing: the command list, status, sensors, limits and events."""

import dataclasses
import math

from agent.console.spec import CommandRefused, command_named


def _number(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def help_(processor, args, source):
    commands = processor.commands
    if args["command"]:
        command = command_named(commands, args["command"])
        if command is None:
            raise CommandRefused(f"no command {args['command']!r}; type `help` for the list")
        lines = [f"usage: {command.usage()}", f"  {command.help}"]
        lines += [f"  {arg.name}: {arg.help} ({arg.expected()})" for arg in command.args]
        if command.destructive:
            lines.append("  asks for confirmation (or add --yes)")
        lines.append("  add --json for machine-readable output")
        return "\n".join(lines), {"usage": command.usage(), "help": command.help}
    width = max(len(command.usage()) for command in commands)
    lines = [f"{command.usage():<{width}}  {command.help.split('.')[0]}"
             for command in commands]
    lines.append("Add --json to any command for JSON; `help <command>` for details.")
    return "\n".join(lines), {"commands": [c.name for c in commands]}


def status(processor, args, source):
    def snapshot():
        state = processor.agent.status()
        report = state.last_report
        return {
            "board": processor.board_id, "mode": state.mode,
            "setpoint_w": state.setpoint_w,
            "setpoint_source": state.setpoint_source,
            "console_mode": processor.console_mode(),
            "override_left_s": (None if processor.override_until is None
                                else max(0.0, processor.override_until - state.time)),
            "power_w": report.power_w if report else None,
            "command_w": report.command_w if report else None,
            "selected": report.selected if report else None,
            "soc_c": report.soc_c if report else None,
            "oil_c": report.oil_c if report else None,
            "freq_mhz": report.settings.freq_khz // 1000 if report else None,
            "latched": sorted(state.latched),
            "active": list(state.active),
            "tune": processor.tune.plan.loop if processor.tune else None,
            "calibrating_flow": processor.calibration is not None,
            "refused_commands": processor.refused_commands,
        }

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
    readings = processor.in_loop(lambda: list(processor.agent.status().readings.values()))
    lines = []
    for reading in readings:
        value = "-" if reading.value is None else f"{reading.value:.3f} {reading.unit}"
        lines.append(f"{reading.sensor:<28} {value:>16}  {reading.validity.value:<8} "
                     f"{reading.reason}".rstrip())
    return "\n".join(lines) or "no readings yet", {"readings": [r.as_dict() for r in readings]}


def limits(processor, args, source):
    configured = dataclasses.asdict(processor.config.limits)

    def current():
        state = processor.agent.status()
        report = state.last_report
        return state.mode, _finite(report.allowed_w if report is not None else None)

    mode, ceiling_w = processor.in_loop(current)
    lines = [f"{key:<16} {value:g}" for key, value in configured.items()]
    lines.append(f"now: mode {mode}, power ceiling "
                 f"{'none' if ceiling_w is None else f'{ceiling_w:.2f} W'}")
    return "\n".join(lines), {"configured": configured, "mode": mode,
                              "ceiling_w": ceiling_w}


def events(processor, args, source):
    def collect():
        agent = processor.agent
        return agent.clock(), agent.latest_events(args["count"])

    now, latest = processor.in_loop(collect)
    lines = [f"{now - e.time:8.1f} s ago  {e.severity:<8} {e.cause}: {e.message}"
             for e in latest]
    return "\n".join(lines) or "no events", {"now": now,
                                             "events": [e.as_dict() for e in latest]}
