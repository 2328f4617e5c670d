"""TMP117 driver against an emulated chip: datasheet result vectors (7.8125 m°C LSB, two's
complement, e.g. 0x0C80 = 25 °C, 0xFF80 = -1 °C), the device ID, Data_Ready, and an EEPROM
that is never written."""

import pytest

from agent.drivers.base import DriverContext
from agent.drivers.tmp117 import TMP117
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


def build(chip):
    bus = EmulatedSMBus({0x48: chip})
    context = DriverContext(Hardware(i2c_bus=lambda number: bus, clock=chip.clock))
    return TMP117.from_config({"name": "oil", "bus": 1, "address": 0x48}, context)


# (temperature, result register) from the datasheet's temperature data format table.
VECTORS = [(150.0, 0x4B00), (100.0, 0x3200), (25.0, 0x0C80), (0.1, 0x000D), (0.0078125, 0x0001),
           (0.0, 0x0000), (-0.0078125, 0xFFFF), (-0.1, 0xFFF3), (-1.0, 0xFF80),
           (-25.0, 0xF380), (-55.0, 0xE480)]


@pytest.mark.parametrize("celsius, register", VECTORS)
def test_emulated_chip_encodes_the_datasheet_vectors(celsius, register):
    clock = Clock()
    chip = chips.TMP117(clock)
    chip.set_temperature(celsius)
    clock.now_s += 1.0
    assert chip.read_register(0x00) == register


@pytest.mark.parametrize("celsius, register", VECTORS)
def test_driver_decodes_the_datasheet_vectors(celsius, register):
    clock = Clock()
    chip = chips.TMP117(clock)
    chip.set_temperature(celsius)
    sensor = build(chip)
    clock.now_s += 1.0
    (reading,) = sensor.read()
    assert reading.ok and reading.unit == "°C" and reading.sensor == "oil"
    assert reading.value == pytest.approx(chips.TMP117.LSB_C * (register - (
        0x10000 if register & 0x8000 else 0)))
    assert reading.value == pytest.approx(celsius, abs=0.0039)


def test_no_reading_before_the_first_conversion():
    clock = Clock()
    sensor = build(chips.TMP117(clock))
    (reading,) = sensor.read()
    assert reading.validity is Validity.MISSING
    assert "no conversion" in reading.reason
    clock.now_s += 0.125                          # 8 averages of 15.5 ms at power-on settings
    assert sensor.read()[0].ok


def test_a_result_is_read_once_per_conversion_and_keeps_its_time():
    clock = Clock()
    chip = chips.TMP117(clock)
    chip.set_temperature(40.0)
    sensor = build(chip)
    clock.now_s = 0.2
    first = sensor.read()[0]
    chip.set_temperature(41.0)
    clock.now_s = 0.3                             # the next result lands at 1.125 s
    again = sensor.read()[0]
    assert again == first and again.time == 0.2
    clock.now_s = 1.2
    fresh = sensor.read()[0]
    assert fresh.value == pytest.approx(41.0) and fresh.time == 1.2


@pytest.mark.parametrize("device_id", [0x1116, 0x0000, 0x0119])
def test_a_chip_with_another_id_is_invalid_and_left_alone(device_id):
    clock = Clock()
    chip = chips.TMP117(clock, device_id=device_id)
    sensor = build(chip)
    clock.now_s += 1.0
    (reading,) = sensor.read()
    assert reading.validity is Validity.INVALID
    assert f"0x{device_id:04x}" in reading.reason
    before = chip.transactions
    clock.now_s += 4.0
    assert sensor.read()[0].validity is Validity.INVALID
    assert chip.transactions == before


def test_a_later_die_revision_is_still_a_tmp117():
    clock = Clock()
    chip = chips.TMP117(clock, device_id=0x1117)  # bits 15..12 are the revision
    sensor = build(chip)
    clock.now_s += 1.0
    assert sensor.read()[0].ok


def test_a_chip_left_in_shutdown_is_set_converting_without_touching_the_eeprom():
    clock = Clock()
    chip = chips.TMP117(clock)
    chip.set_temperature(60.0)
    chip.write_register(0x01, 0x0220 | 0b01 << 10)   # as if its EEPROM said: shut down
    sensor = build(chip)
    clock.now_s += 2.0
    assert not sensor.read()[0].ok
    assert (chip.config >> 10) & 0b11 == 0b00
    clock.now_s += 1.0
    assert sensor.read()[0].value == pytest.approx(60.0)
    assert chip.eeprom_writes == []


def test_the_eeprom_is_never_written_through_start_faults_and_recovery():
    clock = Clock()
    chip = chips.TMP117(clock)
    sensor = build(chip)
    for step in range(250):
        if step == 50:
            chip.inject_nack(transactions=7)
        if step == 160:
            chip.inject_timeout(transactions=3)
        chip.set_temperature(20.0 + step / 10)
        clock.now_s += 0.1
        sensor.read()
    assert sensor.read()[0].ok
    assert chip.eeprom_writes == []
    assert not chip.eeprom_unlocked


def test_a_failed_read_drops_the_last_value():
    clock = Clock()
    chip = chips.TMP117(clock)
    sensor = build(chip)
    clock.now_s += 1.0
    assert sensor.read()[0].ok
    chip.inject_nack()
    clock.now_s += 0.1
    failed = sensor.read()[0]
    assert failed.validity is Validity.MISSING and "EREMOTEIO" in failed.reason
    chip.clear_faults()
    clock.now_s += 5.0
    recovered = sensor.read()[0]
    assert recovered.ok and recovered.time == clock.now_s


# Result registers at and beyond the datasheet's -55..+150 °C: 0x4B00 is 150 °C, 0xE480 -55 °C;
# 0x7FFF (255.99 °C) is the top of what the register holds.
@pytest.mark.parametrize("register, valid", [(0x4B00, True), (0x4B01, False), (0x7FFF, False),
                                             (0xE480, True), (0xE47F, False), (0x8001, False)])
def test_a_result_outside_the_datasheet_range_is_invalid(register, valid):
    clock = Clock()
    chip = chips.TMP117(clock)
    code = register - 0x10000 if register & 0x8000 else register
    chip.set_temperature(code * chips.TMP117.LSB_C)
    sensor = build(chip)
    clock.now_s += 1.0
    (reading,) = sensor.read()
    assert chip.result_code == register
    assert reading.ok is valid
    if not valid:
        assert reading.validity is Validity.INVALID and reading.value is None
        assert f"{code * chips.TMP117.LSB_C:.2f} °C" in reading.reason
        assert "tmp117" in reading.reason and "-55..150 °C" in reading.reason


def test_a_rejected_result_is_not_replaced_by_the_one_before_it():
    clock = Clock()
    chip = chips.TMP117(clock)
    chip.set_temperature(25.0)
    sensor = build(chip)
    clock.now_s += 1.0
    assert sensor.read()[0].ok
    chip.set_temperature(200.0)
    clock.now_s += 1.0                            # the next conversion lands: 200 °C
    assert sensor.read()[0].validity is Validity.INVALID
    clock.now_s += 0.1                            # no new result yet
    (again,) = sensor.read()
    assert again.validity is Validity.INVALID and again.value is None


def test_schema_addresses_are_the_four_add0_straps():
    address = TMP117.SCHEMA["address"]
    assert [a for a in range(0x40, 0x50) if address.problem(a) is None] == [0x48, 0x49, 0x4A,
                                                                              0x4B]
