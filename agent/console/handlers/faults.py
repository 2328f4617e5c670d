"""Faults and stopping the board: the fault list, reset, reboot and shutdown."""

from agent.console.spec import CommandRefused, described_source

REBOOT_COMMAND = ["systemctl", "reboot"]


def faults(processor, args, source):
    def collect():
        status = processor.agent.status()
        return (dict(status.latched),
                [{"cause": f.cause, "level": f.level.name, "value": f.value,
                  "message": f.message} for f in status.findings])

    latched, active = processor.in_loop(collect)
    lines = [f"latched {cause}: {message}" for cause, message in sorted(latched.items())]
    lines += [f"active  {f['cause']} ({f['level']}): {f['message']}" for f in active]
    if latched:
        lines.append("`reset` clears latched faults once their causes are gone")
    return "\n".join(lines) or "no faults", {"latched": latched, "active": active}


def reset(processor, args, source):
    ok, reason = processor.in_loop(processor.agent.reset_faults)
    if not ok:
        raise CommandRefused(reason)
    return reason, {"reset": True, "message": reason}


def reboot(processor, args, source):
    processor.in_loop(lambda: processor.request.hold(f"reboot from {described_source(source)}"))
    _command(processor, REBOOT_COMMAND, source, "reboot")
    return "SAFE now; reboot requested", {"command": REBOOT_COMMAND}


def shutdown(processor, args, source):
    grace_s = processor.in_loop(lambda: processor.agent.power_off(
        "console:shutdown", source,
        f"a technician asked for a shutdown from {described_source(source)}"))
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
    processor.in_loop(lambda: processor.agent.record(
        f"console:{what}", " ".join(argv), f"{what} requested from {described_source(source)}",
        "critical"))
