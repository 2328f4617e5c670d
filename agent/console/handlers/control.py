"""Who sets the board's power from the console: a local setpoint, the modes, a SAFE request."""

from agent.console.spec import CommandRefused, described_source
from agent.safety.checks import Finding, Level


class TechnicianRequest:
    """A supervisor check that holds the board in SAFE while a technician asks for it."""

    def __init__(self) -> None:
        self.source = ""

    def hold(self, source: str) -> None:
        self.source = source

    def release(self) -> None:
        self.source = ""

    def check(self, snapshot) -> list[Finding]:
        if not self.source:
            return []
        return [Finding("console:safe", Level.SAFE, self.source,
                        f"a technician put the board in SAFE ({self.source}); `mode auto` "
                        "releases it")]


def setpoint(processor, args, source):
    watts, minutes = args["watts"], args["minutes"]

    def apply():
        agent = processor.agent
        if source == "leader":
            return agent.set_setpoint(watts, "leader")
        accepted, reason = agent.set_setpoint(watts, "local")
        if accepted:
            processor.override_until = agent.clock() + minutes * 60.0
            processor.request.release()
            agent.record("console:setpoint", watts,
                         f"local setpoint {watts:g} W for {minutes:g} min from "
                         f"{described_source(source)}; `mode auto` returns control to the "
                         "leader")
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
    where = described_source(source)

    def apply():
        agent = processor.agent
        if wanted == "safe":
            processor.request.hold(f"from {where}")
            agent.record("console:mode", "safe",
                         f"SAFE requested from {where}; `mode auto` releases it")
            return None
        processor.request.release()
        if wanted == "auto":
            agent.clear_local_setpoint()
            processor.override_until = None
            agent.record("console:mode", "auto",
                         f"automatic control from {where}: the leader's setpoint (or the "
                         "fallback) applies again", "info")
            return None
        held_w = agent.setpoint_w
        agent.set_setpoint(held_w, "local")
        processor.override_until = agent.clock() + processor.hold_minutes * 60.0
        agent.record("console:mode", "hold",
                     f"setpoint held at {held_w:g} W for {processor.hold_minutes:g} min from "
                     f"{where}")
        return held_w

    held_w = processor.in_loop(apply)
    text = {"safe": "SAFE requested: lowest frequency, workload at minimum, heat-fill off; "
                    "`mode auto` releases it",
            "auto": "automatic: the leader's setpoint (or the fallback) applies",
            "hold": f"holding {held_w or 0:g} W for {processor.hold_minutes:g} min, whatever "
                    "the leader says; `mode auto` ends it"}[wanted]
    return text, {"mode": wanted, "held_w": held_w}
