"""The one shutdown path: every FAULT and the final SHUTDOWN go through here.

Each step runs in its own guard, so a failing step (a full disk, a dead broker, a poweroff
command that does not exist) never stops the next one, and each failure leaves an operator
message of its own. Calling it again for the same cause does nothing more.
"""

import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

from agent.safety.checks import Finding
from agent.safety.events import Event, EventLog


def run_command(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=30)


class ShutdownPath:
    def __init__(self, events: EventLog, workload_dir: Path,
                 save_latched: Callable[[dict[str, str]], None],
                 poweroff_command: list[str], run: Callable[[list[str]], None] = run_command,
                 send_signal: Callable[[int, int], None] = os.kill,
                 grace_s: float = 10.0):
        self.events = events
        self.workload_dir = workload_dir
        self.save_latched = save_latched
        self.poweroff_command = poweroff_command
        self.run = run
        self.send_signal = send_signal
        self.grace_s = grace_s
        self.started = False
        self._terminated_at: float | None = None
        self._powered_off = False

    def _guard(self, now: float, step: str, action: Callable[[], None]) -> str | None:
        """Run one step; None if it worked, else what went wrong (also an event)."""
        try:
            action()
            return None
        except Exception as error:  # every step is guarded: one failure must not stop the rest
            self.events.record(Event(now, f"shutdown_step_failed:{step}", str(error),
                                     f"{step} failed: {error}", "SHUTDOWN", "error"))
            return str(error)

    def fault(self, now: float, finding: Finding, latched: dict[str, str]) -> None:
        """A latched fault: SAFE settings come from the mode; keep the latch across restarts."""
        self.persist_latched(now, latched)

    def persist_latched(self, now: float, latched: dict[str, str]) -> str | None:
        """Save the latched faults; None, or why they could not be saved."""
        return self._guard(now, "persist latched faults",
                           lambda: self.save_latched(dict(latched)))

    def power_off(self, now: float, finding: Finding | None = None) -> None:
        """Stop the workload (TERM, then KILL after the grace period), then run poweroff.
        Started with the finding that calls for it, then called every period (without one)
        until done; each stage happens once."""
        if not self.started and finding is not None:
            self.started = True
            self.events.record(Event(now, "shutdown", finding.value,
                                     f"shutting down: {finding.message}", "SHUTDOWN",
                                     "critical"))
            self._guard(now, "stop workload (TERM)", lambda: self._signal(signal.SIGTERM))
            self._terminated_at = now
            return
        if not self.started or self._powered_off or now - self._terminated_at < self.grace_s:
            return
        self._powered_off = True
        self._guard(now, "stop workload (KILL)",
                    lambda: (self.workload_dir / "cgroup.kill").write_text("1\n"))
        if self._guard(now, "poweroff", lambda: self.run(self.poweroff_command)) is None:
            self.events.record(Event(now, "poweroff", " ".join(self.poweroff_command),
                                     "poweroff command ran", "SHUTDOWN", "critical"))
        else:
            self.events.record(Event(now, "poweroff_failed", " ".join(self.poweroff_command),
                                     "the poweroff command failed: the board stays in SAFE "
                                     "settings with its workload stopped; power it off by hand",
                                     "SHUTDOWN", "critical"))

    def _signal(self, signum: int) -> None:
        pids = [int(p) for p in (self.workload_dir / "cgroup.procs").read_text().split()]
        for pid in pids:
            self.send_signal(pid, signum)
