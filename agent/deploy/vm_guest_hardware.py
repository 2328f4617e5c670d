"""The test VM's board hardware, set up as root before the agent starts (hearth-vm-hardware.service).

Runs inside the VM under the system's python3 with the standard library only. What the kernel
can emulate is a real kernel device: i2c-stub gives /dev/i2c-N holding the INA219's and
TMP117's registers. What it cannot (cpufreq policies, the SoC's thermal zone, 1-wire
DS18B20s) is laid out in sysfs's own text formats on tmpfs mounted over
the sysfs directories the agent reads, since the agent reads sysfs at /. The register values
and file contents come from /etc/hearth-vm/hardware.json, which scripts/vm-test computes on the
host with the drivers' own constants.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS_FILE = Path("/etc/hearth-vm/hardware.json")
STUB_ADAPTER_NAME = "SMBus stub driver"


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def give_to_group(node: str, group: str) -> None:
    """What Raspberry Pi OS's udev rules do for /dev/i2c-*."""
    run("chgrp", group, node)
    os.chmod(node, 0o660)


def i2c_stub(settings: dict) -> None:
    """Load i2c-stub at the chips' addresses and write their registers. SMBus words travel
    little-endian and the chips' registers are big-endian, so each word is swapped here as
    the chip's wire would present it."""
    addresses = sorted({int(address, 0) for address in settings["chips"]})
    run("modprobe", "i2c-dev")
    run("modprobe", "i2c-stub", "chip_addr=" + ",".join(f"0x{a:02x}" for a in addresses))
    bus = next((int(adapter.name.split("-")[1])
                for adapter in Path("/sys/bus/i2c/devices").glob("i2c-*")
                if (adapter / "name").read_text().strip() == STUB_ADAPTER_NAME), None)
    if bus != settings["bus"]:
        sys.exit(f"hearth-vm-hardware: i2c-stub is bus {bus}, the agent's config expects "
                 f"{settings['bus']}; another I2C adapter was registered first")
    for address, registers in settings["chips"].items():
        for register, word in registers.items():
            swapped = (word >> 8) | (word & 0xFF) << 8
            run("i2cset", "-y", str(bus), address, register, f"0x{swapped:04x}", "w")
    give_to_group(f"/dev/i2c-{bus}", "i2c")


def sysfs_files(files: dict[str, str]) -> None:
    """tmpfs over each directory the files sit in (the deepest existing sysfs directory),
    then the files in the kernel's text format."""
    mounted = set()
    for path in sorted(files):
        directory = Path(path).parent
        while not directory.exists():
            directory = directory.parent
        if str(directory) not in mounted and not any(
                str(directory).startswith(m + "/") for m in mounted):
            run("mount", "-t", "tmpfs", "-o", "mode=0755", "hearth-vm", str(directory))
            mounted.add(str(directory))
    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def main() -> int:
    settings = json.loads(SETTINGS_FILE.read_text())
    run("modprobe", "wire")  # /sys/bus/w1/devices, under which the DS18B20 files go
    i2c_stub(settings["i2c"])
    sysfs_files(settings["files"])
    print("hearth-vm-hardware: i2c-stub and the sysfs files are in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
