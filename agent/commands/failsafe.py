"""`hearth failsafe`: cap the CPU low and freeze the workload, with or without a live agent.

systemd runs it as the agent unit's ExecStopPost=, so however the agent ended (a crash, a
SIGKILL, a watchdog timeout) the board is left in the SAFE settings: every cpufreq policy at
its lowest operating point, the paid work and the heat-fill frozen at their minimum quotas.
It needs nothing but sysfs: no config is required (the cgroups default to the config's
defaults) and it never fails half-way silently. It imports only the standard library and the
modules it writes with, so it starts quickly on a board that is in trouble.
"""

import argparse
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.safe_actuators import safe_actuators
from agent.errors import ConfigError, HardwareError
from agent.seam import Hardware

DEFAULT_GROUPS = ("hearth.slice/hearth-workload.slice", "hearth.slice/hearth-heatfill.slice")
CPUFREQ_DIR = "/sys/devices/system/cpu/cpufreq"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "failsafe", help="cap the CPU to its lowest frequency and freeze the workload",
        description="Cap every cpufreq policy to its lowest frequency, freeze the workload "
        "and heat-fill cgroups. For ExecStopPost=; works with the agent dead.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help="read the cgroup names from here if it is readable")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="where sysfs is (default /)")
    parser.set_defaults(run=run)


def cgroups_from(hardware: Hardware, config_path: Path) -> tuple[CpuGroup, CpuGroup]:
    """The workload and heat-fill groups the config names, else the config's defaults."""
    try:
        actuators = load_config(config_path).actuators
    except (ConfigError, OSError):
        return CpuGroup(hardware, DEFAULT_GROUPS[0]), CpuGroup(hardware, DEFAULT_GROUPS[1])
    return (CpuGroup(hardware, actuators.workload_cgroup, actuators.cpu_period_us),
            CpuGroup(hardware, actuators.heatfill_cgroup, actuators.cpu_period_us))


def cpu_policies(hardware: Hardware) -> tuple[list[CpuFreqPolicy], list[str]]:
    """Every cpufreq policy that can be read, and a line for each one that cannot."""
    policies, failures = [], []
    directories = sorted(hardware.path(CPUFREQ_DIR).glob("policy*"))
    if not directories:
        failures.append(f"no cpufreq policy found under {CPUFREQ_DIR}")
    for directory in directories:
        try:
            policies.append(CpuFreqPolicy(hardware, directory.name))
        except (OSError, HardwareError) as error:
            failures.append(f"could not read {directory.name}'s frequencies, so it is not "
                            f"capped: {error}")
    return policies, failures


def run(args: argparse.Namespace) -> int:
    hardware = Hardware(root=args.root)
    workload, heatfill = cgroups_from(hardware, args.config)
    policies, failures = cpu_policies(hardware)
    failures += safe_actuators(policies, workload, heatfill, freeze_workload=True)
    for failure in failures:
        print(f"<2>hearth failsafe: {failure}; the board may not be capped: check it by hand",
              file=sys.stderr)
    if failures:
        return 1
    print(f"<5>hearth failsafe: CPU capped to its lowest frequency, {workload.dir.name} and "
          f"{heatfill.dir.name} frozen at their minimum quotas")
    return 0
