"""Write a Hearth image to an SD card or eMMC reader, check it by reading it back, and put the
board's identity file on its boot partition. It refuses any disk it should not touch: one the
kernel does not call removable, one with a mounted partition, or the disk holding /.

The identity file goes to partition 1: on Hearth's A/B image that is autoboot.txt's partition,
which an update never rewrites (it writes the other slot's boot partition from the bundle), so
the board keeps its identity across updates; on a single-slot image it is the boot partition.
The firmware reads only autoboot.txt there and ignores other files."""

import dataclasses
import hashlib
import os
import stat
import sys
import time
from pathlib import Path

from agent.deploy.disk import FAT_TYPES, FatPartition, partitions

CHUNK = 4 << 20
IDENTITY_NAME = "hearth-identity.toml"


class FlashRefused(RuntimeError):
    """The target must not be written; the message says why and what to do instead."""


@dataclasses.dataclass(frozen=True)
class MountEntry:
    device: str
    mount_point: str


def read_mounts(sys_root: Path) -> list[MountEntry]:
    entries = []
    for line in (sys_root / "proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            entries.append(MountEntry(fields[0], fields[1].replace("\\040", " ")))
    return entries


def disk_of(sys_root: Path, name: str) -> str | None:
    """The whole disk a block device name belongs to ('sdb1' -> 'sdb'), from sysfs."""
    block = sys_root / "sys/block"
    if (block / name).is_dir():
        return name
    if block.is_dir():
        for disk in block.iterdir():
            if (disk / name).is_dir():
                return disk.name
    return None


def check_device(target: Path, sys_root: Path) -> str:
    """Raise FlashRefused unless `target` is a whole, removable, unmounted, non-system disk;
    returns its kernel name."""
    name = Path(os.path.realpath(target)).name if sys_root == Path("/") else target.name
    disk = disk_of(sys_root, name)
    if disk is None:
        raise FlashRefused(f"{target} is not a disk the kernel knows ({name} is not in "
                           f"{sys_root / 'sys/block'}); give a device such as /dev/sdb, or pass "
                           "--to-file to write an image file")
    if disk != name:
        raise FlashRefused(f"{target} is partition {name} of /dev/{disk}; give the whole "
                           f"device /dev/{disk}")
    removable = (sys_root / "sys/block" / disk / "removable").read_text().strip()
    if removable != "1":
        raise FlashRefused(f"/dev/{disk} is not removable (sysfs removable = {removable}); "
                           "flash only SD cards and eMMC in a USB reader or rpiboot")
    mounts = read_mounts(sys_root)
    mounted = [m for m in mounts if disk_of(sys_root, Path(m.device).name) == disk
               and m.device.startswith("/dev/")]
    root_disks = {disk_of(sys_root, Path(os.path.realpath(m.device)).name if sys_root == Path("/")
                          else Path(m.device).name)
                  for m in mounts if m.mount_point == "/"}
    if disk in root_disks:
        raise FlashRefused(f"/dev/{disk} holds the running system's / ; refusing to overwrite "
                           "it. Check the device name (lsblk) and try again")
    if mounted:
        where = ", ".join(f"{m.device} on {m.mount_point}" for m in mounted)
        raise FlashRefused(f"/dev/{disk} is mounted ({where}); unmount it first "
                           f"(udisksctl unmount -b ... or umount) and flash again")
    return disk


def progress(done: int, total: int, started: float, stream=sys.stderr) -> None:
    width = 30
    fraction = done / total if total else 1.0
    rate = done / max(time.monotonic() - started, 1e-6) / (1 << 20)
    bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
    stream.write(f"\r[{bar}] {fraction:4.0%} {done >> 20}/{total >> 20} MiB {rate:5.1f} MiB/s")
    if done >= total:
        stream.write("\n")
    stream.flush()


def write_image(image: Path, target: Path, show=progress) -> str:
    """Copy image onto target, fsync, and return the image's sha256."""
    total = image.stat().st_size
    digest = hashlib.sha256()
    started = time.monotonic()
    flags = os.O_WRONLY | (0 if target.exists() else os.O_CREAT)
    with image.open("rb") as source:
        descriptor = os.open(target, flags, 0o644)
        try:
            done = 0
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    written = os.write(descriptor, view)
                    view = view[written:]
                done += len(chunk)
                show(done, total, started)
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.ftruncate(descriptor, total)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return digest.hexdigest()


def read_back_digest(target: Path, length: int) -> str:
    """sha256 of the first `length` bytes as the device returns them, not as the page cache
    remembers them."""
    digest = hashlib.sha256()
    descriptor = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        remaining = length
        while remaining:
            chunk = os.read(descriptor, min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    finally:
        os.close(descriptor)
    return digest.hexdigest()


def identity_text(site: str, module: str, board: str) -> str:
    return (f"# Written by scripts/flash: who this board is (agent/identity.py reads it at boot).\n"
            f'[identity]\nsite = "{site}"\nmodule = "{module}"\nboard = "{board}"\n')


def write_identity(target: Path, text: str) -> None:
    first = next((part for part in partitions(target) if part.number == 1), None)
    if first is None or first.type not in FAT_TYPES:
        raise FlashRefused(f"{target} has no FAT partition 1 to hold the identity file "
                           f"({IDENTITY_NAME}); is it an image from scripts/build-image?")
    boot = FatPartition(target, first)
    boot.write(IDENTITY_NAME, text.encode())
    if boot.read(IDENTITY_NAME).decode() != text:
        raise FlashRefused(f"the identity file on {target} did not read back as written; "
                           "the card may be failing, try another")
