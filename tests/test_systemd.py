"""The units and systemd drop-ins in systemd/ pass `systemd-analyze verify` and keep the promises
of DESIGN.md §4 and §6: watchdog, failsafe on stop and on giving up, sandbox, hardware watchdog."""

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
UNITS = sorted(p.name for p in SYSTEMD_DIR.iterdir() if p.suffix in (".service", ".slice"))
HOST_UNITS = Path("/usr/lib/systemd/system")
# Executables the units name, created as stubs in the verify root (they run on the Pi, not here).
UNIT_EXECUTABLES = ("opt/hearth/bin/hearth", "usr/bin/systemd-tmpfiles", "bin/sh")


def read_unit(path: Path) -> configparser.ConfigParser:
    """Unit files repeat keys (ReadWritePaths=, DeviceAllow=); keep every value, newline-joined."""
    class MultiDict(dict):
        def __setitem__(self, key, value):
            if key in self and isinstance(value, list):
                super().__getitem__(key).extend(value)
            else:
                super().__setitem__(key, value)

    parser = configparser.RawConfigParser(dict_type=MultiDict, strict=False,
                                          empty_lines_in_values=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory) -> Path:
    """A root laid out like the image: systemd's own units, ours, and stub executables."""
    root = tmp_path_factory.mktemp("verify-root")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(SYSTEMD_DIR, root / "etc/systemd/system", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.d"))
    for executable in UNIT_EXECUTABLES:
        stub = root / executable
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def systemd_verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)


def test_every_unit_file_is_covered():
    assert {"hearth-agent.service", "hearth-leader.service", "hearth-site.service",
            "hearth-console.service", "hearth-failsafe.service"} <= set(UNITS)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify_without_a_warning(verify_root, unit):
    result = systemd_verify(verify_root, unit)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_fails_when_a_unit_names_a_missing_executable(verify_root, tmp_path):
    """The check has teeth: the same verify call rejects a unit whose ExecStart is missing."""
    broken = (SYSTEMD_DIR / "hearth-agent.service").read_text().replace(
        "ExecStart=/opt/hearth/bin/hearth agent", "ExecStart=/opt/hearth/bin/not-installed agent")
    unit = verify_root / "etc/systemd/system/hearth-broken.service"
    unit.write_text(broken)
    try:
        result = systemd_verify(verify_root, "hearth-broken.service")
    finally:
        unit.unlink()
    assert result.returncode != 0 and "not-installed" in result.stderr


def test_verify_reports_an_unknown_directive(verify_root):
    unit = verify_root / "etc/systemd/system/hearth-typo.service"
    unit.write_text((SYSTEMD_DIR / "hearth-agent.service").read_text().replace(
        "WatchdogSec=", "WatchdogSecs="))
    try:
        result = systemd_verify(verify_root, "hearth-typo.service")
    finally:
        unit.unlink()
    assert "Unknown key" in result.stderr


def test_agent_unit_is_watched_restarted_and_ends_in_the_failsafe():
    unit = read_unit(SYSTEMD_DIR / "hearth-agent.service")
    service, section = unit["Service"], unit["Unit"]
    assert service["Type"] == "notify"
    assert 0 < int(service["WatchdogSec"].rstrip("s")) <= 10
    assert service["Restart"] == "on-failure"
    assert "hearth failsafe" in service["ExecStopPost"]
    assert int(section["StartLimitBurst"]) >= 2 and section["StartLimitIntervalSec"]
    assert section.get("StartLimitAction", "none") == "none"
    assert section["OnFailure"] == "hearth-failsafe.service"
    failsafe = read_unit(SYSTEMD_DIR / "hearth-failsafe.service")["Service"]
    assert failsafe["ExecStart"] == "/opt/hearth/bin/hearth failsafe"


def test_agent_unit_runs_sandboxed_as_the_hearth_user():
    service = read_unit(SYSTEMD_DIR / "hearth-agent.service")["Service"]
    assert service["User"] == "hearth"
    assert set(service["SupplementaryGroups"].split()) == {"gpio", "i2c"}
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == service["PrivateTmp"] == service["ProtectHome"] == "yes"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    writable = service["ReadWritePaths"].split()
    assert writable == ["-/sys/devices/system/cpu/cpufreq",
                        "-/sys/fs/cgroup/hearth.slice/hearth-workload.slice",
                        "-/sys/fs/cgroup/hearth.slice/hearth-heatfill.slice"]


def test_hardware_watchdog_is_at_most_the_pi_limit_of_15_seconds():
    manager = read_unit(SYSTEMD_DIR / "system.conf.d/60-hearth-watchdog.conf")["Manager"]
    seconds = int(manager["RuntimeWatchdogSec"].removesuffix("s"))
    assert 0 < seconds <= 15


def test_journal_is_persistent_size_limited_and_overrides_the_vendor_volatile_dropin():
    dropin = SYSTEMD_DIR / "journald.conf.d/60-hearth-persistent.conf"
    journal = read_unit(dropin)["Journal"]
    assert journal["Storage"] == "persistent"
    assert journal["SystemMaxUse"].endswith("M") and int(journal["SystemMaxUse"][:-1]) <= 128
    assert sorted([dropin.name, "40-rpi-volatile-storage.conf"])[-1] == dropin.name


def test_tmpfiles_lines_are_well_formed():
    lines = [line.split() for line in
             (SYSTEMD_DIR / "tmpfiles.d/hearth.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert {line[1] for line in lines} == {
        "/sys/devices/system/cpu/cpufreq/policy*/scaling_max_freq",
        "/sys/fs/cgroup/hearth.slice/hearth-*.slice/cpu.max",
        "/sys/fs/cgroup/hearth.slice/hearth-*.slice/cpuset.cpus",
        "/sys/fs/cgroup/hearth.slice/hearth-*.slice/cgroup.freeze"}
    assert all(line[0] == "z" and line[2] == "0664" and line[4] == "hearth" for line in lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles needs root to chown")
def test_tmpfiles_gives_the_hearth_group_the_actuator_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nhearth:x:990:990::/:/bin/false\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nhearth:x:990:\n")
    targets = [tmp_path / f"sys/devices/system/cpu/cpufreq/policy{n}/scaling_max_freq"
               for n in (0, 4)]
    for slice_name in ("hearth-workload.slice", "hearth-heatfill.slice"):
        group = tmp_path / "sys/fs/cgroup/hearth.slice" / slice_name
        targets += [group / "cpu.max", group / "cpuset.cpus", group / "cgroup.freeze"]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("0\n")
        target.chmod(0o644)
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                    str(SYSTEMD_DIR / "tmpfiles.d/hearth.conf")], check=True, capture_output=True)
    for target in targets:
        status = target.stat()
        assert (status.st_gid, status.st_mode & 0o777) == (990, 0o664), target


LEADER_BOARD_CONFIG = """board_type = "oil-carrier"

[[sensor]]
name = "water_in"
id = "28-0316a2795eff"

[[sensor]]
name = "water_out"
id = "28-0316a27f1c2a"

[[sensor]]
name = "module_in"
kind = "ds18b20"
id = "28-00000000aaa1"
role = "module_water_in"

[[sensor]]
name = "module_flow"
kind = "flow"
pin = 27
pulses_per_litre = 450.0
role = "module_flow"

[[sensor]]
name = "module_oil"
kind = "tmp117"
bus = 3
address = 0x48
role = "module_oil"
"""


def test_the_leader_unit_reaches_exactly_the_devices_its_config_names(verify_root, tmp_path):
    """Issue 14: PrivateDevices=yes left `hearth leader` without its module flow meter and
    TMP117. Provisioning writes a drop-in from the leader's config: the I2C bus of the TMP117,
    the gpiochip of the flow meter's pin (the DS18B20 is sysfs), their groups, nothing else."""
    (tmp_path / "leader-m1.toml").write_text(LEADER_BOARD_CONFIG)
    inventory = tmp_path / "site.toml"
    inventory.write_text('site = "maple-school"\nbroker = "hearth-broker.local"\n'
                         '[[module]]\nname = "m1"\n[[board]]\nmodule = "m1"\nname = "b01"\n'
                         '[[leader]]\nmodule = "m1"\nboard = "b01"\nconfig = "leader-m1.toml"\n')
    out = tmp_path / "out"
    result = subprocess.run([REPO / "scripts/provision", inventory, out], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    dropin = out / "units/m1/hearth-leader.service.d/devices.conf"
    service = read_unit(dropin)["Service"]
    assert service["PrivateDevices"] == "no" and service["DevicePolicy"] == "closed"
    assert service["DeviceAllow"].splitlines() == ["/dev/gpiochip0 rw", "/dev/i2c-3 rw"]
    assert service["SupplementaryGroups"].split() == ["gpio", "i2c"]
    installed = verify_root / "etc/systemd/system/hearth-leader.service.d"
    installed.mkdir()
    shutil.copy(dropin, installed / "devices.conf")
    try:
        result = systemd_verify(verify_root, "hearth-leader.service")
    finally:
        shutil.rmtree(installed)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_leader_unit_does_not_need_a_broker_on_its_own_board():
    """The site broker runs on its own box: the leader waits for the network, not for a local
    Mosquitto."""
    section = read_unit(SYSTEMD_DIR / "hearth-leader.service")["Unit"]
    assert "mosquitto.service" not in section.get("Wants", "")


def test_the_console_unit_may_open_the_usb_gadget_serial_its_help_suggests():
    service = read_unit(SYSTEMD_DIR / "hearth-console.service")["Service"]
    assert service["DevicePolicy"] == "closed"
    assert "char-ttyGS rw" in service["DeviceAllow"].splitlines()
