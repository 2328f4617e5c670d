"""Read and write the partitions of a disk image without mounting it (no loop device, no root):
sfdisk for the partition table, mtools for the FAT boot partitions, debugfs for the ext4 ones,
dd for whole partitions. Two layouts: Raspberry Pi OS's (FAT boot + ext4 root) and Hearth's A/B
one (docs/updates.md, "Disk layout")."""

import dataclasses
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path


class DiskImageError(RuntimeError):
    """The image is not laid out as expected, or a tool failed on it."""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, check=True, capture_output=True, **kwargs)
    except FileNotFoundError:
        raise DiskImageError(f"{command[0]} is not installed; run scripts/setup-dev") from None
    except subprocess.CalledProcessError as error:
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) \
            else error.stderr
        raise DiskImageError(f"{' '.join(map(str, command))} failed ({error.returncode}): "
                             f"{stderr.strip()}") from None


@dataclasses.dataclass(frozen=True)
class Partition:
    number: int
    offset: int
    size: int
    type: str


FAT_TYPES = ("c", "b", "e", "ef")
EXTENDED_TYPES = ("5", "f", "85")


def _partition_table(image: Path) -> dict:
    return json.loads(run(["sfdisk", "--json", str(image)], text=True).stdout)["partitiontable"]


def partitions(image: Path) -> list[Partition]:
    """Numbered as the kernel numbers them (logical partitions from 5), from sfdisk's nodes."""
    table = _partition_table(image)
    sector = table.get("sectorsize", 512)
    return [Partition(int(re.search(r"(\d+)$", part["node"]).group(1)), part["start"] * sector,
                      part["size"] * sector, part["type"].lower())
            for part in table["partitions"]]


def disk_id(image: Path) -> str:
    """The MBR disk identifier as PARTUUID= spells it ('4e639091' for PARTUUID=4e639091-05)."""
    return f"{int(_partition_table(image)['id'], 16):08x}"


@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """Hearth's A/B disk: the autoboot.txt partition, a boot and a root partition per slot,
    and the data partition that survives updates."""

    autoboot: Partition
    boot_a: Partition
    boot_b: Partition
    root_a: Partition
    root_b: Partition
    data: Partition


def slot_layout(image: Path) -> SlotLayout | None:
    """The A/B layout (p1-p3 FAT, p4 extended, p5-p7 Linux), or None if the image has another."""
    parts = {part.number: part for part in partitions(image)}
    expected = {1: FAT_TYPES, 2: FAT_TYPES, 3: FAT_TYPES, 4: EXTENDED_TYPES, 5: ("83",),
                6: ("83",), 7: ("83",)}
    if set(parts) != set(expected) or any(parts[n].type not in types
                                          for n, types in expected.items()):
        return None
    return SlotLayout(parts[1], parts[2], parts[3], parts[5], parts[6], parts[7])


def raspberry_pi_layout(image: Path) -> tuple[Partition, Partition]:
    """Raspberry Pi OS: partition 1 FAT (boot firmware), partition 2 ext4 (root). On Hearth's
    A/B layout, slot A's boot and root, which a freshly written card boots."""
    slots = slot_layout(image)
    if slots is not None:
        return slots.boot_a, slots.root_a
    parts = partitions(image)
    if len(parts) < 2 or parts[0].type not in FAT_TYPES:
        raise DiskImageError(f"{image}: expected a FAT boot partition and a Linux root partition "
                             f"as on Raspberry Pi OS, found {[(p.number, p.type) for p in parts]}")
    if parts[1].type != "83":
        raise DiskImageError(f"{image}: partition 2 has type {parts[1].type}, expected 83 (Linux)")
    return parts[0], parts[1]


def copy_partition(source: Path, part: Partition, destination: Path, offset: int) -> None:
    """The partition's bytes into another image at `offset`, holes kept sparse."""
    run(["dd", f"if={source}", f"of={destination}", "bs=1M", "conv=notrunc,sparse",
         f"skip={part.offset}", f"count={part.size}", f"seek={offset}", "status=none",
         "iflag=skip_bytes,count_bytes", "oflag=seek_bytes"])


class FatPartition:
    """The boot partition through mtools' image@@offset syntax."""

    def __init__(self, image: Path, partition: Partition):
        self.spec = f"{image}@@{partition.offset}"
        self.env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def read(self, name: str) -> bytes:
        return run(["mtype", "-i", self.spec, f"::{name}"], env=self.env).stdout

    def exists(self, name: str) -> bool:
        return subprocess.run(["mdir", "-i", self.spec, f"::{name}"], env=self.env,
                              capture_output=True).returncode == 0

    def write(self, name: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(data)
            handle.flush()
            run(["mcopy", "-o", "-i", self.spec, handle.name, f"::{name}"], env=self.env)

    def check(self) -> None:
        """fsck.vfat has no offset option; mtools' own consistency check does."""
        run(["minfo", "-i", self.spec, "::"], env=self.env)


@dataclasses.dataclass(frozen=True)
class Inode:
    mode: int
    uid: int
    gid: int
    size: int

    @property
    def kind(self) -> str:
        return {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}.get(
            self.mode & 0o170000, "other")


class Ext4Partition:
    """The root partition through debugfs, opened at the partition's byte offset. debugfs exits 0
    even when a command fails, so writers check their results by reading back."""

    def __init__(self, image: Path, partition: Partition):
        self.device = f"{image}?offset={partition.offset}"

    def _debugfs(self, request: str, writable: bool = False) -> str:
        command = ["debugfs"] + (["-w"] if writable else []) + ["-R", request, self.device]
        return run(command).stdout.decode(errors="replace")

    def run_script(self, commands: list[str]) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            result = run(["debugfs", "-w", "-f", script.name, self.device])
        return result.stderr.decode(errors="replace")

    def read(self, path: str) -> bytes:
        return run(["debugfs", "-R", f'cat "{path}"', self.device]).stdout

    @staticmethod
    def _parse_stat(text: str) -> tuple[Inode | None, str | None]:
        mode = re.search(r"Mode:\s+(\d+)", text)
        if mode is None:
            return None, None
        kind = re.search(r"Type:\s+(\w+)", text).group(1)
        type_bits = {"directory": 0o040000, "regular": 0o100000, "symlink": 0o120000}.get(kind, 0)
        uid = int(re.search(r"User:\s+(\d+)", text).group(1))
        gid = int(re.search(r"Group:\s+(\d+)", text).group(1))
        size = int(re.search(r"Size:\s+(\d+)", text).group(1))
        link = re.search(r'Fast link dest: "(.*)"', text)
        return Inode(type_bits | int(mode.group(1), 8), uid, gid, size), \
            link.group(1) if link else None

    def stat(self, path: str) -> Inode | None:
        return self._parse_stat(self._debugfs(f'stat "{path}"'))[0]

    def stat_many(self, paths: list[str]) -> dict[str, tuple[Inode | None, str | None]]:
        """(inode, fast symlink target) of many paths in one debugfs run."""
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("".join(f'stat "{path}"\n' for path in paths))
            script.flush()
            output = run(["debugfs", "-f", script.name, self.device]).stdout.decode(
                errors="replace")
        chunks = re.split(r"^debugfs: stat .*$", output, flags=re.MULTILINE)[1:]
        if len(chunks) != len(paths):
            raise DiskImageError(f"debugfs answered {len(chunks)} of {len(paths)} stat requests")
        return {path: self._parse_stat(chunk) for path, chunk in zip(paths, chunks)}

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def readlink(self, path: str) -> str | None:
        inode, fast_target = self._parse_stat(self._debugfs(f'stat "{path}"'))
        if fast_target is not None or inode is None or inode.kind != "symlink":
            return fast_target
        return self.read(path).decode()

    def listdir(self, path: str) -> list[str]:
        names = []
        for line in self._debugfs(f"ls -p {path}").splitlines():
            fields = line.strip("/").split("/")
            if len(fields) >= 5 and fields[4] not in (".", ".."):
                names.append(fields[4])
        return names

    def size(self) -> int:
        """The file system's size in bytes (block count x block size), which may be less than
        its partition's."""
        stats = self._debugfs("stats")
        count = re.search(r"^Block count:\s+(\d+)$", stats, re.MULTILINE)
        block = re.search(r"^Block size:\s+(\d+)$", stats, re.MULTILINE)
        if count is None or block is None:
            raise DiskImageError(f"{self.device}: debugfs shows no ext4 block count and size")
        return int(count.group(1)) * int(block.group(1))

    def label(self) -> str:
        """The file system's volume name ('' when it has none)."""
        match = re.search(r"^Filesystem volume name:\s+(.*)$", self._debugfs("stats"),
                          re.MULTILINE)
        return "" if match is None or match.group(1) == "<none>" else match.group(1)

    def rdump(self, path: str, destination: Path) -> None:
        run(["debugfs", "-R", f"rdump {path} {destination}", self.device])

    def check(self) -> None:
        run(["e2fsck", "-fn", self.device])
