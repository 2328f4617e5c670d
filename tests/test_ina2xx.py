"""INA219/INA226 drivers against emulated chips, built from the datasheets' worked examples:
INA219 SBOS448 section 8.5.1 (32 V, 0.1 ohm, 2 A expected -> 100 uA LSB, Cal 4096, 2 mW power
LSB) and its Configure/Measure/Calculate table (10 A through 2 mohm at 12 V: shunt 07D0h,
bus 5D98h, Cal 5000h, current 2710h, power 1766h = 119.8 W), and the INA226 SBOS547 table of
the same load (shunt 1F40h, bus 2570h, Cal 0A00h, current 2710h, power 12B8h)."""

import pytest

from agent.drivers.base import DriverContext
from agent.drivers.ina2xx import INA219, INA226, ina219_calibration, ina226_calibration
from agent.errors import ConfigValueError
from agent.readings import Validity
from agent.seam import Hardware
from agent.sim import chips
from agent.sim.smbus import EmulatedSMBus


class Clock:
    """Simulated monotonic time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def build(driver_class, chip, clock, shunt_ohms, max_current_a, address=0x40):
    bus = EmulatedSMBus({0x40: chip})
    context = DriverContext(Hardware(i2c_bus=lambda number: bus, clock=clock))
    settings = {"name": "board_power", "bus": 1, "address": address,
                "shunt_ohms": shunt_ohms, "max_current_a": max_current_a}
    return driver_class.from_config(settings, context)


def values(readings):
    return {reading.sensor.split(".")[1]: reading.value for reading in readings}


def settle(sensor, clock, seconds=0.1):
    """Let the chip convert after the driver's first (configuring) sample."""
    sensor.read()
    clock.now_s += seconds


def test_ina219_calibration_datasheet_example():
    register, current_lsb_a = ina219_calibration(shunt_ohms=0.1, max_current_a=2.0)
    assert register == 4096
    assert current_lsb_a == pytest.approx(100e-6)


def test_ina219_calibration_of_the_configure_measure_calculate_table():
    register, current_lsb_a = ina219_calibration(shunt_ohms=0.002, max_current_a=20.0)
    assert register == 0x5000
    assert current_lsb_a == pytest.approx(1e-3)


def test_ina226_calibration_equation():
    register, current_lsb_a = ina226_calibration(shunt_ohms=0.002, max_current_a=32.768)
    assert register == 0x0A00               # 0.00512 / (1 mA * 2 mohm) = 2560
    assert current_lsb_a == pytest.approx(1e-3)


def test_ina219_power_lsb_is_twenty_current_lsbs():
    clock = Clock()
    sensor = build(INA219, chips.INA219(0.1, clock), clock, shunt_ohms=0.1, max_current_a=2.0)
    assert sensor.power_lsb_w == pytest.approx(2e-3)


def test_emulated_ina219_reproduces_the_datasheet_register_table():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.002, clock=clock)
    chip.set_current(10.0)
    chip.set_bus_voltage(11.98)
    chip.write_register(0x00, 0x019F)
    chip.write_register(0x05, 0x5000)
    clock.now_s += 0.01
    assert chip.read_register(0x01) == 0x07D0
    assert chip.read_register(0x02) & ~0b11 == 0x5D98
    assert chip.read_register(0x04) == 0x2710
    assert chip.read_register(0x03) == 0x1766


def test_emulated_ina226_reproduces_the_datasheet_register_table():
    clock = Clock()
    chip = chips.INA226(shunt_ohms=0.002, clock=clock)
    chip.set_current(10.0)
    chip.set_bus_voltage(11.98)
    chip.write_register(0x05, 0x0A00)
    clock.now_s += 0.01
    assert chip.read_register(0x00) == 0x4127
    assert chip.read_register(0x01) == 0x1F40
    assert chip.read_register(0x02) == 0x2570
    assert chip.read_register(0x04) == 0x2710
    assert chip.read_register(0x03) == 0x12B8


@pytest.mark.parametrize("driver_class, chip_class, max_current_a", [
    (INA219, chips.INA219, 20.0), (INA226, chips.INA226, 32.768)])
def test_driver_reads_the_datasheet_load(driver_class, chip_class, max_current_a):
    clock = Clock()
    chip = chip_class(shunt_ohms=0.002, clock=clock)
    chip.set_current(10.0)
    chip.set_bus_voltage(11.98)
    sensor = build(driver_class, chip, clock, shunt_ohms=0.002, max_current_a=max_current_a)
    settle(sensor, clock)
    readings = sensor.read()
    assert [r.validity for r in readings] == [Validity.OK] * 3
    assert [(r.sensor, r.unit) for r in readings] == [
        ("board_power.bus_v", "V"), ("board_power.current_a", "A"), ("board_power.power_w", "W")]
    assert values(readings) == pytest.approx({"bus_v": 11.98, "current_a": 10.0,
                                              "power_w": 119.8})


def test_ina219_writes_its_configuration_and_calibration_at_start():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=3.2).read()
    # 32 V range, PGA /8 (3.2 A * 0.1 ohm = 320 mV), 16-sample ADCs, continuous.
    assert chip.config == 0x3E67
    assert chip.calibration == 4096


def test_ina219_picks_the_smallest_shunt_range_that_holds_the_expected_current():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=0.5).read()
    assert (chip.config >> 11) & 0b11 == 0b01     # 50 mV fits the 80 mV range


def test_first_sample_before_any_conversion_is_invalid_then_valid():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    chip.set_current(1.2)
    chip.set_bus_voltage(5.1)
    sensor = build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=3.2)
    first = sensor.read()
    assert [r.validity for r in first] == [Validity.INVALID] * 3
    assert "no conversion finished" in first[1].reason
    clock.now_s += 0.1
    assert values(sensor.read()) == pytest.approx(
        {"bus_v": 5.1, "current_a": 1.2, "power_w": 6.12}, abs=0.004)


@pytest.mark.parametrize("driver_class, chip_class", [(INA219, chips.INA219),
                                                      (INA226, chips.INA226)])
def test_lost_calibration_is_rewritten_and_the_sample_is_computed_from_the_shunt(
        driver_class, chip_class):
    clock = Clock()
    chip = chip_class(shunt_ohms=0.01, clock=clock)
    chip.set_current(2.5)
    chip.set_bus_voltage(5.0)
    sensor = build(driver_class, chip, clock, shunt_ohms=0.01, max_current_a=5.0)
    settle(sensor, clock)
    calibration = chip.calibration
    assert sensor.read()[1].ok
    chip.lose_calibration()
    clock.now_s += 0.1
    assert chip.read_register(0x04) == 0          # the chip's own current register is now 0
    readings = sensor.read()
    assert [r.validity for r in readings] == [Validity.OK] * 3
    assert "rewrote" in readings[1].reason
    assert values(readings) == pytest.approx({"bus_v": 5.0, "current_a": 2.5, "power_w": 12.5},
                                             rel=1e-3)
    assert chip.calibration == calibration


@pytest.mark.parametrize("driver_class, chip_class", [(INA219, chips.INA219),
                                                      (INA226, chips.INA226)])
def test_after_rewriting_the_registers_wait_for_a_conversion_with_the_new_calibration(
        driver_class, chip_class):
    clock = Clock()
    chip = chip_class(shunt_ohms=0.01, clock=clock)
    chip.set_current(2.5)
    chip.set_bus_voltage(5.0)
    sensor = build(driver_class, chip, clock, shunt_ohms=0.01, max_current_a=5.0)
    settle(sensor, clock)
    sensor.read()
    chip.lose_calibration()
    clock.now_s += 0.1
    sensor.read()                                 # rewrites, restarting the conversion
    waiting = sensor.read()                       # same instant: none finished yet
    assert [r.validity for r in waiting] == [Validity.INVALID] * 3
    assert "waiting for the first conversion" in waiting[1].reason
    clock.now_s += 0.1
    readings = sensor.read()
    assert [r.reason for r in readings] == ["", "", ""]
    assert values(readings) == pytest.approx({"bus_v": 5.0, "current_a": 2.5, "power_w": 12.5},
                                             rel=1e-3)


def test_lost_calibration_right_after_the_reset_is_invalid():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    chip.set_current(1.0)
    chip.set_bus_voltage(5.0)
    sensor = build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=3.2)
    settle(sensor, clock)
    sensor.read()
    chip.lose_calibration()                       # registers are zero until a conversion
    readings = sensor.read()
    assert [r.validity for r in readings] == [Validity.INVALID] * 3
    assert "0x0000" in readings[1].reason and "0x1000" in readings[1].reason


@pytest.mark.parametrize("driver_class, chip_class, shunt_ohms, max_current_a, amps", [
    (INA219, chips.INA219, 0.1, 0.5, 0.7),        # 7000 * 20480 / 4096 = 35000 > 32767
    (INA226, chips.INA226, 0.002, 10.0, 30.0),    # 24000 * 8388 / 2048 > 32767
])
def test_math_overflow_makes_current_and_power_invalid(driver_class, chip_class, shunt_ohms,
                                                       max_current_a, amps):
    clock = Clock()
    chip = chip_class(shunt_ohms=shunt_ohms, clock=clock)
    chip.set_bus_voltage(5.0)
    sensor = build(driver_class, chip, clock, shunt_ohms=shunt_ohms, max_current_a=max_current_a)
    settle(sensor, clock)
    chip.set_current(amps)
    clock.now_s += 0.1
    bus, current, power = sensor.read()
    assert bus.ok and bus.value == pytest.approx(5.0)
    assert current.validity is power.validity is Validity.INVALID
    assert "overflow" in current.reason


def test_shunt_voltage_beyond_the_range_is_not_reported_as_a_current():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    chip.set_bus_voltage(5.0)
    sensor = build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=3.2)
    settle(sensor, clock)
    chip.set_current(4.0)                         # 400 mV across a 320 mV range
    clock.now_s += 0.1
    _, current, power = sensor.read()
    assert current.validity is power.validity is Validity.INVALID
    assert "end of the chip's range" in current.reason


# Bus voltages the chip can show but cannot have measured: the INA219's register holds up to
# 32 V in its 32 V range while its bus input is rated 0..26 V; the INA226's holds 40.96 V
# and its bus input is rated 0..36 V.
@pytest.mark.parametrize("driver_class, chip_class, shunt_ohms, volts, valid, limit", [
    (INA219, chips.INA219, 0.1, 26.0, True, "0..26 V"),
    (INA219, chips.INA219, 0.1, 30.0, False, "0..26 V"),
    (INA219, chips.INA219, 0.1, 32.0, False, "0..26 V"),
    (INA226, chips.INA226, 0.002, 36.0, True, "0..36 V"),
    (INA226, chips.INA226, 0.002, 38.5, False, "0..36 V"),
])
def test_a_bus_voltage_beyond_the_chip_rating_is_invalid(driver_class, chip_class, shunt_ohms,
                                                        volts, valid, limit):
    clock = Clock()
    chip = chip_class(shunt_ohms=shunt_ohms, clock=clock)
    chip.set_bus_voltage(volts)
    chip.set_current(0.5)
    sensor = build(driver_class, chip, clock, shunt_ohms=shunt_ohms, max_current_a=1.0)
    settle(sensor, clock)
    readings = sensor.read()
    if valid:
        assert all(reading.ok for reading in readings)
        assert readings[0].value == pytest.approx(volts)
        return
    for reading in readings:
        assert reading.validity is Validity.INVALID and reading.value is None
        assert f"{volts:.2f} V" in reading.reason and limit in reading.reason
    chip.lose_calibration()                       # the recalibrating path judges it the same
    clock.now_s += 0.1
    assert [reading.validity for reading in sensor.read()] == [Validity.INVALID] * 3


def test_negative_current_reads_negative_with_positive_power():
    clock = Clock()
    chip = chips.INA226(shunt_ohms=0.002, clock=clock)
    chip.set_bus_voltage(12.0)
    chip.set_current(-5.0)
    sensor = build(INA226, chip, clock, shunt_ohms=0.002, max_current_a=32.768)
    settle(sensor, clock)
    assert values(sensor.read()) == pytest.approx({"bus_v": 12.0, "current_a": -5.0,
                                                   "power_w": 60.0})


def test_an_unanswering_chip_is_missing_and_costs_a_bounded_number_of_transfers():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.1, clock=clock)
    sensor = build(INA219, chip, clock, shunt_ohms=0.1, max_current_a=3.2)
    settle(sensor, clock)
    chip.inject_nack()
    before = chip.transactions
    readings = sensor.read()
    assert [r.validity for r in readings] == [Validity.MISSING] * 3
    assert "EREMOTEIO" in readings[0].reason
    assert chip.transactions - before == 3
    sensor.read()
    assert chip.transactions - before == 3        # backing off: no bus traffic
    chip.clear_faults()
    clock.now_s += 5.0
    sensor.read()
    clock.now_s += 0.1
    assert all(r.ok for r in sensor.read())


def test_ina226_driver_refuses_an_ina219_at_its_address():
    clock = Clock()
    chip = chips.INA219(shunt_ohms=0.002, clock=clock)
    sensor = build(INA226, chip, clock, shunt_ohms=0.002, max_current_a=10.0)
    readings = sensor.read()
    assert [r.validity for r in readings] == [Validity.INVALID] * 3
    assert "die ID" in readings[0].reason
    assert chip.config == 0x399F                  # nothing was written to the wrong chip
    before = chip.transactions
    assert sensor.read()[0].validity is Validity.INVALID
    assert chip.transactions == before


@pytest.mark.parametrize("driver_class, shunt_ohms, max_current_a", [
    (INA219, 0.1, 3.3), (INA226, 0.01, 8.2)])
def test_a_shunt_drop_beyond_the_chip_range_is_a_config_error(driver_class, shunt_ohms,
                                                              max_current_a):
    clock = Clock()
    with pytest.raises(ConfigValueError, match="max_current_a"):
        build(driver_class, chips.INA226(shunt_ohms, clock), clock, shunt_ohms, max_current_a)


@pytest.mark.parametrize("driver_class", [INA219, INA226])
def test_schema_accepts_only_the_chip_address_range(driver_class):
    address = driver_class.SCHEMA["address"]
    assert address.problem(0x40) is None and address.problem(0x4F) is None
    assert address.problem(0x3F) and address.problem(0x50)
    assert driver_class.SCHEMA["shunt_ohms"].problem(0.0)
    assert set(driver_class.SCHEMA) == {"bus", "address", "shunt_ohms", "max_current_a"}
