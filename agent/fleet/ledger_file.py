"""The ledger on disk: one file per site and month (`<site>-<YYYY-MM>.jsonl`), one row a line,
appended and fsynced, each line with the sha256 of its row.

Why append-only lines rather than agent/persist.py's rewrite-and-rename: a month is about 3,000
rows, and rewriting the whole month every quarter hour would write the SD card a hundred times
more than appending one line. An append is not atomic, so each line carries its own checksum: a
power cut in the middle of an append leaves a torn last line that the recorder finds at its next
start; it keeps the file aside (`.damaged-<time>`, as StateStore does) and rewrites the good
lines atomically. A damaged line anywhere else is not repaired: the statement refuses the month
and names the line, since a billing figure must not silently lose a quarter hour.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from agent.errors import HearthError
from agent.persist import canonical_json, checksum


class LedgerDamaged(HearthError, ValueError):
    """A ledger line that cannot be used (the message names the file and the line)."""


def encode_line(row: dict[str, Any]) -> bytes:
    return canonical_json({"row": row, "sha256": checksum(row)}) + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """The row of one line; ValueError saying what is wrong with it."""
    try:
        document = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("row"), dict):
        raise ValueError("no row object")
    if checksum(document["row"]) != document.get("sha256"):
        raise ValueError("checksum mismatch (damaged or edited by hand)")
    return document["row"]


class LedgerFile:
    """A site's month files in one directory. `os_calls` as in agent/persist.py's StateStore."""

    def __init__(self, directory: Path | str, site: str, os_calls: Any = os):
        self.directory = Path(directory)
        self.site = site
        self.os = os_calls

    def path(self, month: str) -> Path:
        return self.directory / f"{self.site}-{month}.jsonl"

    def months(self) -> list[str]:
        prefix = f"{self.site}-"
        return sorted(path.stem[len(prefix):] for path in self.directory.glob(f"{prefix}*.jsonl")
                      if len(path.stem) == len(prefix) + 7)

    def append(self, month: str, row: dict[str, Any]) -> None:
        """Add `row` to its month's file and make it durable before returning."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(month)
        created = not target.exists()
        fd = self.os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(encode_line(row))
            while view:
                view = view[self.os.write(fd, view):]
            self.os.fsync(fd)
        finally:
            self.os.close(fd)
        if created:
            self._sync_directory()

    def read_month(self, month: str) -> list[dict[str, Any]]:
        """Every row of a month; [] for a month never recorded; LedgerDamaged for a bad line."""
        target = self.path(month)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise LedgerDamaged(f"ledger {target} cannot be read ({error.strerror or error}); "
                                "check the directory's permissions") from None
        rows = []
        for number, line in enumerate(data.splitlines(keepends=True), start=1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn (no end of line: a write cut short)")
                rows.append(decode_line(line))
            except ValueError as error:
                raise LedgerDamaged(
                    f"ledger {target} line {number}: {error}; the recorder repairs a torn last "
                    "line when it starts (keeping the file aside), any other line needs the "
                    "file restored from a backup") from None
        return rows

    def recover_last_row(self, wall_s: float) -> tuple[dict[str, Any] | None, str | None]:
        """The newest row, to resume from, and what was repaired (None when nothing was). A
        torn or damaged last line of the newest month is dropped: the file is first copied
        aside, then the good lines are written back atomically."""
        for month in reversed(self.months()):
            target = self.path(month)
            lines = target.read_bytes().splitlines(keepends=True)
            good: list[dict[str, Any]] = []
            problem = None
            for number, line in enumerate(lines, start=1):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn (no end of line)")
                    good.append(decode_line(line))
                except ValueError as error:
                    problem = f"line {number} of {len(lines)}: {error}"
                    break
            if problem is None:
                if good:
                    return good[-1], None
                continue
            aside = self._keep_aside(target, wall_s)
            self._rewrite(target, lines[:len(good)])
            return (good[-1] if good else None), (
                f"ledger {target} {problem}; kept as {aside.name}, rows from there on dropped "
                f"({len(lines) - len(good)}); the next row's energy covers them")
        return None, None

    def _keep_aside(self, target: Path, wall_s: float) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_s))
        aside = target.with_name(f"{target.name}.damaged-{stamp}")
        aside.write_bytes(target.read_bytes())
        return aside

    def _rewrite(self, target: Path, lines: list[bytes]) -> None:
        temporary = target.with_name(f".{target.name}.tmp")
        fd = self.os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(b"".join(lines))
            while view:
                view = view[self.os.write(fd, view):]
            self.os.fsync(fd)
        finally:
            self.os.close(fd)
        self.os.replace(temporary, target)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = self.os.open(self.directory, os.O_RDONLY)
        try:
            self.os.fsync(fd)
        finally:
            self.os.close(fd)
