"""The SAFE actuator settings (DESIGN.md section 4), written in one place.

The governor's SAFE mode, the shutdown path and `hearth failsafe` (systemd's ExecStopPost=,
run with the agent dead) all leave a board the same way: every cpufreq policy capped at its
lowest operating point, the heat-fill frozen at its minimum quota, the paid work at its
minimum quota and frozen unless the caller keeps it running. Each step is tried even when one
before it failed, because a board half made safe is still safer than one left as it was.
Imports only the standard library and the drivers, so the failsafe stays small.
"""

from collections.abc import Callable, Iterable

from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy

MIN_WORKLOAD_QUOTA_CPUS = 0.05
"""The paid work's smallest CPU quota: it keeps answering (SSH, its own health checks)."""
MIN_HEATFILL_CPUS = 0.02
"""The heat-fill's quota while it is stopped, so unfreezing it alone heats nothing."""


def safe_actuators(policies: Iterable[CpuFreqPolicy], workload: CpuGroup, heatfill: CpuGroup,
                   freeze_workload: bool = True) -> list[str]:
    """Write the SAFE settings; a line per step that failed (what, which file, the error).

    Files are written through the drivers, so a caller that keeps its drivers (the governor)
    still writes only what changed."""
    failures: list[str] = []
    _attempt(failures, heatfill.freeze, True,
             lambda: f"could not freeze the heat-fill ({heatfill.dir.name})")
    _attempt(failures, heatfill.set_quota, MIN_HEATFILL_CPUS,
             lambda: f"could not set the heat-fill's quota ({heatfill.dir.name}) to "
                     f"{MIN_HEATFILL_CPUS} CPU")
    _attempt(failures, workload.set_quota, MIN_WORKLOAD_QUOTA_CPUS,
             lambda: f"could not set the workload's quota ({workload.dir.name}) to "
                     f"{MIN_WORKLOAD_QUOTA_CPUS} CPU")
    _attempt(failures, workload.freeze, freeze_workload,
             lambda: f"could not {'freeze' if freeze_workload else 'thaw'} the workload "
                     f"({workload.dir.name})")
    for policy in policies:
        _attempt(failures, policy.cap, policy.min_khz,
                 lambda: f"could not cap {policy.dir.name} at its lowest frequency, "
                         f"{policy.min_khz} kHz")
    return failures


def _attempt(failures: list[str], step: Callable[[object], object], value: object,
             describe: Callable[[], str]) -> None:
    """One step, in its own guard; the operator's line is built only when it failed (the
    governor writes SAFE every period it is SAFE)."""
    try:
        step(value)
    except OSError as error:
        failures.append(f"{describe()}: {error}")
