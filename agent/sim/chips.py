"""Emulated register maps of the board's I2C chips (INA219, INA226, TMP117, ADS1115).

Each chip behaves as its datasheet says: power-on register values, big-endian registers, the
INA chips' own calibration arithmetic, conversions that take time and raise a ready flag,
flags cleared by the reads that clear them on silicon. The plant model sets the physical
quantities (bus voltage, current, temperature, input voltages); the driver only sees
registers. The INA and TMP117 chips take the simulation's clock, because their conversions
run on their own timer; the ADS1115 converts on request and counts status polls instead, as
a simulated clock may not move while a driver polls.

Faults: `inject_nack()` / `inject_timeout()` make transactions fail as the Linux I2C stack
reports them, `lose_calibration()` resets an INA chip to its power-on registers as a supply
transient does, and `ADS1115.busy_polls` sets how many polls a conversion takes.
"""

import errno
import math
import os
from typing import Callable

Clock = Callable[[], float]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _trunc(value: float) -> int:
    """Integer division as a chip's fixed-point engine does it: toward zero."""
    return math.trunc(value)


class EmulatedChip:
    """What every emulated chip shares: a register pointer, a transaction count and faults."""

    def __init__(self) -> None:
        self.pointer = 0
        self.transactions = 0
        self._fault_errno = 0
        self._faults_left: float = 0

    def inject_nack(self, transactions: float = math.inf) -> None:
        """The chip stops acknowledging its address for that many transactions (default: all)."""
        self._fault_errno = errno.EREMOTEIO
        self._faults_left = transactions

    def inject_timeout(self, transactions: float = math.inf) -> None:
        """The chip holds the bus (clock stretching) until the adapter times out."""
        self._fault_errno = errno.ETIMEDOUT
        self._faults_left = transactions

    def clear_faults(self) -> None:
        self._faults_left = 0

    def begin_transaction(self) -> None:
        """Called by the bus for every transfer addressed to this chip; raises injected faults."""
        self.transactions += 1
        if self._faults_left > 0:
            self._faults_left -= 1
            raise OSError(self._fault_errno, os.strerror(self._fault_errno))

    def read_register(self, register: int) -> int:
        raise NotImplementedError

    def write_register(self, register: int, value: int) -> None:
        raise NotImplementedError


class _INA2xx(EmulatedChip):
    """The INA219/INA226 measurement engine: continuous conversions on the chip's own timer,
    then Current = Shunt * Calibration / DIVIDER and Power = |Current| * Bus / POWER_DIVIDER,
    computed with the calibration in the register at the moment the conversion completes."""

    CONFIG, SHUNT, BUS, POWER, CURRENT, CALIBRATION = range(6)
    CONFIG_POWER_ON: int
    CALIBRATION_MASK: int
    CURRENT_DIVIDER: int
    POWER_DIVIDER: int
    SHUNT_LSB_V: float
    BUS_LSB_V: float

    def __init__(self, shunt_ohms: float, clock: Clock):
        super().__init__()
        self.shunt_ohms = shunt_ohms
        self.clock = clock
        self.bus_voltage_v = 0.0
        self.current_a = 0.0
        self.config = self.CONFIG_POWER_ON
        self.calibration = 0
        self.shunt_code = 0
        self.bus_code = 0
        self.current_code = 0
        self.power_code = 0
        self.conversion_ready = False
        self.math_overflow = False
        self._conversion_started_s = clock()
        self._conversions_done = 0
        self._timed_config: int | None = None
        self._conversion_s = 0.0
        self._caught_up_s: float | None = None

    def set_bus_voltage(self, volts: float) -> None:
        self.bus_voltage_v = volts

    def set_current(self, amps: float) -> None:
        self.current_a = amps

    def lose_calibration(self) -> None:
        """A supply transient resets the chip: every register returns to its power-on value."""
        self._reset()

    def _reset(self) -> None:
        self.config = self.CONFIG_POWER_ON
        self.calibration = 0
        self.shunt_code = self.bus_code = self.current_code = self.power_code = 0
        self.conversion_ready = False
        self.math_overflow = False
        self._restart_conversions()

    def _restart_conversions(self) -> None:
        self._conversion_started_s = self.clock()
        self._conversions_done = 0
        self.conversion_ready = False

    def _conversion_time_s(self) -> float:
        raise NotImplementedError

    def _shunt_full_scale_code(self) -> int:
        raise NotImplementedError

    def _bus_full_scale_code(self) -> int:
        raise NotImplementedError

    def _catch_up(self) -> None:
        """Complete the conversions the chip's timer has finished since the last access."""
        mode = self.config & 0b111
        if mode in (0b000, 0b100):
            return
        now = self.clock()
        if now == self._caught_up_s:
            return  # a register write since then restarted conversions: none finished yet
        self._caught_up_s = now
        if self.config != self._timed_config:
            self._conversion_s = self._conversion_time_s()
            self._timed_config = self.config
        done = math.floor((now - self._conversion_started_s) / self._conversion_s)
        if mode < 0b100:
            done = min(done, 1)
        if done > self._conversions_done:
            self._conversions_done = done
            self._convert()

    def _convert(self) -> None:
        shunt_limit = self._shunt_full_scale_code()
        self.shunt_code = _clamp(round(self.current_a * self.shunt_ohms / self.SHUNT_LSB_V),
                                 -shunt_limit, shunt_limit)
        self.bus_code = _clamp(round(self.bus_voltage_v / self.BUS_LSB_V),
                               0, self._bus_full_scale_code())
        current = _trunc(self.shunt_code * self.calibration / self.CURRENT_DIVIDER)
        power = _trunc(abs(current) * self.bus_code / self.POWER_DIVIDER)
        self.math_overflow = not (-0x8000 <= current <= 0x7FFF) or power > 0xFFFF
        self.current_code = _clamp(current, -0x8000, 0x7FFF)
        self.power_code = _clamp(power, 0, 0xFFFF)
        self.conversion_ready = True

    def _write_config(self, value: int) -> None:
        if value & 0x8000:
            self._reset()
            return
        self.config = value
        self._restart_conversions()

    def read_register(self, register: int) -> int:
        self._catch_up()
        if register == self.CONFIG:
            return self.config
        if register == self.SHUNT:
            return self.shunt_code & 0xFFFF
        if register == self.CURRENT:
            return self.current_code & 0xFFFF
        if register == self.CALIBRATION:
            return self.calibration
        return self._read_other(register)

    def _read_other(self, register: int) -> int:
        raise NotImplementedError

    def write_register(self, register: int, value: int) -> None:
        self._catch_up()
        if register == self.CONFIG:
            self._write_config(value)
        elif register == self.CALIBRATION:
            self.calibration = value & self.CALIBRATION_MASK
        else:
            self._write_other(register, value)

    def _write_other(self, register: int, value: int) -> None:
        """Writes to read-only registers are ignored, as on the chip."""


# INA219 ADC setting (BADC/SADC nibble) -> conversion time, datasheet table 5:
# 9..12-bit single samples, then 12-bit averaged over 2..128 samples.
_INA219_ADC_TIME_S = {0b0000: 84e-6, 0b0001: 148e-6, 0b0010: 276e-6, 0b0011: 532e-6,
                      0b1000: 532e-6, 0b1001: 1.06e-3, 0b1010: 2.13e-3, 0b1011: 4.26e-3,
                      0b1100: 8.51e-3, 0b1101: 17.02e-3, 0b1110: 34.05e-3, 0b1111: 68.10e-3}


class INA219(_INA2xx):
    """INA219: 10 uV shunt LSB, 4 mV bus LSB, flags CNVR (bit 1) and OVF (bit 0) in the bus
    voltage register, CNVR cleared by reading the power register; calibration bit 0 is void."""

    CONFIG_POWER_ON = 0x399F
    CALIBRATION_MASK = 0xFFFE
    CURRENT_DIVIDER = 4096
    POWER_DIVIDER = 5000
    SHUNT_LSB_V = 10e-6
    BUS_LSB_V = 4e-3

    def _conversion_time_s(self) -> float:
        bus_s = _INA219_ADC_TIME_S[(self.config >> 7) & 0xF]
        shunt_s = _INA219_ADC_TIME_S[(self.config >> 3) & 0xF]
        mode = self.config & 0b11
        return {0b01: shunt_s, 0b10: bus_s, 0b11: shunt_s + bus_s}[mode]

    def _shunt_full_scale_code(self) -> int:
        return 4000 << ((self.config >> 11) & 0b11)

    def _bus_full_scale_code(self) -> int:
        return 8000 if self.config & 0x2000 else 4000

    def _read_other(self, register: int) -> int:
        if register == self.BUS:
            return (self.bus_code << 3) | (self.conversion_ready << 1) | self.math_overflow
        if register == self.POWER:
            self.conversion_ready = False
            return self.power_code
        return 0


# INA226 VBUSCT/VSHCT codes -> conversion time, and AVG codes -> samples averaged.
_INA226_CONVERSION_TIME_S = (140e-6, 204e-6, 332e-6, 588e-6, 1.1e-3, 2.116e-3, 4.156e-3, 8.244e-3)
_INA226_AVERAGES = (1, 4, 16, 64, 128, 256, 512, 1024)


class INA226(_INA2xx):
    """INA226: 2.5 uV shunt LSB, 1.25 mV bus LSB, flags in the Mask/Enable register (CVRF bit 3,
    OVF bit 2; reading it clears CVRF), identity in 0xFE (0x5449, "TI") and 0xFF (0x2260)."""

    MASK_ENABLE, ALERT_LIMIT, MANUFACTURER_ID, DIE_ID = 0x06, 0x07, 0xFE, 0xFF
    CONFIG_POWER_ON = 0x4127
    CALIBRATION_MASK = 0x7FFF
    CURRENT_DIVIDER = 2048
    POWER_DIVIDER = 20000
    SHUNT_LSB_V = 2.5e-6
    BUS_LSB_V = 1.25e-3

    def __init__(self, shunt_ohms: float, clock: Clock):
        self.mask_enable = 0
        self.alert_limit = 0
        super().__init__(shunt_ohms, clock)

    def _reset(self) -> None:
        self.mask_enable = 0
        self.alert_limit = 0
        super()._reset()

    def _conversion_time_s(self) -> float:
        averages = _INA226_AVERAGES[(self.config >> 9) & 0b111]
        bus_s = _INA226_CONVERSION_TIME_S[(self.config >> 6) & 0b111]
        shunt_s = _INA226_CONVERSION_TIME_S[(self.config >> 3) & 0b111]
        mode = self.config & 0b11
        return averages * {0b01: shunt_s, 0b10: bus_s, 0b11: shunt_s + bus_s}[mode]

    def _shunt_full_scale_code(self) -> int:
        return 0x7FFF

    def _bus_full_scale_code(self) -> int:
        return 0x7FFF

    def _write_config(self, value: int) -> None:
        # Bits 14..12 are reserved; bit 14 always reads back as 1.
        super()._write_config((value & 0x8FFF) | 0x4000)

    def _read_other(self, register: int) -> int:
        if register == self.BUS:
            return self.bus_code
        if register == self.POWER:
            return self.power_code
        if register == self.MASK_ENABLE:
            value = self.mask_enable | (self.conversion_ready << 3) | (self.math_overflow << 2)
            self.conversion_ready = False
            return value
        if register == self.ALERT_LIMIT:
            return self.alert_limit
        if register == self.MANUFACTURER_ID:
            return 0x5449
        if register == self.DIE_ID:
            return 0x2260
        return 0

    def _write_other(self, register: int, value: int) -> None:
        if register == self.MASK_ENABLE:
            self.mask_enable = value & 0xFC03
        elif register == self.ALERT_LIMIT:
            self.alert_limit = value


# TMP117 averaging (AVG bits) -> active conversion time; conversion cycle (CONV bits) -> standby
# cycle; the cycle is whichever is longer (datasheet table 7-7).
_TMP117_ACTIVE_S = (15.5e-3, 0.125, 0.5, 1.0)
_TMP117_CYCLE_S = (15.5e-3, 0.125, 0.25, 0.5, 1.0, 4.0, 8.0, 16.0)


class TMP117(EmulatedChip):
    """TMP117: 7.8125 m°C LSB, -256 °C (0x8000) until the first conversion, Data_Ready
    (config bit 13) cleared by reading the configuration or the result register.

    Registers 0x04-0x08 belong to the EEPROM (unlock, three general-purpose words, the offset);
    every write to them, and any register write while the EEPROM is unlocked, is recorded in
    `eeprom_writes`, since on the chip those writes wear or reprogram non-volatile memory.
    """

    TEMP_RESULT, CONFIG, HIGH_LIMIT, LOW_LIMIT, EEPROM_UL = 0x00, 0x01, 0x02, 0x03, 0x04
    EEPROM1, EEPROM2, TEMP_OFFSET, EEPROM3, DEVICE_ID = 0x05, 0x06, 0x07, 0x08, 0x0F
    CONFIG_POWER_ON = 0x0220
    LSB_C = 0.0078125

    def __init__(self, clock: Clock, device_id: int = 0x0117):
        super().__init__()
        self.clock = clock
        self.device_id = device_id
        self.temperature_c = 25.0
        self.eeprom = {self.EEPROM1: 0x0000, self.EEPROM2: 0x0000, self.TEMP_OFFSET: 0x0000,
                       self.EEPROM3: 0x0000}
        self.eeprom_unlocked = False
        self.eeprom_writes: list[tuple[int, int]] = []
        self.config = self.CONFIG_POWER_ON
        self.high_limit = 0x6000
        self.low_limit = 0x8000
        self.result_code = 0x8000
        self.data_ready = False
        self._cycle_started_s = clock()
        self._conversions_done = 0
        self._timed_config: int | None = None
        self._active_s = self._cycle_s = 0.0
        self._caught_up_s: float | None = None

    def set_temperature(self, celsius: float) -> None:
        self.temperature_c = celsius

    def _catch_up(self) -> None:
        mode = (self.config >> 10) & 0b11
        if mode == 0b01:
            return
        now = self.clock()
        if now == self._caught_up_s:
            return  # a register write since then restarted the cycle: none finished yet
        self._caught_up_s = now
        if self.config != self._timed_config:
            active_s = _TMP117_ACTIVE_S[(self.config >> 5) & 0b11]
            self._active_s = active_s
            self._cycle_s = max(active_s, _TMP117_CYCLE_S[(self.config >> 7) & 0b111])
            self._timed_config = self.config
        active_s, cycle_s = self._active_s, self._cycle_s
        elapsed_s = now - self._cycle_started_s
        done = 0 if elapsed_s < active_s else 1 + math.floor((elapsed_s - active_s) / cycle_s)
        if mode == 0b11:
            done = min(done, 1)
        if done > self._conversions_done:
            self._conversions_done = done
            offset = self.eeprom[self.TEMP_OFFSET]
            offset_code = offset - 0x10000 if offset & 0x8000 else offset
            code = round(self.temperature_c / self.LSB_C) + offset_code
            self.result_code = _clamp(code, -0x8000, 0x7FFF) & 0xFFFF
            self.data_ready = True

    def read_register(self, register: int) -> int:
        self._catch_up()
        if register == self.TEMP_RESULT:
            self.data_ready = False
            return self.result_code
        if register == self.CONFIG:
            value = self.config | (self.data_ready << 13)
            self.data_ready = False
            return value
        if register == self.HIGH_LIMIT:
            return self.high_limit
        if register == self.LOW_LIMIT:
            return self.low_limit
        if register == self.EEPROM_UL:
            return 0x8000 if self.eeprom_unlocked else 0
        if register in self.eeprom:
            return self.eeprom[register]
        if register == self.DEVICE_ID:
            return self.device_id
        return 0

    def write_register(self, register: int, value: int) -> None:
        self._catch_up()
        if self.EEPROM_UL <= register <= self.EEPROM3 or (
                self.eeprom_unlocked and register in (self.CONFIG, self.HIGH_LIMIT,
                                                      self.LOW_LIMIT)):
            self.eeprom_writes.append((register, value))
        if register == self.CONFIG:
            if value & 0x0002:
                self._soft_reset()
                return
            self.config = value & 0x0FFC
            self._cycle_started_s = self.clock()
            self._conversions_done = 0
        elif register == self.HIGH_LIMIT:
            self.high_limit = value
        elif register == self.LOW_LIMIT:
            self.low_limit = value
        elif register == self.EEPROM_UL:
            self.eeprom_unlocked = bool(value & 0x8000)
        elif register in self.eeprom:
            self.eeprom[register] = value

    def _soft_reset(self) -> None:
        self.config = self.CONFIG_POWER_ON
        self.high_limit = 0x6000
        self.low_limit = 0x8000
        self.result_code = 0x8000
        self.data_ready = False
        self.eeprom_unlocked = False
        self._cycle_started_s = self.clock()
        self._conversions_done = 0


# ADS1115 PGA code -> full-scale volts (codes 5..7 all mean 0.256 V), and MUX code -> inputs
# (positive, negative); None is GND for the single-ended settings.
ADS1115_FULL_SCALE_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
_ADS1115_MUX = ((0, 1), (0, 3), (1, 3), (2, 3), (0, None), (1, None), (2, None), (3, None))


class ADS1115(EmulatedChip):
    """ADS1115: 16-bit two's-complement result, LSB = full scale / 32768, single-shot on
    writing OS=1 (config bit 15), which reads 0 while converting and 1 when done."""

    CONVERSION, CONFIG, LO_THRESH, HI_THRESH = 0x00, 0x01, 0x02, 0x03
    CONFIG_POWER_ON = 0x8583

    def __init__(self, busy_polls: int = 2):
        super().__init__()
        self.busy_polls = busy_polls
        self.input_v = [0.0, 0.0, 0.0, 0.0]
        self.config = self.CONFIG_POWER_ON
        self.conversion_code = 0
        self.lo_thresh = 0x8000
        self.hi_thresh = 0x7FFF
        self.converting = False
        self._polls_left = 0

    def set_input_voltage(self, channel: int, volts: float) -> None:
        self.input_v[channel] = volts

    def _convert(self) -> None:
        positive, negative = _ADS1115_MUX[(self.config >> 12) & 0b111]
        volts = self.input_v[positive] - (0.0 if negative is None else self.input_v[negative])
        lsb_v = ADS1115_FULL_SCALE_V[(self.config >> 9) & 0b111] / 32768
        self.conversion_code = _clamp(round(volts / lsb_v), -0x8000, 0x7FFF)

    def _continuous(self) -> bool:
        return not self.config & 0x0100

    def read_register(self, register: int) -> int:
        if register == self.CONVERSION:
            if self._continuous():
                self._convert()
            return self.conversion_code & 0xFFFF
        if register == self.CONFIG:
            if self.converting and self._polls_left > 0:
                self._polls_left -= 1
                return self.config & 0x7FFF
            if self.converting:
                self._convert()
                self.converting = False
            return self.config | 0x8000
        if register == self.LO_THRESH:
            return self.lo_thresh
        if register == self.HI_THRESH:
            return self.hi_thresh
        return 0

    def write_register(self, register: int, value: int) -> None:
        if register == self.CONFIG:
            self.config = value & 0x7FFF
            if value & 0x8000 and not self._continuous() and not self.converting:
                self.converting = True
                self._polls_left = self.busy_polls
        elif register == self.LO_THRESH:
            self.lo_thresh = value
        elif register == self.HI_THRESH:
            self.hi_thresh = value
