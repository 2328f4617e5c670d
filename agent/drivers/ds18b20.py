"""DS18B20 1-wire temperature sensors through the kernel's w1_therm driver.

The kernel exposes each sensor as /sys/bus/w1/devices/<family>-<serial>/ with two files:
`w1_slave` (two lines: the nine scratchpad bytes with the CRC verdict, then the bytes again
with `t=<millidegrees>`) and `temperature` (millidegrees only). A 12-bit conversion takes up
to 750 ms, so conversions are started for the whole bus at once through the bus master's
`therm_bulk_read` file and collected on a later loop iteration: N sensors cost one
conversion time and the control loop never waits for the bus.
"""

import os
import re

from agent.drivers.base import DriverContext, Sensor
from agent.drivers.sysfs import SysfsAttribute
from agent.readings import Reading, invalid, missing, ok
from agent.schema import Field

DEVICES_DIR = "/sys/bus/w1/devices"
CONVERSION_S = 0.75
MASTERS_RELIST_S = 60.0
"""How long the list of bus masters is trusted; a failed trigger lists them again at once."""
POWER_ON_MILLIC = 85000
POWER_ON_RESERVED_BYTE = 0x0C
DISCONNECTED_MILLIC = -127000
UNIT = "°C"
MEASURING_RANGES_MILLIC = {
    "10": ("DS18S20", -55000, 125000),
    "22": ("DS1822", -55000, 125000),
    "28": ("DS18B20", -55000, 125000),
    "3b": ("DS1825", -55000, 125000),
    "42": ("DS28EA00", -40000, 85000),
}
"""1-wire family code -> (chip, lowest and highest temperature its datasheet says it measures).
The 12-bit register holds -128..+127.9375 °C, so a value outside this came from a damaged
sensor or a line glitch that the CRC let through, not from the water."""

_W1_SLAVE = re.compile(
    r"((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)\n(?:[0-9a-f]{2} ){9}t=(-?[0-9]+)\n?\Z")


class W1SlaveText:
    """The parsed `w1_slave` file of a w1_therm device."""

    def __init__(self, scratchpad: bytes, crc_ok: bool, millic: int):
        self.scratchpad = scratchpad
        self.crc_ok = crc_ok
        self.millic = millic

    @classmethod
    def parse(cls, text: str) -> "W1SlaveText":
        match = _W1_SLAVE.match(text)
        if match is None:
            raise ValueError(f"unexpected w1_slave text {text[:60]!r}")
        scratchpad = bytes.fromhex(match.group(1))
        return cls(scratchpad, match.group(3) == "YES", int(match.group(4)))


class OneWireBus:
    """Starts bulk conversions on every w1 bus master and says when their results are ready.

    One per agent, shared by its DS18B20 sensors through the driver context.
    """

    def __init__(self, context: DriverContext):
        self._devices = os.fspath(context.hardware.path(DEVICES_DIR))
        self._clock = context.hardware.clock
        self._triggered_at: float | None = None
        self._results_taken: set[str] = set()
        self._masters: list[str] = []
        self._listed_at: float | None = None

    def _list_masters(self, now: float) -> list[str]:
        """The masters' therm_bulk_read files. Bus masters come from the device tree and stay;
        listing the devices directory each conversion would cost more than the trigger."""
        if (self._masters and self._listed_at is not None
                and now - self._listed_at < MASTERS_RELIST_S):
            return self._masters
        try:
            names = sorted(os.listdir(self._devices))
        except OSError:
            names = []
        self._masters = [f"{self._devices}/{name}/therm_bulk_read" for name in names
                         if name.startswith("w1_bus_master")]
        self._listed_at = now
        return self._masters

    def result_ready(self, device_id: str) -> float | None:
        """When the conversion `device_id` has not collected yet finished, else None.

        A sensor asking again after collecting starts the next bulk conversion.
        """
        now = self._clock()
        if self._triggered_at is None or device_id in self._results_taken:
            self._trigger(now)
            return None
        if now - self._triggered_at < CONVERSION_S:
            return None
        self._results_taken.add(device_id)
        return self._triggered_at + CONVERSION_S

    def _trigger(self, now: float) -> None:
        for master in self._list_masters(now):
            try:
                _write_trigger(master)
            except OSError:
                self._listed_at = None  # a master without bulk conversions, or gone: relist
        self._triggered_at = now
        self._results_taken = set()


def _write_trigger(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, b"trigger\n")
    finally:
        os.close(fd)


class DS18B20(Sensor):
    kind = "ds18b20"
    doc = "DS18B20 1-wire temperature sensor read through the kernel's w1_therm driver"
    QUANTITIES = {"temperature": ""}
    SCHEMA = {
        "id": Field(str, "1-wire ROM id as the kernel names the device directory",
                    pattern=r"(10|22|28|3b|42)-[0-9a-f]{12}", example="28-0316a2795eff"),
        "max_age_s": Field(float, "a reading older than this is stale", default=3.0,
                           min=1.0, max=60.0),
    }

    def __init__(self, name: str, device_id: str, bus: OneWireBus, context: DriverContext,
                 max_age_s: float = 3.0):
        super().__init__(name)
        self.device_id = device_id
        self.max_age_s = max_age_s
        self._bus = bus
        self._clock = context.hardware.clock
        self._chip, self._min_millic, self._max_millic = MEASURING_RANGES_MILLIC[device_id[:2]]
        directory = os.fspath(context.hardware.path(DEVICES_DIR) / device_id)
        # kept open between conversions; a sensor unplugged and plugged back is opened again
        self._slave_file = SysfsAttribute(f"{directory}/w1_slave")
        self._temperature_file = SysfsAttribute(f"{directory}/temperature")
        self._latest = missing(name, UNIT, self._clock(), "no conversion finished yet")

    @classmethod
    def from_config(cls, settings: dict, context: DriverContext) -> "DS18B20":
        return cls(settings["name"], settings["id"], context.shared("one_wire_bus", OneWireBus), context,
                   settings["max_age_s"])

    def read(self) -> list[Reading]:
        converted_at = self._bus.result_ready(self.device_id)
        if converted_at is not None:
            self._latest = self._collect(converted_at)
        return [self._latest.aged(self._clock(), self.max_age_s)]

    def close(self) -> None:
        self._slave_file.close()
        self._temperature_file.close()

    def _collect(self, converted_at: float) -> Reading:
        """Read the finished conversion; w1_slave is preferred for its CRC and scratchpad."""
        try:
            try:
                text = self._slave_file.read_text()
            except FileNotFoundError:
                return self._judge_millic(int(self._temperature_file.read_bytes()),
                                          None, converted_at)
            return self._judge(W1SlaveText.parse(text), converted_at)
        except FileNotFoundError:
            return missing(self.name, UNIT, converted_at,
                           f"1-wire device {self.device_id} is not on the bus; check its "
                           "wiring and pull-up (`hearth ctl w1 list` shows the devices present)")
        except (OSError, ValueError) as error:
            return invalid(self.name, UNIT, converted_at, f"read failed: {error}")

    def _judge(self, text: W1SlaveText, converted_at: float) -> Reading:
        if not text.crc_ok:
            return invalid(self.name, UNIT, converted_at,
                           "scratchpad CRC check failed (crc=.. NO): noise on the 1-wire line")
        if not any(text.scratchpad):
            return invalid(self.name, UNIT, converted_at,
                           "scratchpad reads all zeros: data line shorted or sensor absent")
        return self._judge_millic(text.millic, text.scratchpad, converted_at)

    def _judge_millic(self, millic: int, scratchpad: bytes | None,
                      converted_at: float) -> Reading:
        if millic == DISCONNECTED_MILLIC:
            return invalid(self.name, UNIT, converted_at, "-127 °C: sensor disconnected")
        if millic == POWER_ON_MILLIC:
            if scratchpad is None:
                return invalid(self.name, UNIT, converted_at,
                               "85.000 °C is the power-on value and the temperature file "
                               "has no scratchpad to confirm a real reading")
            if scratchpad[6] == POWER_ON_RESERVED_BYTE:
                return invalid(self.name, UNIT, converted_at,
                               "85.000 °C power-on value (scratchpad byte 6 is 0x0c): the "
                               "sensor reset or has not converted yet")
        if not self._min_millic <= millic <= self._max_millic:
            return invalid(self.name, UNIT, converted_at,
                           f"{self._chip} {self.device_id} reads {millic / 1000:.3f} °C, outside "
                           f"the {self._min_millic // 1000}..{self._max_millic // 1000} °C it can "
                           "measure: a damaged sensor or a glitch on the 1-wire line; check "
                           "the sensor and its wiring")
        return ok(self.name, millic / 1000.0, UNIT, converted_at)
