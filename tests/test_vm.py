"""The golden image under real systemd: scripts/vm-test builds a Debian root in the Raspberry
Pi's partition layout, turns it into the golden image with scripts/build-image, boots it in a
virtual machine with systemd as PID 1 and runs its checks there (docs/vm-test.md)."""

import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK_LINE = re.compile(r"^vm-test: (?P<name>\S+) +(?P<value>.*?) +(?P<verdict>PASS|FAIL)$")
RUN_LIMIT_S = 600

EXPECTED_CHECKS = {
    "agent-active", "agent-ready", "watchdog-pets", "agent-user", "tmpfiles-actuators",
    "watchdog-kill", "failsafe-capped", "failsafe-frozen", "failsafe-journal",
    "agent-restarted", "start-limit-onfailure",
    "agent-reads-i2c", "sandbox-devices", "sandbox-read-only", "sandbox-writable-paths", "leader-reads-oil",
    "leader-devices",
    "journald-runtime", "journald-system", "security-exposure",
    "aarch64-extension-loads", "aarch64-pid-agrees",
}


def test_vm_test_boots_the_golden_image_and_every_check_passes():
    started = time.monotonic()
    result = subprocess.run([str(REPO / "scripts" / "vm-test")], capture_output=True,
                            text=True, timeout=RUN_LIMIT_S + 60)
    elapsed_s = time.monotonic() - started
    checks = {}
    for line in result.stdout.splitlines():
        match = CHECK_LINE.match(line)
        if match:
            checks[match["name"]] = (match["value"], match["verdict"])
    report = result.stdout[-6000:] + result.stderr[-3000:]
    missing = EXPECTED_CHECKS - set(checks)
    assert not missing, f"checks never reported: {sorted(missing)}\n{report}"
    failed = {name: value for name, (value, verdict) in checks.items() if verdict == "FAIL"}
    assert not failed, f"failed checks: {failed}\n{report}"
    assert result.returncode == 0, report
    assert elapsed_s < RUN_LIMIT_S, f"vm-test took {elapsed_s:.0f} s, over {RUN_LIMIT_S} s"
