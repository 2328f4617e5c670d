"""`hearth failsafe`: cap the CPU low and freeze the workload, with or without a live agent.

systemd runs it as the agent unit's ExecStopPost=, so however the agent ended (a crash, a
SIGKILL, a watchdog timeout) the board is left capped at its lowest operating point with the
paid work frozen and the heat-fill stopped. It needs nothing but sysfs: no config is required
(the cgroups default to the config's defaults) and it never fails half-way silently.
"""

import argparse
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigError
from agent.seam import Hardware

DEFAULT_GROUPS = ("hearth.slice/hearth-workload.slice", "hearth.slice/hearth-heatfill.slice")


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


def cgroups_from(config_path: Path) -> tuple[str, ...]:
    try:
        actuators = load_config(config_path).actuators
    except (ConfigError, OSError):
        return DEFAULT_GROUPS
    return (actuators.workload_cgroup, actuators.heatfill_cgroup)


def apply_failsafe(hardware: Hardware, groups: tuple[str, ...]) -> list[str]:
    """Do every step, each on its own; return a line per step that failed."""
    failures = []
    policies = sorted(hardware.path("/sys/devices/system/cpu/cpufreq").glob("policy*"))
    if not policies:
        failures.append("no cpufreq policy found under /sys/devices/system/cpu/cpufreq")
    for policy in policies:
        try:
            lowest = (policy / "cpuinfo_min_freq").read_text().strip()
            (policy / "scaling_max_freq").write_text(lowest + "\n")
        except OSError as error:
            failures.append(f"{policy.name}: could not cap the frequency: {error}")
    for group in groups:
        directory = hardware.path("/sys/fs/cgroup") / group
        try:
            (directory / "cgroup.freeze").write_text("1\n")
        except OSError as error:
            failures.append(f"{group}: could not freeze: {error}")
    return failures


def run(args: argparse.Namespace) -> int:
    groups = cgroups_from(args.config)
    failures = apply_failsafe(Hardware(root=args.root), groups)
    for failure in failures:
        print(f"<2>hearth failsafe: {failure}; the board may not be capped: check it by hand",
              file=sys.stderr)
    if failures:
        return 1
    print(f"<5>hearth failsafe: CPU capped to its lowest frequency, {', '.join(groups)} frozen")
    return 0
