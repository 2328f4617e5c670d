"""DS18B20 through w1_therm: the kernel's exact file formats, CRC, power-on value, absence."""

from pathlib import Path

import pytest

from agent.drivers.base import DriverContext
from agent.drivers.ds18b20 import DS18B20, MASTERS_RELIST_S, W1SlaveText
from agent.readings import Validity
from agent.seam import Hardware
from agent.sim.clock import SimClock
from agent.sim.sysfs import dallas_crc8, ds18b20_scratchpad, w1_millidegrees, w1_slave_text

DEVICE = "28-0316a2795eff"
# A real w1_slave capture from a DS18B20 at 23.125 C (kernel 6.1, Raspberry Pi OS).
GOOD_W1_SLAVE = ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n"
                 "72 01 4b 46 7f ff 0e 10 57 t=23125\n")


def make_sensor(tmp_path: Path, files: dict[str, str], device: str = DEVICE):
    clock = SimClock()
    device_dir = tmp_path / "sys/bus/w1/devices" / device
    device_dir.mkdir(parents=True)
    bulk = tmp_path / "sys/bus/w1/devices/w1_bus_master1/therm_bulk_read"
    bulk.parent.mkdir(parents=True)
    bulk.write_text("0\n")
    for name, text in files.items():
        (device_dir / name).write_text(text)
    context = DriverContext(Hardware(root=tmp_path, clock=clock))
    sensor = DS18B20.from_config({"name": "water_in", "id": device, "max_age_s": 3.0}, context)
    return sensor, clock, bulk, device_dir


def convert(sensor, clock):
    """One bulk conversion: the first read triggers it, a read 750 ms later collects it."""
    first = sensor.read()
    clock.advance(0.75)
    return first, sensor.read()[0]


def test_crc_of_real_capture_matches_the_dallas_polynomial():
    assert dallas_crc8(bytes.fromhex("72014b467fff0e10")) == 0x57


def test_w1_slave_good_reading(tmp_path):
    sensor, clock, bulk, _ = make_sensor(tmp_path, {"w1_slave": GOOD_W1_SLAVE})
    first, reading = convert(sensor, clock)
    assert first[0].validity is Validity.MISSING
    assert bulk.read_text() == "trigger\n"
    assert reading.validity is Validity.OK
    assert reading.value == pytest.approx(23.125)
    assert reading.unit == "°C"


def test_temperature_file_good_reading(tmp_path):
    sensor, clock, _, _ = make_sensor(tmp_path, {"temperature": "-10125\n"})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.OK
    assert reading.value == pytest.approx(-10.125)


def test_crc_failure_is_invalid(tmp_path):
    text = GOOD_W1_SLAVE.replace("crc=57 YES", "crc=57 NO")
    sensor, clock, _, _ = make_sensor(tmp_path, {"w1_slave": text})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.INVALID
    assert "CRC" in reading.reason


def test_power_on_85_is_invalid_but_a_real_85_is_not(tmp_path):
    power_on = bytes([0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
    sensor, clock, _, device_dir = make_sensor(tmp_path, {"w1_slave": w1_slave_text(power_on)})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.INVALID
    assert "power-on" in reading.reason

    (device_dir / "w1_slave").write_text(w1_slave_text(ds18b20_scratchpad(85.0)))
    clock.advance(0.1)
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.OK
    assert reading.value == 85.0


def test_unconfirmed_85_from_temperature_file_is_invalid(tmp_path):
    sensor, clock, _, _ = make_sensor(tmp_path, {"temperature": "85000\n"})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.INVALID
    assert "85.000" in reading.reason


def test_all_zero_scratchpad_is_invalid(tmp_path):
    zeros = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n"
    sensor, clock, _, _ = make_sensor(tmp_path, {"w1_slave": zeros})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.INVALID


def test_vanished_device_is_missing_and_last_value_goes_stale(tmp_path):
    sensor, clock, _, device_dir = make_sensor(tmp_path, {"w1_slave": GOOD_W1_SLAVE})
    _, reading = convert(sensor, clock)
    assert reading.ok
    # removed as the fake tree removes files (agent/sim/sysfs.py KernelFile.unlink): emptied
    # first, so the driver's open file reads nothing, as a removed sysfs attribute fails
    (device_dir / "w1_slave").write_text("")
    (device_dir / "w1_slave").unlink()
    device_dir.rmdir()
    clock.advance(0.1)
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.MISSING
    assert DEVICE in reading.reason


def test_reading_goes_stale_when_not_refreshed_in_time(tmp_path):
    sensor, clock, _, _ = make_sensor(tmp_path, {"w1_slave": GOOD_W1_SLAVE})
    _, reading = convert(sensor, clock)
    assert reading.ok
    clock.advance(5.0)  # the loop was away longer than max_age_s
    late = sensor.read()[0]
    assert late.validity is Validity.STALE
    assert late.value == reading.value and late.time == reading.time
    clock.advance(0.75)
    assert sensor.read()[0].ok


def test_many_sensors_share_one_bulk_conversion(tmp_path):
    clock = SimClock()
    devices = tmp_path / "sys/bus/w1/devices"
    bulk = devices / "w1_bus_master1/therm_bulk_read"
    bulk.parent.mkdir(parents=True)
    bulk.write_text("0\n")
    writes = []
    context = DriverContext(Hardware(root=tmp_path, clock=clock))
    sensors = []
    for i in range(8):
        device_id = f"28-00000000000{i}"
        (devices / device_id).mkdir()
        (devices / device_id / "w1_slave").write_text(
            w1_slave_text(ds18b20_scratchpad(20.0 + i)))
        sensors.append(DS18B20.from_config({"name": f"t{i}", "id": device_id,
                                            "max_age_s": 3.0}, context))
    for sensor in sensors:
        sensor.read()
        writes.append(bulk.read_text())
        bulk.write_text("0\n")
    assert writes.count("trigger\n") == 1, "eight sensors, one conversion"
    clock.advance(0.75)
    values = [sensor.read()[0].value for sensor in sensors]
    assert values == [20.0 + i for i in range(8)]


def scratchpad_of(raw: int) -> bytes:
    """A 12-bit conversion result as it sits in scratchpad bytes 0-1 (1/16 °C, little-endian),
    any value the register can hold, in or out of the datasheet's range."""
    return (raw & 0xFFFF).to_bytes(2, "little") + bytes([0x4B, 0x46, 0x7F, 0xFF, 0x10, 0x10])


# (ROM id, register value in 1/16 °C, the chip's range or None if valid): the DS18B20, DS18S20,
# DS1822 and DS1825 measure -55..+125 °C, the DS28EA00 (family 42) -40..+85 °C; the 12-bit
# register itself holds -128..+127.9375 °C.
RANGE_CASES = [(DEVICE, 125 * 16, None), (DEVICE, 126 * 16, "DS18B20 -55..125"),
               (DEVICE, 0x07FF, "DS18B20 -55..125"), (DEVICE, -55 * 16, None),
               (DEVICE, -56 * 16, "DS18B20 -55..125"), (DEVICE, -0x800, "DS18B20 -55..125"),
               ("10-000802b4ad26", -55 * 16, None), ("22-00000000aa01", 127 * 16, "DS1822 -55..125"),
               ("42-00000000aa01", 85 * 16 + 1, "DS28EA00 -40..85"),
               ("42-00000000aa01", -41 * 16, "DS28EA00 -40..85"), ("42-00000000aa01", 60 * 16, None)]


@pytest.mark.parametrize("device, raw, chip_range", RANGE_CASES)
def test_a_temperature_outside_the_datasheet_range_is_invalid(tmp_path, device, raw, chip_range):
    scratchpad = scratchpad_of(raw)
    sensor, clock, _, _ = make_sensor(tmp_path, {"w1_slave": w1_slave_text(scratchpad)}, device)
    _, reading = convert(sensor, clock)
    if chip_range is None:
        assert reading.ok and reading.value == raw / 16
    else:
        chip, limits = chip_range.split()
        assert reading.validity is Validity.INVALID and reading.value is None
        assert f"{w1_millidegrees(scratchpad) / 1000:.3f} °C" in reading.reason
        assert chip in reading.reason and f"{limits} °C" in reading.reason


def test_a_temperature_file_outside_the_range_is_invalid(tmp_path):
    sensor, clock, _, _ = make_sensor(tmp_path, {"temperature": "126000\n"})
    _, reading = convert(sensor, clock)
    assert reading.validity is Validity.INVALID
    assert "126.000" in reading.reason and "-55..125" in reading.reason


def test_parser_rejects_digits_the_kernel_never_prints():
    with pytest.raises(ValueError):
        W1SlaveText.parse("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n"
                          "72 01 4b 46 7f ff 0e 10 57 t=\u0662\u0663\u0661\u0662\u0665\n")


def test_parser_rejects_truncated_text():
    with pytest.raises(ValueError):
        W1SlaveText.parse("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n")


def test_bus_masters_are_listed_again_after_a_minute_or_a_failed_trigger(tmp_path):
    sensor, clock, bulk, _ = make_sensor(tmp_path, {"w1_slave": GOOD_W1_SLAVE})
    convert(sensor, clock)
    second = tmp_path / "sys/bus/w1/devices/w1_bus_master2/therm_bulk_read"
    second.parent.mkdir()
    second.write_text("0\n")
    convert(sensor, clock)  # within the minute: the known master only
    assert bulk.read_text() == "trigger\n" and second.read_text() == "0\n"
    clock.advance(MASTERS_RELIST_S)
    convert(sensor, clock)
    assert second.read_text() == "trigger\n"
    bulk.unlink()  # the first master gone: the other still converts, and reads go on
    bulk.parent.rmdir()
    second.write_text("0\n")
    _, reading = convert(sensor, clock)
    assert second.read_text() == "trigger\n" and reading.ok
