"""INA219 and INA226 current/power monitors: bus voltage, current and power of one rail.

Configuration and calibration are written at start and read back on every sample, because a
supply transient resets these chips to power-on values (calibration 0: current and power read
zero). When that happens the driver rewrites them and, if the chip has finished a conversion
since the reset, computes current and power from the raw shunt and bus voltages the way the
chip itself would, so one lost calibration does not cost a control-loop sample. Until the
first conversion with the rewritten calibration completes, current and power are invalid.
"""

import logging
import math
from typing import Any, Callable

from agent.drivers.base import DriverContext, Sensor
from agent.drivers.i2c import I2CDevice, signed16
from agent.errors import ConfigValueError, DeviceIdentityError, HardwareError
from agent.readings import Reading, Validity, invalid, ok
from agent.schema import Field

log = logging.getLogger(__name__)

CONFIG, SHUNT, BUS, POWER, CURRENT, CALIBRATION = range(6)

# Relative slack so that datasheet arithmetic meant to come out exact (a calibration of 4096)
# cannot truncate to one less because binary floating point landed a hair below it.
_RESOLUTION = 1e-9


def _round_up_1_2_5(value: float) -> float:
    """The next value at or above `value` in the 1-2-5 series (1e-4, 2e-4, 5e-4, 1e-3...)."""
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5):
        candidate = float(f"{step}e{exponent}")
        if candidate >= value * (1 - _RESOLUTION):
            return candidate
    return float(f"1e{exponent + 1}")


def ina219_calibration(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
    """(Calibration register, Current_LSB in A) per INA219 datasheet 8.5.1.

    Minimum_LSB = Max_Expected_I / 32767, rounded up to a round number (the datasheet's
    example turns 61 uA into 100 uA), and never so small that the register would overflow;
    Cal = trunc(0.04096 / (Current_LSB * R_shunt)). Bit 0 of the register does not exist, and
    the LSB returned is the one the register really gives, so readings scale exactly.
    """
    minimum_lsb_a = max(max_current_a / 32767, 0.04096 / (0xFFFE * shunt_ohms))
    current_lsb_a = _round_up_1_2_5(minimum_lsb_a)
    register = math.floor(0.04096 / (current_lsb_a * shunt_ohms) * (1 + _RESOLUTION)) & ~1
    return register, 0.04096 / (register * shunt_ohms)


def ina226_calibration(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
    """(Calibration register, Current_LSB in A) per INA226 datasheet equations 1 and 2:
    Current_LSB = Max_Expected_I / 2^15 (raised if the 15-bit register would overflow),
    CAL = trunc(0.00512 / (Current_LSB * R_shunt))."""
    current_lsb_a = max(max_current_a / 2**15, 0.00512 / (0x7FFF * shunt_ohms))
    register = math.floor(0.00512 / (current_lsb_a * shunt_ohms) * (1 + _RESOLUTION))
    return register, 0.00512 / (register * shunt_ohms)


def _schema(kind: str) -> dict[str, Field]:
    return {
        "bus": Field(int, "I2C bus number (/dev/i2c-N)", min=0, example="1"),
        "address": Field(int, f"I2C address of the {kind.upper()} (A0/A1 straps)",
                         min=0x40, max=0x4F, hex=True, example="0x40"),
        "shunt_ohms": Field(float, "resistance of the current shunt, ohms", min=1e-6,
                            example="0.1"),
        "max_current_a": Field(float, "largest current expected through the shunt, amperes; "
                               "sets the current LSB", min=1e-6, example="3.2"),
    }


class _INA2xx(Sensor):
    """What the two chips share: the register set, the calibration check and the readings."""

    SHUNT_LSB_V: float
    BUS_LSB_V: float
    POWER_LSB_PER_CURRENT_LSB: int
    SHUNT_FULL_SCALE_V: float
    BUS_RATED_V: float
    """The highest bus voltage the chip's input is rated for; its register holds more."""

    def __init__(self, name: str, device: I2CDevice, clock: Callable[[], float],
                 shunt_ohms: float, max_current_a: float):
        super().__init__(name)
        shunt_limit_v = shunt_ohms * max_current_a * (1 - _RESOLUTION)
        if shunt_limit_v > self.SHUNT_FULL_SCALE_V:
            raise ConfigValueError(
                f"{self.kind} {name!r}: shunt_ohms * max_current_a = {shunt_limit_v:g} V, "
                f"beyond the chip's {self.SHUNT_FULL_SCALE_V:g} V shunt range; use a smaller "
                "shunt or a lower max_current_a")
        self.device = device
        self.clock = clock
        self.shunt_ohms = shunt_ohms
        self.calibration, self.current_lsb_a = self._calibration(shunt_ohms, max_current_a)
        self.power_lsb_w = self.POWER_LSB_PER_CURRENT_LSB * self.current_lsb_a
        self.config = self._config_word(shunt_limit_v)
        self.awaiting_conversion = True
        self.identified = False
        self.configured = False
        self._reading_names = (f"{name}.bus_v", f"{name}.current_a", f"{name}.power_w")

    @classmethod
    def from_config(cls, settings: dict[str, Any], context: DriverContext) -> "_INA2xx":
        label = (f"{cls.kind} {settings['name']!r} at 0x{settings['address']:02x} "
                 f"on I2C bus {settings['bus']}")
        clock = context.hardware.clock
        device = I2CDevice(context.i2c(settings["bus"]), settings["address"], label, clock)
        return cls(settings["name"], device, clock, settings["shunt_ohms"],
                   settings["max_current_a"])

    @staticmethod
    def _calibration(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
        raise NotImplementedError

    def _config_word(self, shunt_limit_v: float) -> int:
        raise NotImplementedError

    def _check_identity(self) -> None:
        """Chips with an ID register check it here; the INA219 has none."""

    def _status(self) -> tuple[float, bool, bool]:
        """(bus volts, conversion ready, math overflow), from one sample's status reads."""
        raise NotImplementedError

    def _shunt_saturated(self, shunt_code: int, config: int) -> bool:
        raise NotImplementedError

    def _names(self) -> tuple[str, str, str]:
        return self._reading_names

    def read(self) -> list[Reading]:
        now = self.clock()
        try:
            return self._sample(now)
        except HardwareError as error:
            self.identified = False
            self.awaiting_conversion = True
            validity = (Validity.INVALID if isinstance(error, DeviceIdentityError)
                        else Validity.MISSING)
            return [Reading(sensor, None, unit, now, validity, str(error))
                    for sensor, unit in zip(self._names(), ("V", "A", "W"))]

    def _sample(self, now: float) -> list[Reading]:
        bus_name, current_name, power_name = self._names()
        if not self.identified:
            self._check_identity()
            self.identified = True
        config = self.device.read_word(CONFIG)
        calibration = self.device.read_word(CALIBRATION)
        bus_v, ready, overflow = self._status()
        shunt_code = signed16(self.device.read_word(SHUNT))
        if (config, calibration) != (self.config, self.calibration):
            return self._recalibrate(now, config, calibration, bus_v, ready, shunt_code)
        if self.awaiting_conversion and not ready:
            reason = (f"{self.device.label}: waiting for the first conversion with "
                      "the written calibration")
            return [invalid(bus_name, "V", now, reason), invalid(current_name, "A", now, reason),
                    invalid(power_name, "W", now, reason)]
        self.awaiting_conversion = False
        if bus_v > self.BUS_RATED_V:
            return self._impossible_bus(now, bus_v)
        bus = ok(bus_name, bus_v, "V", now)
        if overflow:
            reason = (f"{self.device.label}: math overflow flag set, current beyond the "
                      "calibrated range; check max_current_a against the real load")
            return [bus, invalid(current_name, "A", now, reason),
                    invalid(power_name, "W", now, reason)]
        if self._shunt_saturated(shunt_code, config):
            return [bus, *self._saturated(now, shunt_code)]
        current_a = signed16(self.device.read_word(CURRENT)) * self.current_lsb_a
        power_w = self.device.read_word(POWER) * self.power_lsb_w
        return [bus, ok(current_name, current_a, "A", now), ok(power_name, power_w, "W", now)]

    def _impossible_bus(self, now: float, bus_v: float) -> list[Reading]:
        """A bus voltage beyond the chip's rating: the register was garbled or the chip is
        damaged, so nothing it reported in this sample is used."""
        reason = (f"{self.device.label}: bus voltage register reads {bus_v:.2f} V, beyond the "
                  f"0..{self.BUS_RATED_V:g} V the chip's bus input is rated for; check the "
                  "chip and the rail it measures")
        return [invalid(sensor, unit, now, reason)
                for sensor, unit in zip(self._names(), ("V", "A", "W"))]

    def _saturated(self, now: float, shunt_code: int) -> list[Reading]:
        reason = (f"{self.device.label}: shunt voltage {shunt_code * self.SHUNT_LSB_V * 1e3:.2f}"
                  " mV is at the end of the chip's range, so the current is larger than shown;"
                  " check the load and shunt_ohms")
        _, current_name, power_name = self._names()
        return [invalid(current_name, "A", now, reason), invalid(power_name, "W", now, reason)]

    def _recalibrate(self, now: float, config: int, calibration: int, bus_v: float,
                     ready: bool, shunt_code: int) -> list[Reading]:
        """Rewrite lost settings; report what the chip measured if a conversion since the
        reset guarantees its voltage registers hold a real measurement."""
        bus_name, current_name, power_name = self._names()
        lost = (f"{self.device.label}: configuration/calibration read back as "
                f"0x{config:04x}/0x{calibration:04x} instead of "
                f"0x{self.config:04x}/0x{self.calibration:04x} (reset by a supply transient?); "
                "rewrote them")
        if self.configured:
            log.warning("%s", lost)
        else:
            lost = f"{self.device.label}: configured at start"
        self.configured = True
        self.device.write_word(CONFIG, self.config)
        self.device.write_word(CALIBRATION, self.calibration)
        self.awaiting_conversion = True
        if not ready:
            reason = f"{lost}; no conversion finished since the reset"
            return [invalid(bus_name, "V", now, reason), invalid(current_name, "A", now, reason),
                    invalid(power_name, "W", now, reason)]
        if bus_v > self.BUS_RATED_V:
            return self._impossible_bus(now, bus_v)
        bus = Reading(bus_name, bus_v, "V", now, Validity.OK, lost)
        if self._shunt_saturated(shunt_code, config):
            return [bus, *self._saturated(now, shunt_code)]
        current_a = shunt_code * self.SHUNT_LSB_V / self.shunt_ohms
        reason = f"{lost}; current and power computed from the shunt and bus voltages"
        return [bus, Reading(current_name, current_a, "A", now, Validity.OK, reason),
                Reading(power_name, abs(current_a) * bus_v, "W", now, Validity.OK, reason)]


# INA219 configuration fields (datasheet table 4): 32 V bus range, PGA chosen per shunt,
# 12-bit ADCs averaging 16 samples (8.51 ms each, 17 ms a sample pair: well inside a 100 ms
# loop while smoothing the rail's DVFS steps), continuous shunt and bus conversion.
_INA219_BRNG_32V = 1 << 13
_INA219_ADC_16_SAMPLES = 0b1100
_INA219_CONTINUOUS = 0b111
_INA219_PGA_RANGES_V = (0.04, 0.08, 0.16, 0.32)


class INA219(_INA2xx):
    """Flags CNVR (bit 1) and OVF (bit 0) live in the bus voltage register; reading the power
    register clears CNVR."""

    kind = "ina219"
    doc = "INA219 current/power monitor: bus volts, current and power of one rail"
    QUANTITIES = {"power": ".power_w"}
    SCHEMA = _schema(kind)
    SHUNT_LSB_V = 10e-6
    BUS_LSB_V = 4e-3
    POWER_LSB_PER_CURRENT_LSB = 20
    SHUNT_FULL_SCALE_V = _INA219_PGA_RANGES_V[-1]
    BUS_RATED_V = 26.0

    @staticmethod
    def _calibration(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
        return ina219_calibration(shunt_ohms, max_current_a)

    def _config_word(self, shunt_limit_v: float) -> int:
        gain = next(code for code, range_v in enumerate(_INA219_PGA_RANGES_V)
                    if range_v >= shunt_limit_v)
        return (_INA219_BRNG_32V | gain << 11 | _INA219_ADC_16_SAMPLES << 7
                | _INA219_ADC_16_SAMPLES << 3 | _INA219_CONTINUOUS)

    def _status(self) -> tuple[float, bool, bool]:
        word = self.device.read_word(BUS)
        return (word >> 3) * self.BUS_LSB_V, bool(word & 0b10), bool(word & 0b01)

    def _shunt_saturated(self, shunt_code: int, config: int) -> bool:
        return abs(shunt_code) >= 4000 << ((config >> 11) & 0b11)


# INA226 configuration (datasheet table 7-3): 16 averages of 1.1 ms bus and shunt conversions
# (35 ms a sample), continuous. Bit 14 is reserved and reads back as 1.
_INA226_CONFIG = 0x4000 | 0b010 << 9 | 0b100 << 6 | 0b100 << 3 | 0b111
_INA226_MASK_ENABLE, _INA226_DIE_ID = 0x06, 0xFF
_INA226_CVRF, _INA226_OVF = 1 << 3, 1 << 2


class INA226(_INA2xx):
    """Flags CVRF and OVF live in the Mask/Enable register, whose read clears CVRF; the die ID
    register (0x2260) tells it apart from an INA219 strapped to the same address."""

    kind = "ina226"
    doc = "INA226 current/power monitor: bus volts, current and power of one rail"
    QUANTITIES = {"power": ".power_w"}
    SCHEMA = _schema(kind)
    SHUNT_LSB_V = 2.5e-6
    BUS_LSB_V = 1.25e-3
    POWER_LSB_PER_CURRENT_LSB = 25
    SHUNT_FULL_SCALE_V = 0.08192
    BUS_RATED_V = 36.0

    @staticmethod
    def _calibration(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
        return ina226_calibration(shunt_ohms, max_current_a)

    def _config_word(self, shunt_limit_v: float) -> int:
        return _INA226_CONFIG

    def _check_identity(self) -> None:
        die_id = self.device.read_word(_INA226_DIE_ID)
        if die_id >> 4 != 0x226:
            error = DeviceIdentityError(
                f"{self.device.label}: die ID register reads 0x{die_id:04x}, not 0x226x; is "
                "another chip (an INA219?) at this address? Check kind and address")
            self.device.mark_failed(error)
            raise error

    def _status(self) -> tuple[float, bool, bool]:
        flags = self.device.read_word(_INA226_MASK_ENABLE)
        bus_v = self.device.read_word(BUS) * self.BUS_LSB_V
        return bus_v, bool(flags & _INA226_CVRF), bool(flags & _INA226_OVF)

    def _shunt_saturated(self, shunt_code: int, config: int) -> bool:
        return not -0x8000 < shunt_code < 0x7FFF
