"""The golden image under real systemd: scripts/vm-test builds a Debian root in the Raspberry
Pi's partition layout, turns it into the golden image with scripts/build-image, boots it in a
virtual machine with systemd as PID 1 and runs its checks there (docs/vm-test.md)."""

import re
import subprocess
import time
from pathlib import Path

import pytest

from agent.deploy.vm_firmware import (FirmwareError, autoboot_partition, replay_journal,
                                       root_partition_number)

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
    "slot-a-booted", "boot-partition-mounted", "data-partition",
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


AUTOBOOT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


def test_the_harness_reads_autoboot_txt_as_the_firmware_does():
    """[all] always, [tryboot] only on the boot after a tryboot reboot, the last setting that
    applies wins, other filters (Pi models) never apply in the VM, comments ignored."""
    assert autoboot_partition(AUTOBOOT, tryboot=False) == 2
    assert autoboot_partition(AUTOBOOT, tryboot=True) == 3
    committed_b = AUTOBOOT.replace("boot_partition=2", "boot_partition=3").replace(
        "[tryboot]\nboot_partition=3", "[tryboot]\nboot_partition=2")
    assert (autoboot_partition(committed_b, False), autoboot_partition(committed_b, True)) == (3, 2)
    other = "# tryboot A/B\n[pi5]\nboot_partition=7\n[all]\ntryboot_a_b=1 # on\nboot_partition=3\n"
    assert autoboot_partition(other, tryboot=True) == 3
    with pytest.raises(FirmwareError, match="tryboot_a_b"):
        autoboot_partition("[all]\nboot_partition=2\n", tryboot=False)
    with pytest.raises(FirmwareError, match="boot_partition="):
        autoboot_partition("[all]\ntryboot_a_b=1\nboot_partition=two\n", tryboot=False)
    with pytest.raises(FirmwareError, match="line 2"):
        autoboot_partition("[all]\ngarbage\n", tryboot=False)


def test_the_harness_takes_the_root_slot_from_cmdline_txt_on_this_disk_only():
    assert root_partition_number("console=ttyS0 root=PARTUUID=4e639091-06 rw", "4e639091") == 6
    for cmdline in ("root=PARTUUID=deadbeef-05 rw", "root=/dev/vda5", "rw"):
        with pytest.raises(FirmwareError):
            root_partition_number(cmdline, "4e639091")


def test_the_harness_replays_a_root_journal_a_power_cut_left_before_it_reads_the_kernel(
        tmp_path):
    """A power cut leaves the root's journal unreplayed; debugfs reads without it, so the
    firmware harness replays it first, as the kernel would on mount (seen: a cut root's /boot
    read as empty)."""
    offset = 1 << 20
    image, old, new = tmp_path / "disk.img", tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"kernel before the cut".ljust(4096, b"\0"))
    new.write_bytes(b"kernel in the journal".ljust(4096, b"\0"))
    subprocess.run(["mkfs.ext4", "-q", "-b", "4096", "-E", f"offset={offset}", str(image),
                    "16M"], check=True)
    device = f"{image}?offset={offset}"
    subprocess.run(["debugfs", "-w", "-R", f"write {old} vmlinuz", device], check=True,
                   capture_output=True)
    block = subprocess.run(["debugfs", "-R", "bmap vmlinuz 0", device], check=True,
                           capture_output=True, text=True).stdout.strip()
    script = tmp_path / "journal.debugfs"
    script.write_text(f"jo\njw -b {block} {new}\njc\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), device], check=True, capture_output=True)

    def read() -> bytes:
        return subprocess.run(["debugfs", "-R", "cat vmlinuz", device], check=True,
                              capture_output=True).stdout[:21]

    def dirty() -> bool:
        return b"needs_recovery" in subprocess.run(["dumpe2fs", "-h", device],
                                                   capture_output=True).stdout

    assert (dirty(), read()) == (True, b"kernel before the cut")
    replay_journal(image, offset)
    assert read() == b"kernel in the journal"
    replay_journal(image, offset)                   # the same transactions once more
    assert read() == b"kernel in the journal"


def test_refused_bundles_compare_raucs_slot_status_without_the_boot_id_every_boot_writes():
    from agent.deploy.vm_updates import slot_status
    booted = b"[system]\nboot-id=843f5731-a5e8-4fc0-b719-87eefea14c2e\n"
    assert slot_status(None) == slot_status(booted) == b""
    installed = booted + b"\n[slot.rootfs.1]\nbundle.version=1.2.0\nstatus=ok\n"
    assert slot_status(installed) == b"[slot.rootfs.1]\nbundle.version=1.2.0\nstatus=ok"


def test_the_vm_firmware_facts_live_outside_every_units_runtime_directory():
    """systemd removes a unit's RuntimeDirectory= each time the unit stops: a crash-looping
    agent took /run/hearth/bootloader with it, and the trial's updater could not tell which
    slot it had booted."""
    from agent.deploy.vm import BOOTLOADER_FACTS_DIR
    runtime = [f"/run/{name}" for unit in (REPO / "systemd").glob("*.service")
               for line in unit.read_text().splitlines() if line.startswith("RuntimeDirectory=")
               for name in line.split("=", 1)[1].split()]
    assert "/run/hearth" in runtime
    assert not [d for d in runtime if (BOOTLOADER_FACTS_DIR + "/").startswith(d + "/")]
