"""A board whose I2C interface is not enabled: /dev/i2c-1 is missing, and the operator is told
so, with what to change, instead of a FileNotFoundError traceback. Through the seam: the I2C
bus factory raises as smbus2.SMBus does for a missing device node."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.drivers.base import DriverContext
from agent.drivers.registry import build_sensors
from agent.errors import HardwareError
from agent.seam import Hardware

HEARTH = str(Path(sys.executable).with_name("hearth"))

BOARD = """description = "one INA219 on I2C bus 1"
[pins]
one_wire_gpio = 4
flow_gpio = 17
status_led_gpio = 27
slot_id_gpios = []
[[sensor]]
name = "board_power"
kind = "ina219"
role = "power"
bus = 1
address = 0x40
shunt_ohms = 0.1
max_current_a = 2.0
[[sensor]]
name = "soc"
kind = "soc"
role = "soc"
"""


def config_file(tmp_path: Path, bus: int = 1) -> Path:
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards/one-ina.toml").write_text(BOARD.replace("bus = 1", f"bus = {bus}"))
    (tmp_path / "hearth.toml").write_text('board_type = "one-ina"\n')
    return tmp_path / "hearth.toml"


def no_device_node(error_type: type[OSError], code: int):
    """An I2C bus factory that fails as smbus2.SMBus(n) does: os.open on /dev/i2c-n."""
    def open_bus(bus_number: int):
        path = f"/dev/i2c-{bus_number}"
        raise error_type(code, os.strerror(code), path)
    return open_bus


def test_missing_bus_names_the_device_and_how_to_enable_i2c(tmp_path):
    config = load_config(config_file(tmp_path))
    context = DriverContext(Hardware(root=tmp_path, i2c_bus=no_device_node(
        FileNotFoundError, errno.ENOENT)))
    with pytest.raises(HardwareError) as raised:
        build_sensors(config.sensors, context)
    message = str(raised.value)
    assert "/dev/i2c-1 does not exist" in message
    assert "dtparam=i2c_arm=on" in message and "raspi-config" in message
    assert "bus = 1" in message and "[[sensor]]" in message


def test_bus_without_permission_names_the_group(tmp_path):
    config = load_config(config_file(tmp_path))
    context = DriverContext(Hardware(root=tmp_path, i2c_bus=no_device_node(
        PermissionError, errno.EACCES)))
    with pytest.raises(HardwareError, match=r"no permission to open /dev/i2c-1.*group i2c"):
        build_sensors(config.sensors, context)


def absent_bus() -> int:
    """The lowest I2C bus number this machine has no device node for (1 on most machines)."""
    return next(n for n in range(1, 256) if not Path(f"/dev/i2c-{n}").exists())


@pytest.mark.parametrize("command", [["sensors"], ["agent", "--duration", "5", "--console-socket",
                                                   "", "--state-dir", "{tmp}/state"]])
def test_commands_without_i2c_say_what_to_do(command, tmp_path):
    """The real smbus2 on a bus this machine does not have, as on a Pi with I2C not enabled."""
    argv = [word.format(tmp=tmp_path) for word in command]
    bus = absent_bus()
    result = subprocess.run([HEARTH, *argv, "--config", str(config_file(tmp_path, bus))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"hearth {command[0]}: I2C bus {bus}: /dev/i2c-{bus} does not exist"), result.stderr
    assert "dtparam=i2c_arm=on" in result.stderr
