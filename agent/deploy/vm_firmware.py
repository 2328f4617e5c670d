"""The Raspberry Pi firmware's part in the test VM: which boot partition it starts (autoboot.txt
on partition 1, read as Raspberry Pi documents tryboot A/B), that partition's cmdline.txt, and
the kernel and initramfs of the root slot it names. QEMU cannot run the Pi's firmware, so the
host plays it before every boot, and passes what the Pi's firmware would put in the device tree
(/proc/device-tree/chosen/bootloader/partition and tryboot) as `hearth.bootloader=` on the
kernel command line for the VM's bench to lay out as files (docs/vm-test.md)."""

import dataclasses
import re
import subprocess
from pathlib import Path

from agent.deploy.disk import DiskImageError, Ext4Partition, FatPartition, partitions, slot_layout

TRYBOOT_REBOOT = "Restarting system with command '0 tryboot'"
"""What Linux prints on the console when it reboots with systemd's `reboot "0 tryboot"`
argument: the flag the Pi's firmware keeps for exactly the next boot."""


class FirmwareError(DiskImageError):
    """The disk cannot be booted as the Pi's firmware would; the message says why."""


@dataclasses.dataclass(frozen=True)
class BootPlan:
    partition: int
    tryboot: bool
    cmdline: str
    kernel: Path
    initrd: Path

    def bootloader_argument(self) -> str:
        """The device tree's boot facts as the VM's bench reads them from the command line."""
        return f"hearth.bootloader=partition:{self.partition},tryboot:{int(self.tryboot)}"


def autoboot_partition(text: str, tryboot: bool) -> int:
    """The boot partition the firmware picks: settings under [all] always apply, those under
    [tryboot] only on the boot after a tryboot reboot, and the last boot_partition= that
    applies wins. Other filters name Pi models, which the VM is not. Without tryboot_a_b=1 the
    tryboot flag would mean tryboot.txt instead, which this layout does not use."""
    applies, settings = True, {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        section = re.fullmatch(r"\[(\w+)\]", line)
        if section:
            applies = section.group(1) == "all" or (section.group(1) == "tryboot" and tryboot)
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise FirmwareError(f"autoboot.txt line {number}: {raw!r} is not key=value")
        if applies:
            settings[key.strip()] = value.strip()
    if settings.get("tryboot_a_b") != "1":
        raise FirmwareError(f"autoboot.txt has tryboot_a_b={settings.get('tryboot_a_b')!r}, "
                            "expected 1 (tryboot A/B mode)")
    partition = settings.get("boot_partition", "")
    if not partition.isdigit():
        raise FirmwareError(f"autoboot.txt has boot_partition={partition!r}, expected a "
                            "partition number")
    return int(partition)


def root_partition_number(cmdline: str, disk: str) -> int:
    """The partition that cmdline.txt's root=PARTUUID=<disk>-NN names on this disk."""
    match = re.search(r"(?:^|\s)root=PARTUUID=([0-9a-f]{8})-(\d{2})(?:\s|$)", cmdline)
    if match is None or match.group(1) != disk:
        raise FirmwareError(f"cmdline.txt does not name a root on this disk ({disk}): "
                            f"{cmdline.strip()!r}")
    return int(match.group(2))


def plan_boot(image: Path, disk: str, tryboot: bool, work: Path) -> BootPlan:
    """Read the disk as the firmware does, and take the kernel and initramfs out of the root
    slot the chosen cmdline.txt names (an amd64 root keeps them in /boot; a Pi's firmware would
    load its own from the boot partition, which an update writes together with the root)."""
    layout = slot_layout(image)
    if layout is None:
        raise FirmwareError(f"{image} is not in the A/B layout")
    by_number = {part.number: part for part in partitions(image)}
    partition = autoboot_partition(
        FatPartition(image, layout.autoboot).read("autoboot.txt").decode(), tryboot)
    if partition not in (layout.boot_a.number, layout.boot_b.number):
        raise FirmwareError(f"autoboot.txt boots partition {partition}, not a slot's boot "
                            f"partition ({layout.boot_a.number} or {layout.boot_b.number})")
    cmdline = FatPartition(image, by_number[partition]).read("cmdline.txt").decode()
    root_part = by_number[root_partition_number(cmdline, disk)]
    replay_journal(image, root_part.offset)
    root = Ext4Partition(image, root_part)
    names = root.listdir("/boot")
    found = {}
    for prefix in ("vmlinuz-", "initrd.img-"):
        matches = sorted(name for name in names if name.startswith(prefix))
        if len(matches) != 1:
            raise FirmwareError(f"the root slot has {len(matches)} /boot/{prefix}* files, "
                                "expected one")
        found[prefix] = work / f"p{partition}-{matches[0]}"
        found[prefix].write_bytes(root.read(f"/boot/{matches[0]}"))
    return BootPlan(partition, tryboot, " ".join(cmdline.split()), found["vmlinuz-"],
                    found["initrd.img-"])


def replay_journal(image: Path, offset: int) -> None:
    """Replay the root's ext4 journal as the kernel does first when it mounts it: a power cut
    leaves it unreplayed, and debugfs reads the file system without it (a directory the last
    boot changed can read as empty). The Pi's firmware needs none of this: it reads the FAT
    boot partition."""
    device = f"{image}?offset={offset}"
    if b"needs_recovery" not in _run(["dumpe2fs", "-h", device]).stdout:
        return
    # e2fsck writes the journal's blocks in place, then fails to re-open the file system
    # without the offset, so the superblock keeps needs_recovery and the kernel replays the
    # same transactions once more on mount (which changes nothing).
    result = _run(["e2fsck", "-E", "journal_only", "-y", device])
    if b"recovering journal" not in result.stdout + result.stderr:
        raise FirmwareError(f"the root file system at byte {offset} of {image} needs its "
                            f"journal replayed and e2fsck did not: "
                            f"{(result.stdout + result.stderr).decode(errors='replace')[-200:]}")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, check=False)
