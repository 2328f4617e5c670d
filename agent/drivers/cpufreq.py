"""A cpufreq policy: the operating points it offers and the frequency cap the agent sets."""

from agent.drivers.sysfs import SysfsAttribute
from agent.seam import Hardware


class CpuFreqPolicy:
    """/sys/devices/system/cpu/cpufreq/<policy>; frequencies in kHz as the kernel gives them."""

    def __init__(self, hardware: Hardware, policy: str = "policy0"):
        self.dir = hardware.path(f"/sys/devices/system/cpu/cpufreq/{policy}")
        self.max_freq = SysfsAttribute(self.dir / "scaling_max_freq")
        self.governor = SysfsAttribute(self.dir / "scaling_governor")
        self.available_khz = self._read_available()
        self.cpus = [int(c) for c in (self.dir / "affected_cpus").read_text().split()]

    def _read_available(self) -> list[int]:
        """The policy's operating points; drivers without a table give only min and max."""
        table = self.dir / "scaling_available_frequencies"
        if table.exists():
            return sorted(int(khz) for khz in table.read_text().split())
        return sorted({int((self.dir / "cpuinfo_min_freq").read_text()),
                       int((self.dir / "cpuinfo_max_freq").read_text())})

    @property
    def min_khz(self) -> int:
        return self.available_khz[0]

    @property
    def top_khz(self) -> int:
        return self.available_khz[-1]

    def cap(self, khz: int) -> bool:
        """Set scaling_max_freq (written only on change); True if the file was written."""
        return self.max_freq.write(str(khz))
