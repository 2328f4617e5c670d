"""The SoC's own health: its thermal zone and the firmware's throttling/under-voltage flags."""

from agent.drivers.base import DriverContext, Sensor
from agent.drivers.sysfs import SysfsAttribute
from agent.readings import Reading, invalid, missing, ok
from agent.schema import Field

THROTTLED_FILE = "/sys/devices/platform/soc/soc:firmware/get_throttled"

# get_throttled bits (DESIGN.md section 7): 0-3 now, 16-19 the same since boot.
THROTTLE_FLAGS = {
    "under_voltage": 0,
    "freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
SINCE_BOOT_SHIFT = 16
MAX_THROTTLE_BITS = 0xFFFFFFFF
"""The firmware driver prints one 32-bit word as bare lower-case hex ("%x\\n")."""

MIN_MILLIC, MAX_MILLIC = -40000, 125000
"""The BCM2711/BCM2712's rated junction range: a zone reading beyond it is not the SoC's."""


class SocTemperature(Sensor):
    kind = "soc"
    doc = "SoC temperature from a kernel thermal zone (millidegrees Celsius)"
    QUANTITIES = {"soc_temperature": ""}
    SCHEMA = {
        "zone": Field(int, "thermal zone number: /sys/class/thermal/thermal_zone<N>/temp",
                      default=0, min=0, max=15),
    }

    def __init__(self, name: str, context: DriverContext, zone: int = 0):
        super().__init__(name)
        self._file = SysfsAttribute(
            context.hardware.path(f"/sys/class/thermal/thermal_zone{zone}/temp"))
        self._clock = context.hardware.clock

    @classmethod
    def from_config(cls, settings: dict, context: DriverContext) -> "SocTemperature":
        return cls(settings["name"], context, settings["zone"])

    def read(self) -> list[Reading]:
        now = self._clock()
        try:
            text = self._file.read_bytes()
        except FileNotFoundError:
            return [missing(self.name, "°C", now, f"{self._file.path} does not exist; check "
                            "the zone number against /sys/class/thermal")]
        except OSError as error:
            return [invalid(self.name, "°C", now, f"read failed: {error}")]
        try:
            millic = int(text)
        except ValueError:
            return [invalid(self.name, "°C", now,
                            f"{self._file.path}: not millidegrees: {text[:40]!r}")]
        if MIN_MILLIC <= millic <= MAX_MILLIC:
            return [ok(self.name, millic / 1000.0, "°C", now)]
        return [invalid(self.name, "°C", now,
                        f"{self._file.path} reads {millic / 1000:.3f} °C, outside the "
                        f"{MIN_MILLIC // 1000}..{MAX_MILLIC // 1000} °C a Pi's SoC can be at; "
                        "check that `zone` names the SoC's thermal zone")]

    def close(self) -> None:
        self._file.close()


class ThrottleFlags(Sensor):
    kind = "throttle"
    doc = "the firmware's under-voltage and throttling flags (get_throttled)"
    QUANTITIES = {"supply_flags": ""}
    SCHEMA = {}

    def __init__(self, name: str, context: DriverContext):
        super().__init__(name)
        self._file = SysfsAttribute(context.hardware.path(THROTTLED_FILE))
        self._clock = context.hardware.clock
        self._flags = [(f"{name}.{flag}", bit) for flag, bit in THROTTLE_FLAGS.items()]
        self._raw_name = f"{name}.raw"

    @classmethod
    def from_config(cls, settings: dict, context: DriverContext) -> "ThrottleFlags":
        return cls(settings["name"], context)

    def read(self) -> list[Reading]:
        """One reading per flag (1.0 set, 0.0 clear) for now, and `raw` with every bit."""
        now = self._clock()
        try:
            text = self._file.read_bytes()
        except FileNotFoundError:
            return [missing(n, "flag", now, f"{self._file.path} does not exist: this kernel "
                            "has no Raspberry Pi firmware driver") for n in self._names()]
        except OSError as error:
            return [invalid(n, "flag", now, f"read failed: {error}") for n in self._names()]
        try:
            bits = int(text, 16)
        except ValueError:
            bits = -1
        if not 0 <= bits <= MAX_THROTTLE_BITS:
            reason = (f"{self._file.path} reads {text[:40]!r}, not the 32-bit hex word the "
                      "firmware driver prints; check the kernel's Raspberry Pi firmware driver")
            return [invalid(n, "flag", now, reason) for n in self._names()]
        readings = [ok(name, float(bits >> bit & 1), "flag", now) for name, bit in self._flags]
        readings.append(ok(self._raw_name, float(bits), "bits", now))
        return readings

    def _names(self) -> list[str]:
        return [name for name, _ in self._flags] + [self._raw_name]

    def close(self) -> None:
        self._file.close()
