"""Small state files that must survive a power cut (tuned gains, latched faults, energy counters).

Why this exists: a board loses power without warning, and the SD card wears out if written
often (DESIGN.md section 6). So a state file is written only when its content changes, and
every write is atomic: the new content goes to a temporary file in the same directory, is
flushed and fsynced, renamed over the old file, and the directory is fsynced so the rename
itself is durable. At any instant the file on disk is therefore the complete old version or
the complete new one.

Reading never crashes the agent: a missing, truncated, hand-edited or foreign file reads as
"absent", giving the caller's safe defaults plus a sentence saying what was wrong, which the
caller turns into an event. Each file carries a format marker, the caller's schema version
and a sha256 of its canonical payload, so damage that still parses as JSON is caught too.
"""

import copy
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/var/lib/hearth")
FORMAT = "hearth-state"
TEMP_SUFFIX = ".tmp"
"""The temporary file is `.<name>.tmp`: one fixed name, so a write interrupted by a crash leaves
at most one stale file, which the next write truncates and reuses."""


@dataclasses.dataclass(frozen=True)
class StateRead:
    """What a read found: the payload (the defaults when `problem` is set) and what was wrong."""

    payload: dict[str, Any]
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The bytes the checksum covers: key order and spacing cannot change them."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload)).hexdigest()


class StateStore:
    """Atomic JSON state files in one directory.

    `os_calls` is the module whose open/write/fsync/close/replace this store uses (the real
    `os` by default); tests pass an object that crashes at a chosen step to prove that a power
    cut anywhere in a write still leaves a readable file.
    """

    def __init__(self, directory: Path | str = DEFAULT_STATE_DIR, os_calls: Any = os):
        self.directory = Path(directory)
        self.os = os_calls

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"state file name {name!r} must be a plain file name, "
                             "not a path and not hidden")
        return self.directory / name

    def write(self, name: str, version: int, payload: dict[str, Any]) -> Path:
        """Replace the file `name` atomically with `payload` (a JSON object) at `version`.

        Call it only when the content changed: each call costs flash writes.
        """
        target = self.path(name)
        document = {"format": FORMAT, "version": version, "sha256": checksum(payload),
                    "payload": payload}
        data = json.dumps(document, sort_keys=True, indent=1, allow_nan=False).encode("utf-8")
        data += b"\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{name}{TEMP_SUFFIX}"
        fd = self.os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = self.os.write(fd, view)
                view = view[written:]
            self.os.fsync(fd)
        finally:
            self.os.close(fd)
        self.os.replace(temporary, target)
        directory_fd = self.os.open(self.directory, os.O_RDONLY)
        try:
            self.os.fsync(directory_fd)
        finally:
            self.os.close(directory_fd)
        return target

    def read(self, name: str, version: int, defaults: dict[str, Any]) -> StateRead:
        """The payload of `name`, or a copy of `defaults` and the reason it could not be used."""
        target = self.path(name)

        def absent(problem: str) -> StateRead:
            return StateRead(copy.deepcopy(defaults), f"state file {target}: {problem}; "
                             "using safe defaults")

        try:
            data = target.read_bytes()
        except FileNotFoundError:
            return absent("missing (first start, or never written)")
        except OSError as error:
            return absent(f"cannot be read ({error.strerror or error}); check the directory's "
                          "permissions and the SD card")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return absent(f"corrupt or truncated ({len(data)} bytes, {error})")
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            return absent(f"not a Hearth state file (no \"format\": \"{FORMAT}\")")
        if document.get("version") != version:
            return absent(f"schema version {document.get('version')!r}, this agent reads "
                          f"version {version}; it was written by another release")
        payload = document.get("payload")
        if not isinstance(payload, dict):
            return absent("has no payload object")
        try:
            actual = checksum(payload)
        except ValueError as error:
            return absent(f"payload cannot be checked ({error})")
        if actual != document.get("sha256"):
            return absent("checksum mismatch (the file was damaged or edited by hand)")
        return StateRead(payload)

    def keep_aside(self, name: str, wall_time_s: float) -> Path:
        """Copy the file `name` to `<name>.damaged-<UTC time>` beside it and return that path.

        Why: a damaged file is evidence; the caller is about to rewrite it (or its defaults
        will be saved over it), and a technician needs the old bytes to see what happened. The
        original is left in place, so a power cut before the caller's rewrite still finds it
        damaged. Raises OSError when the file cannot be read or the copy cannot be written."""
        data = self.path(name).read_bytes()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_time_s))
        copies = 1
        while True:
            suffix = "" if copies == 1 else f"-{copies}"
            aside = self.directory / f"{name}.damaged-{stamp}{suffix}"
            try:
                fd = self.os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                copies += 1
        try:
            view = memoryview(data)
            while view:
                view = view[self.os.write(fd, view):]
            self.os.fsync(fd)
        finally:
            self.os.close(fd)
        return aside
