"""autoboot.txt as the Raspberry Pi firmware reads it, and its one-sector rewrite (the commit).

Why: with `tryboot_a_b=1` the firmware boots the partition named by `boot_partition` in `[all]`,
and once, after a reboot carrying the tryboot flag, the one named in `[tryboot]`. Making a slot
permanent is therefore a rewrite of this file, which must never be seen half-done: the file stays
under one 512-byte sector and is rewritten in place with one write and an fsync, so its FAT
directory entry and cluster chain are untouched and the sector holds either the old or the new
bytes. Everything the firmware reads that this module does not manage (comments, other keys,
other filter sections) is kept byte for byte.
"""

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from agent.errors import HearthError

SECTOR_BYTES = 512
MAX_PARTITION = 63
"""The firmware's boot_partition counts MBR partitions, logical ones included."""
ALL = "all"
TRYBOOT = "tryboot"
BOOT_PARTITION = "boot_partition"
TRYBOOT_A_B = "tryboot_a_b"
KEY_PATTERN = re.compile(r"[A-Za-z0-9_]+")


class AutobootError(HearthError, ValueError):
    """autoboot.txt cannot be used: the message names the file, the key, the value and what was
    expected, so a technician can fix or rewrite the file."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of the file: its text without the line ending, the ending, and the section
    (filter) it falls under; `key` and `value` are set for `key=value` lines."""

    text: str
    ending: str
    section: str
    key: str | None = None
    value: str | None = None


@dataclasses.dataclass(frozen=True)
class Autoboot:
    """A parsed autoboot.txt; `source` names the file in error messages."""

    lines: tuple[Line, ...]
    source: str

    def _values(self, section: str, key: str) -> list[Line]:
        return [line for line in self.lines if line.section == section and line.key == key]

    def _partition(self, section: str) -> int | None:
        lines = self._values(section, BOOT_PARTITION)
        if not lines:
            return None
        return _partition_number(self.source, section, lines[-1].value)

    @property
    def committed_partition(self) -> int:
        """The boot partition the firmware boots without the tryboot flag (the last value wins)."""
        partition = self._partition(ALL)
        if partition is None:
            raise AutobootError(f"{self.source}: no {BOOT_PARTITION}= in [{ALL}]; expected the "
                                "committed slot's boot partition (2 or 3); rewrite the file "
                                "from docs/updates.md")
        return partition

    @property
    def tryboot_partition(self) -> int | None:
        """The boot partition of the next tryboot reboot; None when [tryboot] names none."""
        return self._partition(TRYBOOT)

    @property
    def tryboot_a_b(self) -> bool:
        lines = self._values(ALL, TRYBOOT_A_B)
        return bool(lines) and lines[-1].value == "1"

    def with_partitions(self, committed: int, tryboot: int) -> "Autoboot":
        """The same file with the last boot_partition of [all] and of [tryboot] changed (the
        ones the firmware obeys); nothing else changes. Both sections must already name one."""
        for partition in (committed, tryboot):
            _partition_number(self.source, "new", str(partition))
        lines = list(self.lines)
        for section, partition in ((ALL, committed), (TRYBOOT, tryboot)):
            indices = [index for index, line in enumerate(lines)
                       if line.section == section and line.key == BOOT_PARTITION]
            if not indices:
                raise AutobootError(f"{self.source}: [{section}] has no {BOOT_PARTITION}= to "
                                    f"change to {partition}; rewrite the file from "
                                    "docs/updates.md")
            last = lines[indices[-1]]
            lines[indices[-1]] = dataclasses.replace(
                last, text=f"{BOOT_PARTITION}={partition}", value=str(partition))
        return Autoboot(tuple(lines), self.source)

    def committed_to_tryboot(self) -> "Autoboot":
        """The commit: the partition just tried becomes [all]'s, the old one [tryboot]'s (so the
        next trial goes back to the other slot)."""
        tryboot = self.tryboot_partition
        if tryboot is None:
            raise AutobootError(f"{self.source}: [{TRYBOOT}] has no {BOOT_PARTITION}=; there is "
                                "no tried slot to commit")
        return self.with_partitions(tryboot, self.committed_partition)

    def text(self) -> str:
        return "".join(line.text + line.ending for line in self.lines)


def _partition_number(source: str, section: str, value: str | None) -> int:
    if value is None or not value.isdigit() or not 1 <= int(value) <= MAX_PARTITION:
        raise AutobootError(f"{source}: [{section}] {BOOT_PARTITION}={value!r}; expected a "
                            f"partition number from 1 to {MAX_PARTITION}")
    return int(value)


def parse(text: str, source: str = "autoboot.txt") -> Autoboot:
    """Lines before any `[section]` count as [all], as the firmware reads them. A line that is
    neither blank, a comment, a `[section]` nor `key=value`, or a boot_partition the firmware
    cannot use, is rejected: a guess here could boot the wrong slot."""
    lines = []
    section = ALL
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        body = raw.rstrip("\r\n")
        ending = raw[len(body):]
        stripped = body.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(Line(body, ending, section))
        elif stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip().lower()
            lines.append(Line(body, ending, section))
        elif "=" in stripped and KEY_PATTERN.fullmatch(stripped.split("=", 1)[0].strip()):
            key, value = (part.strip() for part in stripped.split("=", 1))
            lines.append(Line(body, ending, section, key, value))
        else:
            raise AutobootError(f"{source}: line {number} {body!r}; expected key=value, a "
                                "[section], a #comment or a blank line")
    autoboot = Autoboot(tuple(lines), source)
    for line in autoboot.lines:
        if line.key == BOOT_PARTITION:
            if line.section not in (ALL, TRYBOOT):
                raise AutobootError(f"{source}: {BOOT_PARTITION}={line.value} under "
                                    f"[{line.section}]; expected it only in [{ALL}] and "
                                    f"[{TRYBOOT}] (which slot a board model boots cannot be "
                                    "known here)")
            _partition_number(source, line.section, line.value)
    return autoboot


def read(path: Path) -> Autoboot:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AutobootError(f"{path}: cannot be read ({error.strerror or error}); check that "
                            "the autoboot partition is mounted") from None
    if len(data) >= SECTOR_BYTES:
        raise AutobootError(f"{path}: {len(data)} bytes; expected under {SECTOR_BYTES} (one "
                            "sector, so that its rewrite is atomic)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise AutobootError(f"{path}: byte {error.start} is not ASCII; expected the plain "
                            "text the firmware reads") from None
    return parse(text, str(path))


def rewrite_in_place(path: Path, autoboot: Autoboot, os_calls: Any = os) -> None:
    """One write of the whole file at offset 0, then fsync: the file's size, directory entry and
    clusters stay as they were, so only its one data sector changes. New text shorter than the
    file is padded with newlines (blank lines, which the firmware skips); longer text would need
    a new size and is refused."""
    data = autoboot.text().encode("ascii")
    size = Path(path).stat().st_size
    if size >= SECTOR_BYTES:
        raise AutobootError(f"{path}: {size} bytes; expected under {SECTOR_BYTES} so that its "
                            "rewrite is one sector")
    if len(data) > size:
        raise AutobootError(f"{path}: the new text is {len(data)} bytes, the file {size}; "
                            "a rewrite in place cannot grow it; rewrite the file from "
                            "docs/updates.md with room to spare")
    data += b"\n" * (size - len(data))
    fd = os_calls.open(path, os.O_WRONLY)
    try:
        written = os_calls.pwrite(fd, data, 0)
        if written != len(data):
            raise AutobootError(f"{path}: wrote {written} of {len(data)} bytes; check the "
                                "autoboot partition (fsck.vfat) before the next reboot")
        os_calls.fsync(fd)
    finally:
        os_calls.close(fd)
