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

    def attempt(what: str, step: Callable[..., object], *args: object) -> None:
        try:
            step(*args)
        except OSError as error:
            failures.append(f"{what}: {error}")

    attempt(f"could not freeze the heat-fill ({heatfill.dir.name})", heatfill.freeze, True)
    attempt(f"could not set the heat-fill's quota ({heatfill.dir.name}) to "
            f"{MIN_HEATFILL_CPUS} CPU", heatfill.set_quota, MIN_HEATFILL_CPUS)
    attempt(f"could not set the workload's quota ({workload.dir.name}) to "
            f"{MIN_WORKLOAD_QUOTA_CPUS} CPU", workload.set_quota, MIN_WORKLOAD_QUOTA_CPUS)
    attempt(f"could not {'freeze' if freeze_workload else 'thaw'} the workload "
            f"({workload.dir.name})", workload.freeze, freeze_workload)
    for policy in policies:
        attempt(f"could not cap {policy.dir.name} at its lowest frequency, {policy.min_khz} kHz",
                policy.cap, policy.min_khz)
    return failures
