"""ADS1115 16-bit ADC: one single-ended input, converted on request and scaled to a quantity.

Each sample starts a single-shot conversion and polls the OS bit. The number of polls is
bounded by a count, not by a deadline: each poll is an I2C transfer that takes real time on a
Pi, while a simulated clock may stand still during a read, so a count bounds both. At 860
samples/s a conversion takes about 1.2 ms, a handful of 100 kHz transfers.
"""

import math
from typing import Any, Callable

from agent.drivers.base import DriverContext, Sensor
from agent.drivers.i2c import I2CDevice, signed16
from agent.errors import HardwareError
from agent.readings import Reading, Validity, invalid, ok
from agent.schema import Field

CONVERSION, CONFIG = 0x00, 0x01
START_OR_DONE = 1 << 15            # OS: write 1 to start; reads 0 while converting
SINGLE_SHOT = 1 << 8
RATE_860_SPS = 0b111 << 5
COMPARATOR_OFF = 0b11
MAX_POLLS = 50
PIN_MIN_V, PIN_MAX_V = -0.3, 5.8
"""An analog input is rated GND - 0.3 V to VDD + 0.3 V, and VDD is at most 5.5 V."""

# Full-scale volts of the programmable gain amplifier -> PGA code (datasheet table 8-3).
GAINS_V = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}


class ADS1115(Sensor):
    """One channel of an ADS1115 against GND, reported as volts * scale + offset."""

    kind = "ads1115"
    doc = "ADS1115 16-bit ADC channel, scaled linearly to the measured quantity"
    QUANTITIES: dict[str, str] = {}  # what it measures is the wiring's business: no role
    SCHEMA = {
        "bus": Field(int, "I2C bus number (/dev/i2c-N)", min=0, example="1"),
        "address": Field(int, "I2C address of the ADS1115 (ADDR strap)", min=0x48, max=0x4B,
                         hex=True, example="0x48"),
        "channel": Field(int, "input AINx, measured against GND", min=0, max=3, example="0"),
        "gain": Field(float, "full-scale range of the input, volts (PGA setting)",
                      choices=tuple(GAINS_V), example="4.096"),
        "scale": Field(float, "units per volt at the input", default=1.0, example="2.5"),
        "offset": Field(float, "units added after scaling", default=0.0, example="-1.25"),
        "unit": Field(str, "unit of the scaled value", default="V", example="bar"),
    }

    def __init__(self, name: str, device: I2CDevice, clock: Callable[[], float], channel: int,
                 gain: float, scale: float, offset: float, unit: str):
        super().__init__(name)
        self.device = device
        self.clock = clock
        self.full_scale_v = gain
        self.lsb_v = gain / 32768
        # Codes a single-ended input can give unclipped: inside the full scale, on a real pin.
        self.min_code = max(-0x7FFF, math.ceil(PIN_MIN_V / self.lsb_v))
        self.max_code = min(0x7FFE, math.floor(PIN_MAX_V / self.lsb_v))
        self.scale = scale
        self.offset = offset
        self.unit = unit
        self.config = (START_OR_DONE | (0b100 | channel) << 12 | GAINS_V[gain] << 9
                       | SINGLE_SHOT | RATE_860_SPS | COMPARATOR_OFF)

    @classmethod
    def from_config(cls, settings: dict[str, Any], context: DriverContext) -> "ADS1115":
        label = (f"ads1115 {settings['name']!r} at 0x{settings['address']:02x} "
                 f"on I2C bus {settings['bus']}")
        clock = context.hardware.clock
        device = I2CDevice(context.i2c(settings["bus"]), settings["address"], label, clock)
        return cls(settings["name"], device, clock, settings["channel"], settings["gain"],
                   settings["scale"], settings["offset"], settings["unit"])

    def read(self) -> list[Reading]:
        now = self.clock()
        try:
            return [self._sample(now)]
        except HardwareError as error:
            return [Reading(self.name, None, self.unit, now, Validity.MISSING, str(error))]

    def _sample(self, now: float) -> Reading:
        self.device.write_word(CONFIG, self.config)
        for _ in range(MAX_POLLS):
            status = self.device.read_word(CONFIG)
            if status & START_OR_DONE:
                break
        else:
            return invalid(self.name, self.unit, now,
                           f"{self.device.label}: conversion not finished after {MAX_POLLS} "
                           "polls; the chip may be hung or in continuous mode")
        if status & ~START_OR_DONE != self.config & ~START_OR_DONE:
            return invalid(self.name, self.unit, now,
                           f"{self.device.label}: configuration reads back as 0x{status:04x}, "
                           f"not 0x{self.config:04x} (reset during the conversion?)")
        code = signed16(self.device.read_word(CONVERSION))
        if not self.min_code <= code <= self.max_code:
            return invalid(self.name, self.unit, now, self._rejection(code))
        return ok(self.name, code * self.lsb_v * self.scale + self.offset, self.unit, now)

    def _rejection(self, code: int) -> str:
        if code >= 0x7FFF or code <= -0x8000:
            return (f"{self.device.label}: input at the ±{self.full_scale_v:g} V end of the "
                    "range, so the value is clipped; choose a larger gain or check the sensor")
        return (f"{self.device.label}: input reads {code * self.lsb_v:.3f} V, outside the "
                f"{PIN_MIN_V:g}..{PIN_MAX_V:g} V an input pin can carry against GND; check the "
                "chip's ground and the sensor's wiring")
