"""ADS1115 driver against an emulated chip: the datasheet's full-scale/LSB table, single-shot
conversion with bounded ready polling, channel selection, clipping and scaling."""

import pytest

from agent.drivers.ads1115 import ADS1115, MAX_POLLS
from agent.drivers.base import DriverContext
from agent.readings import Validity
from agent.seam import Hardware
from agent.sim import chips
from agent.sim.smbus import EmulatedSMBus


def build(chip, channel=0, gain=2.048, scale=1.0, offset=0.0, unit="V"):
    bus = EmulatedSMBus({0x49: chip})
    # A clock that never moves: polling must be bounded without it.
    context = DriverContext(Hardware(i2c_bus=lambda number: bus, clock=lambda: 42.0))
    return ADS1115.from_config(
        {"name": "water_pressure", "bus": 1, "address": 0x49, "channel": channel, "gain": gain,
         "scale": scale, "offset": offset, "unit": unit}, context)


# Full-scale range -> LSB, datasheet table "Full-Scale Range and Corresponding LSB Size".
LSB_TABLE = [(6.144, 187.5e-6), (4.096, 125e-6), (2.048, 62.5e-6), (1.024, 31.25e-6),
             (0.512, 15.625e-6), (0.256, 7.8125e-6)]


@pytest.mark.parametrize("gain, lsb_v", LSB_TABLE)
def test_gain_table_lsb_sizes(gain, lsb_v):
    chip = chips.ADS1115()
    chip.set_input_voltage(0, 12345 * lsb_v)
    (reading,) = build(chip, gain=gain).read()
    assert chip.conversion_code == 12345
    assert reading.ok and reading.value == pytest.approx(12345 * lsb_v, rel=1e-12)


@pytest.mark.parametrize("gain, pga_code", [(6.144, 0), (4.096, 1), (2.048, 2), (1.024, 3),
                                            (0.512, 4), (0.256, 5)])
def test_config_word_selects_single_shot_on_the_channel_against_gnd(gain, pga_code):
    chip = chips.ADS1115()
    build(chip, channel=3, gain=gain).read()
    assert chip.config >> 12 & 0b111 == 0b111     # MUX: AIN3 vs GND
    assert chip.config >> 9 & 0b111 == pga_code
    assert chip.config & 0x0100                   # MODE: single-shot


def test_each_sensor_reads_its_own_channel():
    chip = chips.ADS1115()
    for channel, volts in enumerate((0.5, 1.0, 1.5, 2.0)):
        chip.set_input_voltage(channel, volts)
    readings = [build(chip, channel=channel, gain=4.096).read()[0].value for channel in range(4)]
    assert readings == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=125e-6)


def test_board_pressure_transducer_scaling():
    # hardware/boards/oil-carrier.toml: 0.5-4.5 V for 0-10 bar -> 2.5 bar/V, -1.25 bar.
    chip = chips.ADS1115()
    chip.set_input_voltage(0, 2.5)
    (reading,) = build(chip, gain=6.144, scale=2.5, offset=-1.25, unit="bar").read()
    assert reading.unit == "bar" and reading.value == pytest.approx(5.0, abs=0.001)


@pytest.mark.parametrize("busy_polls", [0, 1, 5, MAX_POLLS - 1])
def test_waits_for_the_ready_bit(busy_polls):
    chip = chips.ADS1115(busy_polls=busy_polls)
    chip.set_input_voltage(0, 1.0)
    (reading,) = build(chip).read()
    assert reading.ok and reading.value == pytest.approx(1.0, abs=62.5e-6)
    # one config write, polls until ready, one conversion read
    assert chip.transactions == 1 + busy_polls + 1 + 1


def test_a_conversion_that_never_finishes_gives_up_after_a_bounded_number_of_polls():
    chip = chips.ADS1115(busy_polls=10_000)
    chip.set_input_voltage(0, 1.0)
    (reading,) = build(chip).read()
    assert reading.validity is Validity.INVALID
    assert f"{MAX_POLLS} polls" in reading.reason
    assert chip.transactions == 1 + MAX_POLLS


def test_a_stale_previous_result_is_not_returned_before_ready():
    chip = chips.ADS1115(busy_polls=3)
    sensor = build(chip)
    chip.set_input_voltage(0, 0.25)
    assert sensor.read()[0].value == pytest.approx(0.25, abs=62.5e-6)
    chip.set_input_voltage(0, 1.75)
    assert sensor.read()[0].value == pytest.approx(1.75, abs=62.5e-6)


@pytest.mark.parametrize("volts", [2.5, -2.5])
def test_an_input_beyond_full_scale_is_clipped_and_invalid(volts):
    chip = chips.ADS1115()
    chip.set_input_voltage(0, volts)
    (reading,) = build(chip, gain=2.048).read()
    assert reading.validity is Validity.INVALID
    assert "2.048 V" in reading.reason


# A single-ended input is rated GND - 0.3 V to VDD + 0.3 V (VDD at most 5.5 V): a reading
# outside -0.3..5.8 V is within the converter's full scale but not on any pin of the chip.
@pytest.mark.parametrize("gain, volts, valid", [(2.048, -0.3, True), (2.048, -1.0, False),
                                                (4.096, -4.0, False), (6.144, 5.8, True),
                                                (6.144, 6.0, False)])
def test_an_input_the_pin_cannot_carry_is_invalid(gain, volts, valid):
    chip = chips.ADS1115()
    chip.set_input_voltage(0, volts)
    (reading,) = build(chip, gain=gain, scale=2.0, unit="bar").read()
    assert reading.ok is valid
    if valid:
        assert reading.value == pytest.approx(2 * volts, abs=2 * gain / 32768)
    else:
        assert reading.validity is Validity.INVALID and reading.value is None
        assert f"{volts:.3f} V" in reading.reason and "-0.3..5.8 V" in reading.reason
        assert "ads1115" in reading.reason


def test_an_unanswering_chip_is_missing():
    chip = chips.ADS1115()
    chip.inject_nack()
    (reading,) = build(chip).read()
    assert reading.validity is Validity.MISSING and "EREMOTEIO" in reading.reason
    assert chip.transactions == 3


def test_schema_keys_defaults_and_choices():
    schema = ADS1115.SCHEMA
    assert schema["gain"].choices == (6.144, 4.096, 2.048, 1.024, 0.512, 0.256)
    assert schema["gain"].problem(3.3) and schema["gain"].problem(6.144) is None
    assert (schema["scale"].default, schema["offset"].default, schema["unit"].default) == (
        1.0, 0.0, "V")
    assert schema["channel"].problem(4) and schema["channel"].problem(0) is None
    assert schema["address"].problem(0x47) and schema["address"].problem(0x4B) is None
