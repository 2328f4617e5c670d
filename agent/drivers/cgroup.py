"""A cgroup v2 group the agent throttles: CPU quota (cpu.max), CPU set and freezing."""

from agent.drivers.sysfs import SysfsAttribute
from agent.seam import Hardware

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_STAT_KEYS = frozenset({"usage_usec", "nr_periods", "nr_throttled"})
"""The cpu.stat counters the agent reads; a group with the cpu controller always shows them."""


class CpuGroup:
    def __init__(self, hardware: Hardware, group: str, period_us: int = 100_000):
        self.dir = hardware.path(CGROUP_ROOT) / group
        self.period_us = period_us
        self.cpu_max = SysfsAttribute(self.dir / "cpu.max")
        self.freeze_file = SysfsAttribute(self.dir / "cgroup.freeze")
        self.cpuset = SysfsAttribute(self.dir / "cpuset.cpus")
        self.events_file = SysfsAttribute(self.dir / "cgroup.events")
        self.stat_file = SysfsAttribute(self.dir / "cpu.stat")
        self._quota_set: tuple[float | None, ...] = ()
        """(cpus,) of the last quota set: asked again, it is not formatted again."""

    def set_quota(self, cpus: float | None) -> bool:
        """Allow `cpus` CPUs' worth of time per period (None: unlimited). True if written.

        The quota moves in steps of 1 % of a CPU, so a controller's small corrections do not
        rewrite the file every period."""
        if (cpus,) == self._quota_set:
            return False
        if cpus is None:
            written = self.cpu_max.write(f"max {self.period_us}")
        else:
            quota_us = max(1000, round(cpus * 100) * self.period_us // 100)
            written = self.cpu_max.write(f"{quota_us} {self.period_us}")
        self._quota_set = (cpus,)
        return written

    def set_cpus(self, cpus: list[int]) -> bool:
        return self.cpuset.write(",".join(map(str, cpus)))

    def freeze(self, frozen: bool) -> bool:
        return self.freeze_file.write("1" if frozen else "0")

    def frozen(self) -> bool:
        """Whether the kernel reports the group frozen (cgroup.events), not just asked to be."""
        for line in self.events_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return value.strip() == "1"
        return False

    def cpu_stat(self) -> dict[str, int]:
        """cpu.stat counters: usage_usec, nr_periods, nr_throttled, throttled_usec, ...

        ValueError unless it holds the counters of a group with the cpu controller, each a
        whole number of at least 0: the agent subtracts them period to period."""
        fields = self.stat_file.read_text().split()
        if len(fields) % 2:
            raise ValueError(f"{self.stat_file.path}: a key without a value in {fields!r}")
        stats = dict(zip(fields[::2], map(int, fields[1::2])))
        if not CPU_STAT_KEYS <= stats.keys() or min(stats.values()) < 0:
            raise ValueError(f"{self.stat_file.path}: {fields!r} lacks one of "
                             f"{sorted(CPU_STAT_KEYS)} or holds a negative counter; is the cpu "
                             "controller enabled for this group?")
        return stats

    def close(self) -> None:
        self.events_file.close()
        self.stat_file.close()
