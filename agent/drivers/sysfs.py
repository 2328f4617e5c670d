"""A sysfs attribute file that is written only when its value changes.

Every write to cpufreq or cgroup files costs a syscall and, for cpufreq, a firmware
mailbox call; at 10 Hz that adds up, so the last written value is remembered.
"""

from pathlib import Path


class SysfsAttribute:
    def __init__(self, path: Path):
        self.path = path
        self._last_written: str | None = None
        self.writes = 0

    def read(self) -> str:
        return self.path.read_text().strip()

    def write(self, value: str) -> bool:
        """Write `value` unless it is what we last wrote; True if the file was written."""
        if value == self._last_written:
            return False
        self.path.write_text(value + "\n")
        self._last_written = value
        self.writes += 1
        return True
