"""The golden image proven under real systemd: a Debian root built with mmdebstrap in the
Raspberry Pi's partition layout, turned into the golden image by the image builder, booted in
QEMU with systemd as PID 1, and checked from inside (docs/vm-test.md).

The Raspberry Pi's own kernel and firmware do not run in QEMU, and a full arm64 root under
emulation takes longer than the whole run may, so the systemd checks boot an amd64 build of the
same root (same suite, same packages, same image builder); the aarch64 extension is loaded on
an emulated aarch64 CPU by agent/deploy/vm_arm64.py. Every boot goes through the Pi firmware's
choice of slot (agent/deploy/vm_firmware.py). Downloaded packages and the built base root are
cached, keyed by what went into them, so a second run skips the network."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from agent.config import load_config
from agent.deploy.disk import Ext4Partition, disk_id, run, slot_layout
from agent.deploy.image import (FROM_DISTRIBUTION, INSTALL_DIR, REPO, StagedFile, fetch_wheels,
                                install_requires, normalize, requirement_name, write_root)
from agent.deploy.units import leader_devices_dropin
from agent.deploy.vm_firmware import TRYBOOT_REBOOT, BootPlan, plan_boot
from agent.drivers.ina2xx import ina219_calibration

SUITE = "trixie"
"""Raspberry Pi OS's current release is built on it (Python 3.13)."""
TARGET_PYTHON = (3, 13)
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "linux-image-amd64",
                 "initramfs-tools", "python3", "python3-gpiozero", "i2c-tools", "rauc",
                 "rauc-service")
"""What Raspberry Pi OS Lite brings that the golden image relies on (systemd, udev, python3,
its gpiozero), RAUC for updates, a kernel with initramfs for QEMU and i2c-tools for the test's
registers."""
BOOT_PARTITION_MIB = 64
SECTOR = 512
FIRST_SECTOR = 8192
I2C_BUS = 0
"""i2c-stub's bus in the VM: QEMU's SMBus controllers are kept from loading, so it is first."""
PI4_OPERATING_POINTS_KHZ = tuple(range(600_000, 1_500_001, 100_000))
CHIPS = {"ina219": 0x40, "tmp117": 0x48}
DS18B20_IDS = ("28-00000a0e0001", "28-00000a0e0002")
GUEST_DIR = "/usr/local/lib/hearth-vm"
SETTINGS_PATH = "/etc/hearth-vm/hardware.json"
CPUFREQ_POLICY = "/sys/devices/system/cpu/cpufreq/policy0"
SLICES = tuple(f"/sys/fs/cgroup/hearth.slice/hearth-{name}.slice" for name in ("workload",
                                                                               "heatfill"))
WORKLOAD_FREEZE = f"{SLICES[0]}/cgroup.freeze"
CHECK_LINE = re.compile(r"vm-(test|log): .*")
BOOTLOADER_FACTS_DIR = "/run/hearth-vm/bootloader"
"""Not under /run/hearth: that is the agent's RuntimeDirectory, which systemd removes each time
the agent stops (a crash-looping agent took the facts with it)."""

HARDWARE_UNIT = f"""# Test VM only: the board's hardware as far as the kernel can emulate it, laid out before the
# agent starts (agent/deploy/vm_guest_hardware.py).
[Unit]
Description=Hearth VM test: emulated board hardware
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target
Before=hearth-agent.service hearth-failsafe.service sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 {GUEST_DIR}/hardware.py

[Install]
WantedBy=sysinit.target
"""

BOOTLOADER_SCRIPT = f"""#!/bin/sh
# Test VM only: the boot facts the Raspberry Pi's firmware leaves in the device tree
# (/proc/device-tree/chosen/bootloader: partition, tryboot, big-endian 32-bit numbers), which
# scripts/vm-test, playing the firmware, passes as hearth.bootloader=partition:N,tryboot:0|1.
set -eu
mkdir -p {BOOTLOADER_FACTS_DIR}
facts=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in hearth.bootloader=*) facts="${{arg#hearth.bootloader=}}" ;; esac
done
IFS=,
for fact in $facts; do
  v="${{fact#*:}}"
  octal="$(printf '\\%03o' $((v >> 24 & 255)) $((v >> 16 & 255)) $((v >> 8 & 255)) $((v & 255)))"
  printf "$octal" > "{BOOTLOADER_FACTS_DIR}/${{fact%%:*}}"
done
"""

BOOTLOADER_UNIT = f"""# Test VM only: the firmware's boot facts as files, before anything reads them
[Unit]
Description=Hearth VM test: the firmware's boot facts
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh {GUEST_DIR}/bootloader-facts.sh

[Install]
WantedBy=sysinit.target
"""

CHECKS_UNIT = f"""# Test VM only: the checks scripts/vm-test runs once the agent's unit has started; the VM
# powers off when they end (agent/deploy/vm_guest_checks.py).
[Unit]
Description=Hearth VM test: checks
After=multi-user.target hearth-agent.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {GUEST_DIR}/checks.py
ExecStopPost=/usr/bin/systemctl --no-block poweroff
StandardOutput=journal

[Install]
WantedBy=multi-user.target
"""


class VmTestError(RuntimeError):
    """The VM test could not be built or booted; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: int
    failed: int
    lines: list[str]


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- base root and Pi layout

def base_root(cache: Path, log) -> Path:
    """A Debian root as a tarball, built with mmdebstrap once per package list; the .debs
    are kept between builds, so a rebuild downloads only the package lists."""
    tarball = cache / f"base-{SUITE}-amd64-{cache_key(SUITE, BASE_PACKAGES)}.tar"
    if tarball.exists():
        log(f"vm-test: base root {tarball.name} from the cache")
        return tarball
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")  # runs may overlap
    try:
        run(["mmdebstrap", "--quiet", "--variant=apt", "--arch=amd64",
             "--include=" + ",".join(BASE_PACKAGES),
             "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
             f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
             f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
             "--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb",
             "--format=tar", SUITE, str(partial)])
        partial.replace(tarball)
    finally:
        partial.unlink(missing_ok=True)
    log(f"vm-test: built the base root with mmdebstrap in {time.monotonic() - started:.0f} s")
    return tarball


def pi_layout_image(tarball: Path, work: Path) -> Path:
    """The base root as a Raspberry Pi OS image: partition 1 FAT with config.txt and
    cmdline.txt, partition 2 ext4 with the root (its kernel and initramfs in /boot)."""
    rootfs = work / "rootfs"
    rootfs.mkdir()
    run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(rootfs)])
    _only(rootfs.glob("boot/vmlinuz-*"), "kernel")
    _only(rootfs.glob("boot/initrd.img-*"), "initramfs")
    boot = work / "boot.part"
    run(["mkfs.vfat", "-C", "-F", "32", "-n", "bootfs", str(boot),
         str(BOOT_PARTITION_MIB * 1024)])
    (work / "config.txt").write_text("# Raspberry Pi OS's stock config.txt (abridged)\n"
                                     "dtparam=audio=on\ncamera_auto_detect=1\n"
                                     "display_auto_detect=1\narm_64bit=1\n")
    (work / "cmdline.txt").write_text("console=serial0,115200 console=tty1 root=/dev/vda2 "
                                      "rootfstype=ext4 fsck.repair=yes rootwait\n")
    for name in ("config.txt", "cmdline.txt"):
        run(["mcopy", "-i", str(boot), str(work / name), f"::{name}"])
    used_kib = int(run(["du", "-sk", str(rootfs)], text=True).stdout.split()[0])
    root_mib = used_kib // 1024 * 3 // 2 + 256
    root = work / "root.part"
    run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(rootfs), str(root), f"{root_mib}M"])
    shutil.rmtree(rootfs)
    boot_sectors = BOOT_PARTITION_MIB * 1024 * 1024 // SECTOR
    root_start = FIRST_SECTOR + boot_sectors
    root_sectors = root_mib * 1024 * 1024 // SECTOR
    image = work / "base.img"
    with image.open("wb") as handle:
        handle.truncate((root_start + root_sectors) * SECTOR)
    table = (f"label: dos\nstart={FIRST_SECTOR}, size={boot_sectors}, type=c\n"
             f"start={root_start}, size={root_sectors}, type=83\n")
    run(["sfdisk", "--quiet", str(image)], input=table.encode())
    for part, start in ((boot, FIRST_SECTOR), (root, root_start)):
        run(["dd", f"if={part}", f"of={image}", "bs=1M", "conv=notrunc,sparse",
             f"seek={start * SECTOR}", "oflag=seek_bytes"])
        part.unlink()
    return image


def _only(paths, what: str) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise VmTestError(f"the base root has {len(found)} {what} files in /boot, expected one")
    return found[0]


def wheelhouse(cache: Path) -> Path:
    """The image builder's aarch64 wheels, downloaded once per requirement list."""
    requirements = [r for r in install_requires()
                    if normalize(requirement_name(r)) not in FROM_DISTRIBUTION]
    directory = cache / f"wheels-{cache_key(requirements, TARGET_PYTHON)}"
    if not directory.exists():
        partial = cache / f"wheels.{os.getpid()}.partial"  # runs may overlap
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            fetch_wheels(requirements, TARGET_PYTHON, partial).rename(directory)
        except OSError:
            if not directory.exists():  # else another run got there first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return directory


# ---------------------------------------------------------------- the test bench in the image

def hardware_settings() -> dict:
    """Register words and sysfs files for the helper, and what the checks expect. The INA219
    reads 5.0 V, 0.8 A, 4.0 W through the calibration the agent writes; the TMP117 40 C."""
    calibration, current_lsb_a = ina219_calibration(0.1, 3.0)
    bus_word = round(5.0 / 4e-3) << 3 | 0b10            # conversion ready
    ina219 = {"0x01": round(0.8 * 0.1 / 10e-6), "0x02": bus_word,
              "0x04": round(0.8 / current_lsb_a), "0x03": round(4.0 / (20 * current_lsb_a)),
              "0x05": calibration}
    tmp117 = {"0x0f": 0x0117, "0x01": 0x2220, "0x00": round(40.0 / 0.0078125)}
    khz = PI4_OPERATING_POINTS_KHZ
    files = {f"{CPUFREQ_POLICY}/{name}": f"{value}\n" for name, value in (
        ("scaling_available_frequencies", " ".join(map(str, khz)) + " "),
        ("cpuinfo_min_freq", khz[0]), ("cpuinfo_max_freq", khz[-1]),
        ("scaling_min_freq", khz[0]), ("scaling_max_freq", khz[-1]),
        ("scaling_cur_freq", khz[-1]), ("scaling_governor", "ondemand"),
        ("affected_cpus", "0 1"), ("related_cpus", "0 1"))}
    files["/sys/class/thermal/thermal_zone0/temp"] = "45000\n"
    files["/sys/class/thermal/thermal_zone0/type"] = "cpu-thermal\n"
    files["/sys/bus/w1/devices/w1_bus_master1/therm_bulk_read"] = "0\n"
    files["/sys/bus/w1/devices/w1_bus_master1/w1_master_slaves"] = "\n".join(DS18B20_IDS) + "\n"
    for number, device in enumerate(DS18B20_IDS):
        # w1_therm's temperature file (millidegrees), which the driver reads when a kernel
        # gives no w1_slave
        files[f"/sys/bus/w1/devices/{device}/temperature"] = f"{20000 + 5000 * number}\n"
    return {
        "i2c": {"bus": I2C_BUS, "chips": {f"0x{CHIPS['ina219']:02x}": ina219,
                                          f"0x{CHIPS['tmp117']:02x}": tmp117}},
        "files": files,
        "checks": {"cpufreq_policy": CPUFREQ_POLICY, "min_khz": khz[0], "top_khz": khz[-1],
                   "workload_freeze": WORKLOAD_FREEZE, "i2c_bus": I2C_BUS,
                   "state_line_readings": ["power=4.00 W", "oil=40.00 C"], "oil_c": 40.0,
                   "journals": journal_expectations(),
                   "documented_exposure": documented_exposure(),
                   "actuator_files": [f"{CPUFREQ_POLICY}/scaling_max_freq", *(
                       f"{slice_dir}/{name}" for slice_dir in SLICES
                       for name in ("cpu.max", "cpuset.cpus", "cgroup.freeze"))]},
    }


def journal_expectations() -> dict[str, tuple[str, str]]:
    """Journal name -> (directory, size cap as journald prints it), from the image's drop-ins:
    a runtime journal always (until the flush), a system journal when storage persists."""
    settings = {}
    for dropin in sorted((REPO / "systemd" / "journald.conf.d").glob("*.conf")):
        for line in dropin.read_text().splitlines():
            key, equals, value = line.partition("=")
            if equals and not line.startswith("#"):
                settings[key.strip()] = value.strip()
    journals = {"Runtime": ("/run/log/journal", journald_size(settings["RuntimeMaxUse"]))}
    if settings.get("Storage") == "persistent":
        journals["System"] = ("/var/log/journal", journald_size(settings["SystemMaxUse"]))
    return journals


def journald_size(text: str) -> str:
    """'64M' as journald writes it in its log lines: whole numbers bare, else one decimal."""
    number = float(text[:-1])
    return f"{number:.0f}{text[-1]}" if number.is_integer() else f"{number:.1f}{text[-1]}"


def documented_exposure() -> str:
    """The agent unit's exposure figure that docs/deployment.md gives, which the VM must measure."""
    match = re.search(r"Overall exposure level for hearth-agent\.service: (\d+\.\d)",
                      (REPO / "docs" / "deployment.md").read_text())
    return match.group(1) if match else "none"


def board_files() -> dict[str, str]:
    """The VM board's config: the oil carrier's definition with its I2C chips on the stub's
    bus; the flow meter stays measured but has no role, since Debian's kernels build neither
    gpio-sim nor gpio-mockup and a flow role that never reads would hold the board SAFE. The
    board is its module's leader too, its TMP117 the module's oil; the site broker is not in
    the VM, so the links of both roles and of the updater (its own login) retry."""
    carrier = (REPO / "hardware" / "boards" / "oil-carrier.toml").read_text()
    board = re.sub(r"^bus = 1$", f"bus = {I2C_BUS}", carrier, flags=re.MULTILINE)
    board = board.replace('role = "flow"\n', "")
    config = (f'board_type = "vm-carrier"\n\n[identity]\nsite = "vm"\nmodule = "m1"\n'
              f'board = "b01"\n\n[[sensor]]\nname = "water_in"\nid = "{DS18B20_IDS[0]}"\n\n'
              f'[[sensor]]\nname = "water_out"\nid = "{DS18B20_IDS[1]}"\n\n'
              '[mqtt]\nbrokers = ["127.0.0.1"]\n\n[leader]\noil_reading = "oil"\n')
    return {"/etc/hearth/boards/vm-carrier.toml": board, "/etc/hearth/hearth.toml": config,
            "/etc/hearth/updater-mqtt.toml": '[mqtt]\nbrokers = ["127.0.0.1"]\n'}


def add_test_bench(image: Path, work: Path, etc_hearth: dict[str, str] | None = None,
                   checks: tuple[str, str] | None = None) -> None:
    """The VM-only files, written after the image builder into both root slots: the board's
    config (on the data partition, where /etc/hearth lives), the firmware's boot facts, the
    hardware helper, and the checks (script, unit: vm_guest_checks.py by default). Nothing of
    the golden image is changed."""
    stage = work / "bench"
    stage.mkdir()
    checks_text, checks_unit = checks or (
        Path(__file__).with_name("vm_guest_checks.py").read_text(), CHECKS_UNIT)
    config = {**board_files(), **(etc_hearth or {})}
    data_files = [StagedFile("/etc/hearth/boards", 0o755, directory=True)]
    for path, text in config.items():
        local = stage / path.lstrip("/").replace("/", "_")
        local.write_text(text)
        data_files.append(StagedFile(path, 0o644, source=local))
    contents = {
        SETTINGS_PATH: json.dumps(hardware_settings(), indent=1),
        f"{GUEST_DIR}/bootloader-facts.sh": BOOTLOADER_SCRIPT,
        f"{GUEST_DIR}/hardware.py": Path(__file__).with_name("vm_guest_hardware.py").read_text(),
        f"{GUEST_DIR}/checks.py": checks_text,
        "/etc/systemd/system/hearth-vm-bootloader.service": BOOTLOADER_UNIT,
        "/etc/systemd/system/hearth-vm-hardware.service": HARDWARE_UNIT,
        "/etc/systemd/system/hearth-vm-checks.service": checks_unit,
    }
    files = [StagedFile(d, 0o755, directory=True) for d in (
        "/etc/hearth-vm", "/usr/local/lib/hearth-vm",
        "/etc/systemd/system/sysinit.target.wants")]
    for path, text in contents.items():
        local = stage / path.lstrip("/").replace("/", "_")
        local.write_text(text)
        files.append(StagedFile(path, 0o644, source=local))
    for unit in ("hearth-vm-bootloader.service", "hearth-vm-hardware.service"):
        files.append(StagedFile(f"/etc/systemd/system/sysinit.target.wants/{unit}", 0o777,
                                link_target=f"/etc/systemd/system/{unit}"))
    files.append(StagedFile("/etc/systemd/system/multi-user.target.wants/hearth-vm-checks.service",
                            0o777, link_target="/etc/systemd/system/hearth-vm-checks.service"))
    layout = slot_layout(image)
    for root_part in (layout.root_a, layout.root_b):
        write_root(Ext4Partition(image, root_part), files)
    write_root(Ext4Partition(image, layout.data), data_files)


# ---------------------------------------------------------------- booting

def kernel_command_line(plan: BootPlan) -> str:
    """The chosen slot's cmdline.txt, then the VM's own settings: systemd as PID 1 on the
    serial console (the last console= is /dev/console), QEMU's SMBus controllers blacklisted
    so i2c-stub is bus 0, the technician console's unit masked (the VM has no serial0 for it
    and its restarts would only slow the emulated CPU), a kernel panic restarting the VM as
    the Pi's watchdog would restart the board (QEMU's emulated SMP has panicked the guest
    kernel, about 33 s into a boot), and the firmware's boot facts."""
    return (f"{plan.cmdline} console=ttyS0,115200 quiet panic=10 "
            "modprobe.blacklist=i2c_piix4,i2c_i801 systemd.mask=hearth-console.service "
            "systemd.firstboot=off systemd.show_status=error " + plan.bootloader_argument())


KERNEL_PANIC = "end Kernel panic"
"""The kernel's last line of a panic: with panic=10 it restarts (a reset, as the Pi's watchdog
gives a board), which QEMU's -no-reboot ends without the 'Restarting system' line."""


@dataclasses.dataclass(frozen=True)
class VmRun:
    """One boot, from the firmware's choice to QEMU's exit: the console's lines and how it
    ended ('tryboot-reboot', 'reboot', 'poweroff' or 'killed': a timeout or a power cut)."""

    plan: BootPlan
    lines: list[str]
    ended: str


def run_vm(image: Path, plan: BootPlan, timeout_s: float, log, qemu_extra: tuple = (),
           on_line=None, power_cut: threading.Event | None = None) -> VmRun:
    """Boot once with -no-reboot (a guest reboot ends QEMU, and the firmware plays again);
    relay the vm-test/vm-log lines and hand every console line to on_line. Setting power_cut
    kills QEMU at once, as pulling the plug would."""
    command = ["qemu-system-x86_64", "-M", "pc", "-m", "1024", "-smp", "2", "-nographic",
               "-no-reboot", "-kernel", str(plan.kernel), "-initrd", str(plan.initrd),
               "-append", kernel_command_line(plan),
               "-drive", f"file={image},format=raw,if=virtio", *qemu_extra]
    lines, ended_event = [], threading.Event()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    deadline = threading.Timer(timeout_s, process.kill)
    deadline.start()

    def plug() -> None:
        while not ended_event.wait(0.1):
            if power_cut is not None and power_cut.is_set():
                process.kill()
                return

    threading.Thread(target=plug, daemon=True).start()
    try:
        for raw in process.stdout:
            line = raw.strip()
            lines.append(line)
            check = CHECK_LINE.search(line)
            if check:
                log(check.group(0))
            if on_line is not None:
                on_line(line)
        process.wait()
    finally:
        deadline.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        ended_event.set()
    text = "\n".join(lines[-30:])
    ended = ("killed" if process.returncode == -signal.SIGKILL else
             "tryboot-reboot" if TRYBOOT_REBOOT in text else
             "reboot" if "reboot: Restarting system" in text or KERNEL_PANIC in text
             else "poweroff")
    return VmRun(plan, lines, ended)


def boot(image: Path, work: Path, timeout_s: float, log) -> Outcome:
    """Boot the committed slot as the firmware would and relay the checks' lines as they
    arrive; the VM powers itself off, or is killed at timeout_s."""
    plan = plan_boot(image, disk_id(image), False, work)
    result = run_vm(image, plan, timeout_s, log)
    passed = failed = 0
    for line in result.lines:
        done = re.search(r"vm-test: done (\d+) passed, (\d+) failed", line)
        if done:
            passed, failed = int(done.group(1)), int(done.group(2))
    if passed + failed == 0:
        why = (f"did not finish its checks in {timeout_s:.0f} s" if result.ended == "killed"
               else "stopped before its checks ended")
        raise VmTestError(f"the VM {why}; its console's last lines:\n" +
                          "\n".join(result.lines[-40:]))
    return Outcome(passed, failed, result.lines)


def leader_dropin(work: Path) -> Path:
    """The leader unit's device drop-in for the VM board's config, as scripts/provision
    writes it from a leader's config."""
    etc = work / "etc-hearth"
    for path, text in board_files().items():
        local = etc / Path(path).relative_to("/etc/hearth")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
    dropin = leader_devices_dropin(load_config(etc / "hearth.toml"), "the VM board's config")
    if dropin is None:
        raise VmTestError("the VM board's config gives the leader no device; its [leader] "
                          "oil_reading should name the TMP117")
    path = work / "devices.conf"
    path.write_text(dropin)
    return path


def build_golden(cache: Path, work: Path, log, build_options: tuple = (),
                 etc_hearth: dict[str, str] | None = None,
                 checks: tuple[str, str] | None = None) -> Path:
    """Base root -> Pi-layout image -> scripts/build-image (a leader board's image, in two
    slots) -> the test bench added."""
    base = pi_layout_image(base_root(cache, log), work)
    golden = work / "golden.img"
    started = time.monotonic()
    result = subprocess.run([str(REPO / "scripts" / "build-image"), str(base), str(golden),
                             "--wheelhouse", str(wheelhouse(cache)), "--leader",
                             "--leader-devices", str(leader_dropin(work)), *build_options],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise VmTestError(f"scripts/build-image failed ({result.returncode}):\n"
                          f"{result.stdout}{result.stderr}")
    log(f"vm-test: scripts/build-image made the golden image in "
        f"{time.monotonic() - started:.0f} s")
    base.unlink()
    add_test_bench(golden, work, etc_hearth, checks)
    return golden
