"""The one SAFE actuator setting (DESIGN.md section 4) shared by the governor, the shutdown path
and `hearth failsafe`: what it writes, and that one failed step never stops the others."""

from pathlib import Path

from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.safe_actuators import (MIN_HEATFILL_CPUS, MIN_WORKLOAD_QUOTA_CPUS,
                                          safe_actuators)
from agent.seam import Hardware

WORKLOAD = "hearth.slice/hearth-workload.slice"
HEATFILL = "hearth.slice/hearth-heatfill.slice"


def board(root: Path, policies: int = 2) -> Hardware:
    """A board at full power: each policy capped at its top point, both groups running."""
    for number in range(policies):
        policy = root / f"sys/devices/system/cpu/cpufreq/policy{number}"
        policy.mkdir(parents=True)
        (policy / "scaling_available_frequencies").write_text("600000 1000000 1500000\n")
        (policy / "affected_cpus").write_text(f"{number}\n")
        (policy / "scaling_max_freq").write_text("1500000\n")
    for group in (WORKLOAD, HEATFILL):
        directory = root / "sys/fs/cgroup" / group
        directory.mkdir(parents=True)
        (directory / "cgroup.freeze").write_text("0\n")
        (directory / "cpu.max").write_text("max 100000\n")
    return Hardware(root=root)


def drivers(hardware: Hardware, policies: int = 2):
    return ([CpuFreqPolicy(hardware, f"policy{number}") for number in range(policies)],
            CpuGroup(hardware, WORKLOAD), CpuGroup(hardware, HEATFILL))


def read(root: Path, path: str) -> str:
    return (root / path).read_text().strip()


def test_every_policy_at_its_lowest_point_and_both_groups_frozen_at_their_minimum(tmp_path):
    hardware = board(tmp_path)
    assert safe_actuators(*drivers(hardware)) == []
    for number in range(2):
        assert read(tmp_path, f"sys/devices/system/cpu/cpufreq/policy{number}/"
                              "scaling_max_freq") == "600000"
    assert read(tmp_path, f"sys/fs/cgroup/{WORKLOAD}/cgroup.freeze") == "1"
    assert read(tmp_path, f"sys/fs/cgroup/{HEATFILL}/cgroup.freeze") == "1"
    assert read(tmp_path, f"sys/fs/cgroup/{WORKLOAD}/cpu.max") == (
        f"{round(MIN_WORKLOAD_QUOTA_CPUS * 100_000)} 100000")
    assert read(tmp_path, f"sys/fs/cgroup/{HEATFILL}/cpu.max") == (
        f"{max(1000, round(MIN_HEATFILL_CPUS * 100_000))} 100000")


def test_the_workload_may_keep_running_at_its_minimum_quota(tmp_path):
    hardware = board(tmp_path)
    (tmp_path / f"sys/fs/cgroup/{WORKLOAD}/cgroup.freeze").write_text("1\n")
    assert safe_actuators(*drivers(hardware), freeze_workload=False) == []
    assert read(tmp_path, f"sys/fs/cgroup/{WORKLOAD}/cgroup.freeze") == "0"
    assert read(tmp_path, f"sys/fs/cgroup/{WORKLOAD}/cpu.max") == "5000 100000"
    assert read(tmp_path, f"sys/fs/cgroup/{HEATFILL}/cgroup.freeze") == "1"
    assert read(tmp_path, "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq") == "600000"


def test_a_failed_step_is_reported_and_the_others_still_run(tmp_path):
    hardware = board(tmp_path)
    policies, workload, heatfill = drivers(hardware)
    for name in ("cgroup.freeze", "cpu.max"):
        (tmp_path / f"sys/fs/cgroup/{HEATFILL}" / name).unlink()
    (tmp_path / f"sys/fs/cgroup/{HEATFILL}").rmdir()
    failures = safe_actuators(policies, workload, heatfill)
    assert len(failures) == 2
    assert failures[0].startswith("could not freeze the heat-fill (hearth-heatfill.slice): ")
    assert "hearth-heatfill.slice/cgroup.freeze" in failures[0]
    assert failures[1].startswith("could not set the heat-fill's quota (hearth-heatfill.slice)")
    assert read(tmp_path, f"sys/fs/cgroup/{WORKLOAD}/cgroup.freeze") == "1"
    for number in range(2):
        assert read(tmp_path, f"sys/devices/system/cpu/cpufreq/policy{number}/"
                              "scaling_max_freq") == "600000"


def test_a_policy_that_cannot_be_capped_is_named_with_its_lowest_frequency(tmp_path):
    hardware = board(tmp_path)
    policies, workload, heatfill = drivers(hardware)
    max_freq = tmp_path / "sys/devices/system/cpu/cpufreq/policy1/scaling_max_freq"
    max_freq.unlink()
    max_freq.mkdir()  # a write to it fails as a read-only sysfs file would
    failures = safe_actuators(policies, workload, heatfill)
    assert len(failures) == 1
    assert failures[0].startswith("could not cap policy1 at its lowest frequency, 600000 kHz: ")
    assert read(tmp_path, "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq") == "600000"


def test_kept_drivers_write_only_what_changed(tmp_path):
    """The governor applies SAFE every period while SAFE lasts: the files are written once."""
    policies, workload, heatfill = drivers(board(tmp_path))

    def writes() -> list[int]:
        return [policy.max_freq.writes for policy in policies] + [
            group.writes for group in (workload.freeze_file, workload.cpu_max,
                                       heatfill.freeze_file, heatfill.cpu_max)]

    safe_actuators(policies, workload, heatfill)
    assert writes() == [1] * 6
    assert safe_actuators(policies, workload, heatfill) == []
    assert writes() == [1] * 6
