"""The checks scripts/vm-test runs inside the booted golden image (hearth-vm-checks.service).

Runs inside the VM under the system's python3 with the standard library only, as root, once
the agent's unit has been started by systemd as PID 1. Each check prints one line as it ends,
`vm-test: <name> <value> PASS|FAIL`, on the serial console the host reads; the last line is
`vm-test: done <passed> passed, <failed> failed`, then the VM powers off.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

AGENT = "hearth-agent.service"
FAILSAFE = "hearth-failsafe.service"
SETTINGS_FILE = Path("/etc/hearth-vm/hardware.json")
CONSOLE = "/dev/ttyS0"
POLL_S = 0.2


class Checks:
    """Prints each verdict as it is reached; counts them for the closing line."""

    def __init__(self, console):
        self.console = console
        self.failed = 0
        self.passed = 0

    def report(self, name: str, passed: bool, value: str) -> bool:
        line = f"vm-test: {name} {value} {'PASS' if passed else 'FAIL'}"
        print(line, flush=True)
        self.console.write(line + "\r\n")
        self.console.flush()
        if passed:
            self.passed += 1
        else:
            self.failed += 1
        return passed


def show(unit: str, *properties: str) -> dict[str, str]:
    output = subprocess.run(["systemctl", "show", unit, *(f"--property={p}" for p in properties)],
                            capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def wait_for(predicate, timeout_s: float):
    """predicate()'s first truthy value within timeout_s, else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    return None


def journal_cursor() -> str:
    output = subprocess.run(["journalctl", "-n", "0", "--show-cursor", "--quiet"],
                            capture_output=True, text=True).stdout
    return output.strip().rsplit("cursor: ", 1)[-1]


def journal_since(cursor: str, *matches: str) -> str:
    return subprocess.run(["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor}",
                           *matches], capture_output=True, text=True).stdout


def main_pid() -> int:
    return int(show(AGENT, "MainPID")["MainPID"])


def read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        return f"unreadable ({error.strerror})"


def agent_running(checks: Checks, settings: dict) -> bool:
    state = wait_for(lambda: (s := show(AGENT, "ActiveState", "SubState", "MainPID", "Type",
                                        "StatusText", "User", "Result"))["ActiveState"]
                     in ("active", "failed") and s, 120)
    if not state or state["ActiveState"] != "active":
        checks.report("agent-active", False, f"ActiveState={state and state['ActiveState']}")
        return False
    checks.report("agent-active", True, f"{state['ActiveState']}/{state['SubState']} "
                  f"MainPID={state['MainPID']} User={state['User']}")
    # Type=notify: systemd reports the unit active only after the agent's READY=1.
    checks.report("agent-ready", state["Type"] == "notify" and state["StatusText"] != "",
                  f"Type={state['Type']} READY=1 seen, StatusText='{state['StatusText']}'")
    first = int(show(AGENT, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    time.sleep(3)
    watchdog = show(AGENT, "WatchdogTimestampMonotonic", "WatchdogUSec")
    moved_s = (int(watchdog["WatchdogTimestampMonotonic"]) - first) / 1e6
    return checks.report("watchdog-pets", moved_s > 0,
                         f"WatchdogUSec={watchdog['WatchdogUSec']} last pet moved {moved_s:.2f} s "
                         "in 3 s")


def hung_agent_is_killed(checks: Checks, settings: dict) -> None:
    """SIGSTOP the agent after raising its actuators as a running agent would have left them:
    systemd's watchdog must kill it and ExecStopPost='hearth failsafe' put them back to SAFE."""
    policy = settings["cpufreq_policy"]
    freeze = settings["workload_freeze"]
    before = show(AGENT, "MainPID", "NRestarts")
    cursor = journal_cursor()
    os.kill(int(before["MainPID"]), signal.SIGSTOP)
    stopped_at = time.monotonic()
    Path(f"{policy}/scaling_max_freq").write_text(f"{settings['top_khz']}\n")
    Path(freeze).write_text("0\n")
    restarting = wait_for(lambda: show(AGENT, "SubState")["SubState"] == "auto-restart", 30)
    killed_after_s = time.monotonic() - stopped_at
    log = journal_since(cursor, "-u", AGENT)
    timeout_line = next((line for line in log.splitlines() if "atchdog timeout" in line), "")
    checks.report("watchdog-kill", bool(restarting and timeout_line),
                  f"'{timeout_line.strip()}' after {killed_after_s:.1f} s")
    cap = read(f"{policy}/scaling_max_freq")
    checks.report("failsafe-capped", cap == str(settings["min_khz"]),
                  f"scaling_max_freq={cap} (lowest {settings['min_khz']})")
    frozen = read(freeze)
    checks.report("failsafe-frozen", frozen == "1", f"{freeze}={frozen}")
    failsafe_line = next((line for line in journal_since(cursor, "-u", AGENT).splitlines()
                          if "hearth failsafe:" in line), "")
    checks.report("failsafe-journal", "CPU capped" in failsafe_line, f"'{failsafe_line}'")
    again = wait_for(lambda: (s := show(AGENT, "ActiveState", "MainPID", "NRestarts"))[
        "ActiveState"] == "active" and s, 90)
    checks.report("agent-restarted",
                  bool(again) and again["MainPID"] != before["MainPID"]
                  and int(again["NRestarts"]) == int(before["NRestarts"]) + 1,
                  f"MainPID {before['MainPID']} -> {again and again['MainPID']}, NRestarts "
                  f"{before['NRestarts']} -> {again and again['NRestarts']}")


def start_limit_runs_on_failure(checks: Checks) -> None:
    """Kill the agent until systemd stops restarting it: once the start limit is hit, the unit
    must stay failed and OnFailure= must start the failsafe."""
    kills = 0
    cursor = journal_cursor()
    while kills < 10:
        state = wait_for(lambda: (s := show(AGENT, "ActiveState", "MainPID"))[
            "ActiveState"] in ("active", "failed") and s, 90)
        if not state or state["ActiveState"] == "failed":
            break
        cursor = journal_cursor()
        os.kill(int(state["MainPID"]), signal.SIGKILL)
        kills += 1
        wait_for(lambda: show(AGENT, "ActiveState")["ActiveState"] != "active", 30)
    wait_for(lambda: "CPU capped" in journal_since(cursor, "-u", FAILSAFE), 30)
    time.sleep(5)  # longer than RestartSec=: a restart would have begun by now
    state = show(AGENT, "ActiveState")["ActiveState"]
    log = journal_since(cursor).splitlines()
    limit = next((n for n, line in enumerate(log) if "Start request repeated too quickly" in line),
                 None)
    failsafe = next((n for n, line in enumerate(log) if limit is not None and n > limit
                     and "hearth failsafe: CPU capped" in line), None)
    checks.report("start-limit-onfailure", state == "failed" and failsafe is not None,
                  f"after {kills} kills: '{log[limit].split(': ', 1)[-1] if limit else ''}', "
                  f"{AGENT} stays {state}, then {FAILSAFE} "
                  f"{'capped the CPU' if failsafe else 'did not run'}")


def show_journal(console) -> None:
    """The units' last journal lines on the console, so a failure can be read on the host."""
    log = subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "80",
                          "-u", "hearth-vm-hardware.service", "-u", AGENT, "-u", FAILSAFE],
                         capture_output=True, text=True).stdout
    for line in log.splitlines():
        console.write(f"vm-log: {line}\r\n")


def main() -> int:
    settings = json.loads(SETTINGS_FILE.read_text())["checks"]
    with open(CONSOLE, "w") as console:
        checks = Checks(console)
        if agent_running(checks, settings):
            hung_agent_is_killed(checks, settings)
            start_limit_runs_on_failure(checks)
        if checks.failed:
            show_journal(console)
        line = f"vm-test: done {checks.passed} passed, {checks.failed} failed"
        print(line, flush=True)
        console.write(line + "\r\n")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
