"""`hearth sensors` on a hand-written sysfs tree, through the installed command."""

import json
import subprocess
import sys
from pathlib import Path

GOOD = "28-0316a2795eff"
GOOD_TEMPERATURE_FILE = "28-0316a2795e00"
BAD_CRC = "28-0316a2795e01"
POWER_ON = "28-0316a2795e02"
ABSENT = "28-0316a2795e03"
HEARTH = str(Path(sys.executable).with_name("hearth"))
"""The console script installed beside this interpreter (the .venv's), not one found on PATH."""

W1_SLAVE_23 = ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n"
               "72 01 4b 46 7f ff 0e 10 57 t=23125\n")

BOARD = """description = "test carrier with five DS18B20s and the SoC zone"
[pins]
one_wire_gpio = 4
flow_gpio = 17
status_led_gpio = 27
slot_id_gpios = []
""" + "".join(f'[[sensor]]\nname = "{n}"\nkind = "ds18b20"\n'
              for n in ("good", "good_temperature_file", "bad_crc", "power_on", "absent")) + """
[[sensor]]
name = "soc"
kind = "soc"
"""

SITE = 'board_type = "five-w1"\n' + "".join(
    f'[[sensor]]\nname = "{n}"\nid = "{i}"\n' for n, i in (
        ("good", GOOD), ("good_temperature_file", GOOD_TEMPERATURE_FILE), ("bad_crc", BAD_CRC),
        ("power_on", POWER_ON), ("absent", ABSENT)))


def test_sensors_json_reports_each_validity(tmp_path):
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards/five-w1.toml").write_text(BOARD)
    (tmp_path / "hearth.toml").write_text(SITE)
    devices = tmp_path / "root/sys/bus/w1/devices"
    for device_id, name, text in (
            (GOOD, "w1_slave", W1_SLAVE_23),
            (GOOD_TEMPERATURE_FILE, "temperature", "21562\n"),
            (BAD_CRC, "w1_slave", W1_SLAVE_23.replace("crc=57 YES", "crc=57 NO")),
            (POWER_ON, "temperature", "85000\n")):
        (devices / device_id).mkdir(parents=True)
        (devices / device_id / name).write_text(text)
    (devices / "w1_bus_master1").mkdir()
    (devices / "w1_bus_master1/therm_bulk_read").write_text("0\n")
    zone = tmp_path / "root/sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("51540\n")

    result = subprocess.run(
        [HEARTH, "sensors", "--config", str(tmp_path / "hearth.toml"),
         "--root", str(tmp_path / "root"), "--json"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    readings = {r["sensor"]: r for r in json.loads(result.stdout)}

    assert readings["good"]["validity"] == "ok" and readings["good"]["value"] == 23.125
    assert readings["good_temperature_file"]["validity"] == "ok"
    assert readings["good_temperature_file"]["value"] == 21.562
    assert readings["bad_crc"]["validity"] == "invalid"
    assert "CRC" in readings["bad_crc"]["reason"]
    assert readings["power_on"]["validity"] == "invalid"
    assert "85.000" in readings["power_on"]["reason"]
    assert readings["absent"]["validity"] == "missing"
    assert ABSENT in readings["absent"]["reason"]
    assert readings["soc"]["validity"] == "ok" and readings["soc"]["value"] == 51.54
    assert (devices / "w1_bus_master1/therm_bulk_read").read_text() == "trigger\n"


def test_sensors_human_output_names_each_sensor(tmp_path):
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards/five-w1.toml").write_text(BOARD)
    (tmp_path / "hearth.toml").write_text(SITE)
    result = subprocess.run(
        [HEARTH, "sensors", "--config", str(tmp_path / "hearth.toml"),
         "--root", str(tmp_path / "root")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert all("missing" in line for line in lines)
