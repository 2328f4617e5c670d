"""A temp directory laid out like a Pi's sysfs/procfs, in the kernel's exact text formats.

The simulated board writes sensor files here and reads back the files the agent writes
(cpufreq caps, cgroup quotas and freezes), just as the kernel would.
"""

import functools
import os
import weakref
from pathlib import Path

from agent.drivers.ds18b20 import DEVICES_DIR
from agent.drivers.soc import THROTTLED_FILE

DS18B20_POWER_ON_SCRATCHPAD = bytes([0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])


@functools.lru_cache(maxsize=4096)
def dallas_crc8(data: bytes) -> int:
    """The 1-wire CRC (x^8 + x^5 + x^4 + 1, reflected), as the DS18B20 computes it."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def ds18b20_scratchpad(celsius: float) -> bytes:
    """Bytes 0-7 of a 12-bit DS18B20 after a real conversion (byte 6 is not the 0x0c reset value)."""
    raw = max(-2000, min(2000, round(celsius * 16)))
    return (raw & 0xFFFF).to_bytes(2, "little") + bytes([0x4B, 0x46, 0x7F, 0xFF, 0x10, 0x10])


@functools.lru_cache(maxsize=1024)
def w1_slave_text(scratchpad8: bytes, crc_ok: bool = True) -> str:
    """The w1_therm `w1_slave` file: CRC verdict line, then the bytes again with t=millidegrees."""
    crc = dallas_crc8(scratchpad8)
    full = scratchpad8 + bytes([crc if crc_ok else crc ^ 0x5A])
    hex_bytes = " ".join(f"{b:02x}" for b in full) + " "
    verdict = "YES" if dallas_crc8(full[:8]) == full[8] else "NO"
    return (f"{hex_bytes}: crc={full[8]:02x} {verdict}\n"
            f"{hex_bytes}t={w1_millidegrees(scratchpad8)}\n")


def w1_millidegrees(scratchpad8: bytes) -> int:
    """w1_therm's conversion for the DS18B20: raw * 1000 / 16, truncated toward zero as in C."""
    raw = int.from_bytes(scratchpad8[:2], "little", signed=True)
    value = abs(raw) * 1000 // 16
    return value if raw >= 0 else -value


def cpu_stat_text(usage_usec: int, nr_periods: int, nr_throttled: int) -> str:
    """A cgroup v2 cpu.stat file (the keys a group with the cpu controller shows)."""
    return (f"usage_usec {usage_usec}\nuser_usec {usage_usec}\nsystem_usec 0\n"
            f"nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_usec 0\n")


class KernelFile:
    """One file of the tree as the simulated kernel holds it: kept open, rewritten in place
    (the same inode, so a reader's open file sees the new text, as with sysfs) and only when
    its text changes. The board removes its files through `unlink`, never behind its back;
    the agent writes its files in place, as sysfs takes them."""

    def __init__(self, path: Path):
        self.path = path
        self._path = os.fspath(path)
        self._fd: int | None = None
        self._close_fd: weakref.finalize | None = None
        self._text: str | None = None
        self._size = 0

    def read_text(self) -> str:
        """What is in the file now: the agent writes some of these files."""
        if self._fd is None:
            self._open(os.O_RDWR)
        data = os.pread(self._fd, 4096, 0)
        self._text = data.decode()
        self._size = len(data)
        return self._text

    def write(self, text: str) -> None:
        if text == self._text:
            return
        if self._fd is None:
            self._open(os.O_RDWR | os.O_CREAT)
            self._size = os.fstat(self._fd).st_size
        data = text.encode()
        os.pwrite(self._fd, data, 0)
        if len(data) < self._size:
            os.ftruncate(self._fd, len(data))
        self._size = len(data)
        self._text = text

    def unlink(self) -> None:
        """Remove the file. Reading a removed sysfs attribute through a file still open fails;
        a plain file cannot fail, so it is emptied first and an open file reads nothing."""
        self._close()
        self._text = None
        try:
            os.truncate(self._path, 0)
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    def _open(self, flags: int) -> None:
        fd = os.open(self._path, flags | os.O_CLOEXEC, 0o644)
        self._fd = fd
        self._close_fd = weakref.finalize(self, os.close, fd)

    def _close(self) -> None:
        if self._close_fd is not None:
            self._close_fd()
        self._fd = None
        self._close_fd = None


class FakeSysfs:
    """Creates the tree under `root` and gives the simulated board its file handles."""

    def __init__(self, root: Path, operating_points_mhz: tuple[int, ...], cores: int,
                 serial: str, cgroups: tuple[str, ...]):
        self.root = root
        self.thermal_temp = self._file("/sys/class/thermal/thermal_zone0/temp", "0")
        self._file("/sys/class/thermal/thermal_zone0/type", "cpu-thermal")
        self.throttled = self._file(THROTTLED_FILE, "0")
        hwmon = "/sys/class/hwmon/hwmon0"
        self._file(f"{hwmon}/name", "rpi_volt")
        self.under_voltage_alarm = self._file(f"{hwmon}/in0_lcrit_alarm", "0")
        self.w1_devices = self.path(DEVICES_DIR)
        self.w1_bulk = self._file(f"{DEVICES_DIR}/w1_bus_master1/therm_bulk_read", "0")
        self._file(f"{DEVICES_DIR}/w1_bus_master1/w1_master_slaves", "not found.")

        policy = "/sys/devices/system/cpu/cpufreq/policy0"
        khz = [mhz * 1000 for mhz in operating_points_mhz]
        self._file(f"{policy}/scaling_available_frequencies",
                   "".join(f"{k} " for k in khz))
        self._file(f"{policy}/cpuinfo_min_freq", str(khz[0]))
        self._file(f"{policy}/cpuinfo_max_freq", str(khz[-1]))
        self._file(f"{policy}/scaling_min_freq", str(khz[0]))
        self.scaling_max_freq = self._file(f"{policy}/scaling_max_freq", str(khz[-1]))
        self.scaling_cur_freq = self._file(f"{policy}/scaling_cur_freq", str(khz[-1]))
        self._file(f"{policy}/scaling_governor", "ondemand")
        cpus = " ".join(str(c) for c in range(cores))
        self._file(f"{policy}/affected_cpus", cpus)
        self._file(f"{policy}/related_cpus", cpus)

        for group in cgroups:
            base = f"/sys/fs/cgroup/{group}"
            self._file(f"{base}/cpu.max", "max 100000")
            self._file(f"{base}/cgroup.freeze", "0")
            self._file(f"{base}/cgroup.events", "populated 1\nfrozen 0")
            self._file(f"{base}/cgroup.procs", "")
            self._file(f"{base}/cpuset.cpus", "")
            self._file(f"{base}/cpu.stat", cpu_stat_text(0, 0, 0))

        self._file("/proc/cpuinfo", f"processor\t: 0\nHardware\t: BCM2835\n"
                                     f"Serial\t\t: {serial}\nModel\t\t: Raspberry Pi "
                                     "Compute Module 4 Rev 1.0")
        self._file("/sys/firmware/devicetree/base/serial-number", serial, newline=False)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def _file(self, absolute: str, text: str, newline: bool = True) -> Path:
        path = self.path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + ("\n" if newline else ""))
        return path

    def cgroup(self, group: str) -> Path:
        return self.path(f"/sys/fs/cgroup/{group}")

    def add_w1_device(self, device_id: str) -> Path:
        directory = self.w1_devices / device_id
        directory.mkdir(parents=True, exist_ok=True)
        return directory
