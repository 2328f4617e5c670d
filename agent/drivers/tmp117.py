"""TMP117 precision temperature sensor: one temperature in °C, read when a conversion is ready.

The chip converts on its own (continuous mode, one result a second at power-on settings) and
raises Data_Ready when a new result lands; the driver reads the result only then and stamps it
with the time it saw the flag, so a consumer can tell a fresh value from a repeated one. The
EEPROM (registers 0x04-0x08) is never written: it has a limited number of write cycles and
holds the chip's power-on settings and offset, which this driver has no business changing.
"""

from typing import Any, Callable

from agent.drivers.base import DriverContext, Sensor
from agent.drivers.i2c import I2CDevice, signed16
from agent.errors import DeviceIdentityError, HardwareError
from agent.readings import Reading, Validity, invalid, missing, ok
from agent.schema import Field

TEMP_RESULT, CONFIG, DEVICE_ID = 0x00, 0x01, 0x0F
LSB_C = 0.0078125
DEVICE_ID_FIELD = 0x0117           # bits 11..0 of DEVICE_ID; bits 15..12 are the die revision
DATA_READY = 1 << 13
MODE_MASK = 0b11 << 10             # MOD bits: 00/10 continuous, 01 shutdown, 11 one-shot
MODE_SHUTDOWN, MODE_ONE_SHOT = 0b01 << 10, 0b11 << 10
CONFIG_WRITABLE = 0x0FFC           # bits 15..12 are read-only flags, bit 1 is soft reset
POWER_ON_RESULT = -0x8000          # -256 °C until the first conversion has finished
MIN_CODE, MAX_CODE = -7040, 19200  # -55 °C and +150 °C, the range the datasheet specifies


class TMP117(Sensor):
    """A TMP117 whose identity is checked on first contact and after every failure."""

    kind = "tmp117"
    doc = "TMP117 precision temperature sensor (±0.1 °C), degrees Celsius"
    QUANTITIES = {"temperature": ""}
    SCHEMA = {
        "bus": Field(int, "I2C bus number (/dev/i2c-N)", min=0, example="1"),
        "address": Field(int, "I2C address of the TMP117 (ADD0 strap)", min=0x48, max=0x4B,
                         hex=True, example="0x48"),
    }

    def __init__(self, name: str, device: I2CDevice, clock: Callable[[], float]):
        super().__init__(name)
        self.device = device
        self.clock = clock
        self.identified = False
        self.latest: Reading | None = None

    @classmethod
    def from_config(cls, settings: dict[str, Any], context: DriverContext) -> "TMP117":
        label = (f"tmp117 {settings['name']!r} at 0x{settings['address']:02x} "
                 f"on I2C bus {settings['bus']}")
        clock = context.hardware.clock
        device = I2CDevice(context.i2c(settings["bus"]), settings["address"], label, clock)
        return cls(settings["name"], device, clock)

    def read(self) -> list[Reading]:
        now = self.clock()
        try:
            return [self._sample(now)]
        except HardwareError as error:
            self.identified = False
            self.latest = None
            validity = (Validity.INVALID if isinstance(error, DeviceIdentityError)
                        else Validity.MISSING)
            return [Reading(self.name, None, "°C", now, validity, str(error))]

    def _check_identity(self) -> None:
        word = self.device.read_word(DEVICE_ID)
        if word & 0x0FFF != DEVICE_ID_FIELD:
            error = DeviceIdentityError(
                f"{self.device.label}: device ID register reads 0x{word:04x}, not 0x0117; is "
                "another chip at this address? Check kind and address")
            self.device.mark_failed(error)
            raise error

    def _sample(self, now: float) -> Reading:
        if not self.identified:
            self._check_identity()
            self.identified = True
        config = self.device.read_word(CONFIG)
        mode = config & MODE_MASK
        if mode in (MODE_SHUTDOWN, MODE_ONE_SHOT):
            # Its EEPROM set it up to stop converting; run it continuously (a volatile write).
            self.device.write_word(CONFIG, config & CONFIG_WRITABLE & ~MODE_MASK)
        if config & DATA_READY:
            code = signed16(self.device.read_word(TEMP_RESULT))
            if MIN_CODE <= code <= MAX_CODE:
                self.latest = ok(self.name, code * LSB_C, "°C", now)
            else:
                self.latest = self._rejected(code, now)
        if self.latest is None:
            return missing(self.name, "°C", now,
                           f"{self.device.label}: no conversion has finished yet")
        return self.latest

    def _rejected(self, code: int, now: float) -> Reading:
        """A result the chip cannot have measured; kept until the next conversion replaces it,
        so the result before it is not handed out again as the latest."""
        if code == POWER_ON_RESULT:
            return invalid(self.name, "°C", now,
                           f"{self.device.label}: result register holds the -256 °C "
                           "power-on value although Data_Ready is set")
        return invalid(self.name, "°C", now,
                       f"{self.device.label}: result register reads {code * LSB_C:.2f} °C "
                       f"(0x{code & 0xFFFF:04x}), outside the -55..150 °C the chip measures; "
                       "check the sensor and its supply")
