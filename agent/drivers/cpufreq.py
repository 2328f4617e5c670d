"""A cpufreq policy: the operating points it offers and the frequency cap the agent sets."""

from pathlib import Path

from agent.drivers.sysfs import SysfsAttribute
from agent.errors import HardwareError
from agent.seam import Hardware

MAX_KHZ = 10_000_000
"""No CPU this runs on clocks at 10 GHz: a larger number is not a frequency."""
MAX_CPU = 1023


def _read_numbers(path: Path, low: int, high: int, expected: str) -> list[int]:
    """The decimal numbers of a sysfs list file, each from `low` to `high`: the governor
    divides by these and indexes with them, so a file it cannot use stops the start here."""
    text = path.read_bytes()
    words = text.split()
    if words and all(word.isdigit() and low <= int(word) <= high for word in words):
        return [int(word) for word in words]
    raise HardwareError(f"{path} reads {text[:60]!r}, not {expected}; check the kernel's "
                        "cpufreq driver for this policy")


class CpuFreqPolicy:
    """/sys/devices/system/cpu/cpufreq/<policy>; frequencies in kHz as the kernel gives them."""

    def __init__(self, hardware: Hardware, policy: str = "policy0"):
        self.dir = hardware.path(f"/sys/devices/system/cpu/cpufreq/{policy}")
        self.max_freq = SysfsAttribute(self.dir / "scaling_max_freq")
        self.governor = SysfsAttribute(self.dir / "scaling_governor")
        self.available_khz = self._read_available()
        self.cpus = _read_numbers(self.dir / "affected_cpus", 0, MAX_CPU,
                                  f"CPU numbers from 0 to {MAX_CPU}")

    def _read_available(self) -> list[int]:
        """The policy's operating points; drivers without a table give only min and max."""
        expected = f"frequencies in kHz from 1 to {MAX_KHZ}"
        table = self.dir / "scaling_available_frequencies"
        if table.exists():
            return sorted(_read_numbers(table, 1, MAX_KHZ, expected))
        return sorted({*_read_numbers(self.dir / "cpuinfo_min_freq", 1, MAX_KHZ, expected),
                       *_read_numbers(self.dir / "cpuinfo_max_freq", 1, MAX_KHZ, expected)})

    @property
    def min_khz(self) -> int:
        return self.available_khz[0]

    @property
    def top_khz(self) -> int:
        return self.available_khz[-1]

    def cap(self, khz: int) -> bool:
        """Set scaling_max_freq (written only on change); True if the file was written."""
        return self.max_freq.write(str(khz))
