"""The checks scripts/vm-test runs inside the booted golden image (hearth-vm-checks.service).

Runs inside the VM under the system's python3 with the standard library only, as root, once
the agent's unit has been started by systemd as PID 1. Each check prints one line as it ends,
`vm-test: <name> <value> PASS|FAIL`, on the serial console the host reads; the last line is
`vm-test: done <passed> passed, <failed> failed`, then the VM powers off.
"""

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

AGENT = "hearth-agent.service"
LEADER = "hearth-leader.service"
LEADER_METRICS = "http://127.0.0.1:9105/metrics"
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
    """The journal's messages after cursor (all of this boot's for "")."""
    start = [f"--after-cursor={cursor}"] if cursor else ["-b"]
    return subprocess.run(["journalctl", "--no-pager", "-o", "cat", *start, *matches],
                          capture_output=True, text=True).stdout


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


WRITE_BACK_EACH = """import sys
for path in sys.argv[1:]:
    try:
        with open(path, "r+") as handle:
            value = handle.read()
            handle.seek(0)
            handle.write(value)
        print(path, "written")
    except OSError as error:
        print(path, error.strerror)
"""


def sandbox_writes_its_actuators(checks: Checks, settings: dict) -> None:
    """ReadWritePaths= and tmpfiles.d let the hearth user in the unit write the actuator files
    (each its own value back). How /sys itself is mounted in the unit is shown alongside: here
    ProtectKernelTunables= left it writable (docs/vm-test.md)."""
    writable = settings["actuator_files"]
    pid = main_pid()
    answers = in_sandbox(pid, WRITE_BACK_EACH, *writable, as_hearth=True).splitlines()
    written = [path for path in writable if f"{path} written" in answers]
    checks.report("sandbox-writable-paths", len(written) == len(writable),
                  f"hearth in the unit wrote {len(written)} of {len(writable)} actuator files"
                  + (f" (not: {[a for a in answers if not a.endswith('written')]})"
                     if len(written) != len(writable) else "")
                  + f"; /sys in the unit: {mount_of(pid, '/sys/kernel')}")


def mount_of(pid: int, path: str) -> str:
    """The mount point and options under which path lies in the process's namespace."""
    best = ("", "")
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(
                best[0]):
            best = (point, fields[5])
    return " ".join(best)


def journal_entries(cursor: str, *matches: str) -> list[tuple[int, str]]:
    """(monotonic microseconds, message) of the journal's entries after cursor."""
    output = subprocess.run(["journalctl", "--no-pager", "-o", "json",
                             f"--after-cursor={cursor}", *matches],
                            capture_output=True, text=True).stdout
    entries = []
    for line in output.splitlines():
        entry = json.loads(line)
        if isinstance(entry.get("MESSAGE"), str):
            entries.append((int(entry["__MONOTONIC_TIMESTAMP"]), entry["MESSAGE"]))
    return entries


def start_limit_runs_on_failure(checks: Checks, settings: dict) -> None:
    """Kill the agent until systemd stops restarting it: once the start limit is hit, the unit
    must stay failed, OnFailure= be triggered, and the failsafe finish after that moment. (With
    RestartMode=normal OnFailure= fires after every failure too; a start that finds the
    failsafe still running from the previous one joins that run.)"""
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
    wait_for(lambda: show(FAILSAFE, "ActiveState")["ActiveState"] != "activating", 30)
    time.sleep(5)  # longer than RestartSec=: a restart would have begun by now
    state = show(AGENT, "ActiveState")["ActiveState"]
    entries = journal_entries(cursor, "-u", AGENT)
    limit_us = next((at for at, message in entries
                     if "Start request repeated too quickly" in message), None)
    triggered = limit_us is not None and any(
        at >= limit_us and "Triggering OnFailure=" in message for at, message in entries)
    failsafe = show(FAILSAFE, "ExecMainExitTimestampMonotonic", "Result", "ExecMainStatus")
    finished_after = limit_us is not None and int(
        failsafe["ExecMainExitTimestampMonotonic"] or 0) >= limit_us
    cap = read(f"{settings['cpufreq_policy']}/scaling_max_freq")
    checks.report("start-limit-onfailure",
                  state == "failed" and triggered and finished_after
                  and failsafe["Result"] == "success" and cap == str(settings["min_khz"]),
                  f"after {kills} kills: start limit {'hit' if limit_us else 'not hit'}, "
                  f"{AGENT} stays {state}, OnFailure= {'triggered' if triggered else 'silent'}, "
                  f"{FAILSAFE} {'finished after it' if finished_after else 'did not run after it'}"
                  f" ({failsafe['Result']}, exit {failsafe['ExecMainStatus']}), "
                  f"scaling_max_freq={cap}")


def agent_reads_its_chips(checks: Checks, settings: dict) -> None:
    """The agent's state lines carry what the i2c-stub registers hold, read through
    /dev/i2c-N by the hearth user the unit runs as."""
    node = f"/dev/i2c-{settings['i2c_bus']}"
    expected = settings["state_line_readings"]
    line = wait_for(lambda: next((l for l in journal_since("", "-u", AGENT).splitlines()
                                  if l.startswith("mode=") and all(e in l for e in expected)),
                                 None), 30)
    info = os.stat(node)
    group = subprocess.run(["stat", "-c", "%U:%G %a", node], capture_output=True,
                           text=True).stdout.strip()
    checks.report("agent-reads-i2c", bool(line) and info.st_mode & 0o006 == 0,
                  f"{node} ({group}) -> '{line or 'no state line with ' + ', '.join(expected)}'")


def agent_user_and_actuator_files(checks: Checks, settings: dict) -> None:
    """The agent runs as hearth with the device groups, and tmpfiles.d gave that group the
    actuator files it writes (the unit's ExecStartPre= applies it)."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{main_pid()}/status").read_text().splitlines())
    user = pwd.getpwuid(int(status["Uid"].split()[1])).pw_name
    groups = sorted(grp.getgrgid(int(gid)).gr_name for gid in status["Groups"].split())
    checks.report("agent-user", user == "hearth" and {"gpio", "i2c"} <= set(groups),
                  f"effective user {user}, groups {','.join(groups)}")
    owners = {}
    for path in settings["actuator_files"]:
        info = os.stat(path)
        owners[path] = (f"{pwd.getpwuid(info.st_uid).pw_name}:{grp.getgrgid(info.st_gid).gr_name}"
                        f" {info.st_mode & 0o777:o}")
    wrong = {path: owner for path, owner in owners.items() if owner != "root:hearth 664"}
    checks.report("tmpfiles-actuators", not wrong,
                  f"{len(owners) - len(wrong)} of {len(owners)} root:hearth 664"
                  + (f"; not: {wrong}" if wrong else ""))


def in_sandbox(pid: int, code: str, *args: str, as_hearth: bool) -> str:
    """Run python code in the cgroup (the device policy) and mount namespace (the read-only
    file system) of a unit's main process, as root or as the hearth user with its groups."""
    cgroup = Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[1]
    user = ["setpriv", "--reuid=hearth", "--regid=hearth", "--init-groups"] if as_hearth else []
    command = " ".join(["exec", "nsenter", f"--target={pid}", "--mount", "--", *user,
                        "/usr/bin/python3", "-c", '"$0"', '"$@"'])
    return subprocess.run(["sh", "-c", f"echo $$ > /sys/fs/cgroup{cgroup}/cgroup.procs && "
                           + command, code, *args], capture_output=True, text=True).stdout.strip()


OPEN_EACH = """import sys
for path in sys.argv[1:]:
    try:
        open(path, "r+b", buffering=0).close()
        print(path, "opened")
    except OSError as error:
        print(path, error.strerror)
"""


def sandbox_keeps_to_its_devices(checks: Checks, settings: dict) -> None:
    """Inside the agent's sandbox the hearth user opens the I2C bus; even root cannot open
    the disk, which it can outside: the unit's DevicePolicy=closed refuses it."""
    pid = main_pid()
    node = f"/dev/i2c-{settings['i2c_bus']}"
    allowed = in_sandbox(pid, OPEN_EACH, node, as_hearth=True)
    outside = subprocess.run(["/usr/bin/python3", "-c", OPEN_EACH, "/dev/vda"],
                             capture_output=True, text=True).stdout.strip()
    refused = in_sandbox(pid, OPEN_EACH, "/dev/vda", as_hearth=False)
    checks.report("sandbox-devices", allowed == f"{node} opened" and
                  outside == "/dev/vda opened" and refused == "/dev/vda Operation not permitted",
                  f"hearth in the unit: '{allowed}'; root outside: '{outside}'; "
                  f"root in the unit: '{refused}'")
    written = in_sandbox(pid, "import sys\ntry:\n open(sys.argv[1], 'w')\n"
                               "except OSError as e:\n print(e.strerror)", "/etc/hearth/x",
                               as_hearth=False)
    checks.report("sandbox-read-only", written == "Read-only file system",
                  f"root in the unit writing /etc/hearth/x: '{written}'")


def module_oil_c() -> float | None:
    try:
        with urllib.request.urlopen(LEADER_METRICS, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("hearth_module_oil_celsius")), None)


def leader_keeps_to_its_devices(checks: Checks, settings: dict) -> None:
    """The leader reads its module's oil through the device its drop-in allows, and its
    sandbox refuses every other device."""
    state = wait_for(lambda: (s := show(LEADER, "ActiveState", "MainPID", "User"))[
        "ActiveState"] in ("active", "failed") and s, 90)
    if not state or state["ActiveState"] != "active":
        checks.report("leader-reads-oil", False, f"{LEADER} {state and state['ActiveState']}")
        return
    oil_c = wait_for(module_oil_c, 60)
    checks.report("leader-reads-oil", oil_c == settings["oil_c"],
                  f"{LEADER} as {state['User']}: hearth_module_oil_celsius {oil_c} "
                  f"(the TMP117's {settings['oil_c']})")
    pid = int(state["MainPID"])
    node = f"/dev/i2c-{settings['i2c_bus']}"
    allowed = in_sandbox(pid, OPEN_EACH, node, as_hearth=True)
    refused = in_sandbox(pid, OPEN_EACH, "/dev/vda", "/dev/ttyS0", as_hearth=False).splitlines()
    checks.report("leader-devices", allowed == f"{node} opened" and refused == [
        "/dev/vda Operation not permitted", "/dev/ttyS0 Operation not permitted"],
                  f"hearth in the unit: '{allowed}'; root in the unit: {refused}")


def journald_dropin_in_force(checks: Checks, settings: dict) -> None:
    """journald reports the storage and the caps the image's drop-in sets."""
    said = subprocess.run(["journalctl", "-b", "--no-pager", "-o", "cat", "-t",
                           "systemd-journald"], capture_output=True, text=True).stdout
    for name, (directory, cap) in settings["journals"].items():
        line = next((l for l in said.splitlines() if l.startswith(f"{name} Journal ({directory}")
                     and f"max {cap}," in l), "")
        checks.report(f"journald-{name.lower()}", bool(line),
                      f"'{line}'" if line else f"no '{name} Journal ({directory}... max {cap}' line")


def security_exposure(checks: Checks, settings: dict) -> None:
    """systemd's own rating of the agent's sandbox, to match the figure the docs give."""
    output = subprocess.run(["systemd-analyze", "security", "--no-pager", AGENT],
                            capture_output=True, text=True).stdout
    line = next((l for l in output.splitlines() if "Overall exposure level" in l), "")
    measured = line.split(": ", 1)[-1].split()[0] if line else "none"
    documented = settings["documented_exposure"]
    checks.report("security-exposure", measured == documented,
                  f"systemd-analyze security {AGENT}: {measured} (docs/deployment.md: "
                  f"{documented})")


def show_journal(console) -> None:
    """The units' last journal lines on the console, so a failure can be read on the host."""
    log = subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "80",
                          "-u", "hearth-vm-hardware.service", "-u", AGENT, "-u", FAILSAFE,
                          "-u", LEADER],
                         capture_output=True, text=True).stdout
    for line in log.splitlines():
        console.write(f"vm-log: {line}\r\n")


def bytecode_is_cached(checks: Checks, settings: dict) -> None:
    """The image ships Python sources only and /opt is read-only to the units: the bytecode an
    agent start compiles must land in its CacheDirectory=, or every start compiles again."""
    cached = list(Path("/var/cache/hearth/pycache").rglob("*.pyc"))
    owners = {pwd.getpwuid(path.stat().st_uid).pw_name for path in cached}
    checks.report("bytecode-cached", len(cached) > 20 and "hearth" in owners,
                  f"{len(cached)} .pyc files under /var/cache/hearth/pycache, written by "
                  f"{','.join(sorted(owners)) or 'nobody'}")


def mount_source(target: str) -> tuple[str, str]:
    """(source, file system type) of what is mounted at target, as findmnt reports it."""
    fields = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", target],
                            capture_output=True, text=True).stdout.split()
    return (fields[0], fields[1]) if len(fields) == 2 else ("nothing", "")


def booted_slot_and_data(checks: Checks, settings: dict) -> None:
    """The firmware's choice reached the system: slot A's root and boot partition, the boot
    facts laid out as the device tree has them, and the data partition under what an update
    must keep."""
    arguments = Path("/proc/cmdline").read_text().split()
    root = next((a for a in arguments if a.startswith("root=")), "none")
    facts = {name: int.from_bytes(Path(f"/run/hearth-vm/bootloader/{name}").read_bytes(), "big")
             for name in ("partition", "tryboot")
             if Path(f"/run/hearth-vm/bootloader/{name}").exists()}
    checks.report("slot-a-booted", root.endswith("-05") and mount_source("/")[0] == "/dev/vda5"
                  and facts == {"partition": 2, "tryboot": 0},
                  f"{root} on {mount_source('/')[0]}, firmware facts {facts}")
    checks.report("boot-partition-mounted", mount_source("/boot/firmware") == ("/dev/vda2", "vfat"),
                  f"/boot/firmware from {' '.join(mount_source('/boot/firmware'))}")
    data = mount_source("/data")
    binds = {path: subprocess.run(["findmnt", "-n", "-o", "SOURCE", path], capture_output=True,
                                  text=True).stdout.strip() for path in ("/etc/hearth",
                                                                          "/var/lib/hearth")}
    checks.report("data-partition", data == ("/dev/vda7", "ext4") and binds == {
        "/etc/hearth": "/dev/vda7[/etc/hearth]", "/var/lib/hearth": "/dev/vda7[/var/lib/hearth]"},
                  f"/data from {' '.join(data)}; bind mounts {binds}")


def main() -> int:
    settings = json.loads(SETTINGS_FILE.read_text())["checks"]
    with open(CONSOLE, "w") as console:
        checks = Checks(console)
        if agent_running(checks, settings):
            booted_slot_and_data(checks, settings)
            agent_reads_its_chips(checks, settings)
            agent_user_and_actuator_files(checks, settings)
            bytecode_is_cached(checks, settings)
            sandbox_keeps_to_its_devices(checks, settings)
            sandbox_writes_its_actuators(checks, settings)
            hung_agent_is_killed(checks, settings)
            start_limit_runs_on_failure(checks, settings)
        leader_keeps_to_its_devices(checks, settings)
        journald_dropin_in_force(checks, settings)
        security_exposure(checks, settings)
        if checks.failed:
            show_journal(console)
        line = f"vm-test: done {checks.passed} passed, {checks.failed} failed"
        print(line, flush=True)
        console.write(line + "\r\n")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
