"""What a link has yet to send: safety events kept at any cost, telemetry kept while it is useful.

Two classes of message, because they fail differently. Telemetry (`state`) is sent again every
report period, so when RAM is short the oldest goes first and the receiver sees the gap in its
sequence numbers. Kept messages (`event`, `reply`) are never dropped: past `keep_ram` of them
they are appended to a small file in `spill_dir` and read back in order, and a file left by the
previous run (a crash, a power cut, a clean exit with the broker away) is sent first.

Nothing is written while the broker is reachable; the file exists only during a long outage.
Not thread-safe: the Link that owns it serialises every call.
"""

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

SPILL_FILE = "outbox.jsonl"


@dataclasses.dataclass
class Pending:
    """One stamped message waiting to go; `hist` once it has waited through a reconnect."""

    topic: str
    message: dict[str, Any]
    qos: int
    retain: bool = False
    hist: bool = False

    def to_line(self) -> str:
        return json.dumps({"topic": self.topic, "message": self.message, "qos": self.qos,
                           "retain": self.retain}, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_line(cls, line: str) -> "Pending":
        data = json.loads(line)
        return cls(str(data["topic"]), dict(data["message"]), int(data["qos"]),
                   bool(data["retain"]), hist=True)


class Outbox:
    def __init__(self, spill_dir: Path, keep_ram: int = 256, telemetry_ram: int = 64):
        if keep_ram < 1 or telemetry_ram < 1:
            raise ValueError("an outbox needs room for at least one message of each class")
        self.spill_path = Path(spill_dir) / SPILL_FILE
        self.keep_ram = keep_ram
        self._keep: collections.deque[Pending] = collections.deque()
        self._telemetry: collections.deque[Pending] = collections.deque(maxlen=telemetry_ram)
        self.telemetry_dropped = 0
        """Telemetry pushed out by newer telemetry since start (each one a seq gap)."""
        self.spill_damaged = 0
        """Lines of the spill file that could not be read back (a torn last write)."""
        self._spilled = self._count_spilled()

    @property
    def spilled(self) -> int:
        """Kept messages waiting in the spill file now."""
        return self._spilled

    def __len__(self) -> int:
        return len(self._keep) + self._spilled + len(self._telemetry)

    def put(self, pending: Pending, keep: bool) -> None:
        if not keep:
            if len(self._telemetry) == self._telemetry.maxlen:
                self.telemetry_dropped += 1
            self._telemetry.append(pending)
        elif self._spilled or len(self._keep) >= self.keep_ram:
            # Once spilling, everything newer goes to the file too, so order is kept.
            self._append_spill([pending])
        else:
            self._keep.append(pending)

    def mark_backlog(self) -> None:
        """The link has just (re)connected: whatever still waits is history (`hist: true`)."""
        for pending in (*self._keep, *self._telemetry):
            pending.hist = True

    def peek_kept(self) -> Pending | None:
        if not self._keep and self._spilled:
            self._refill()
        return self._keep[0] if self._keep else None

    def pop_kept(self) -> Pending:
        pending = self._keep.popleft()
        if len(self._keep) < self.keep_ram // 2 and self._spilled:
            self._refill()
        return pending

    def take_telemetry(self) -> list[Pending]:
        taken = list(self._telemetry)
        self._telemetry.clear()
        return taken

    def return_telemetry(self, pending: list[Pending]) -> None:
        """Put back telemetry that could not go, ahead of anything newer (oldest still drops)."""
        newer = list(self._telemetry)
        self._telemetry.clear()
        for item in (*pending, *newer):
            self.put(item, keep=False)

    def persist(self, unacknowledged: list[Pending]) -> None:
        """At exit: keep what was never confirmed for the next run, oldest first."""
        waiting = [*unacknowledged, *self._keep]
        if not waiting:
            return
        self._keep.clear()
        self._rewrite_spill(waiting + self._read_spill())

    def _count_spilled(self) -> int:
        return len(self._read_spill())

    def _read_spill(self) -> list[Pending]:
        try:
            lines = self.spill_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError):
            self.spill_damaged += 1
            return []
        read = []
        for line in lines:
            try:
                read.append(Pending.from_line(line))
            except (ValueError, KeyError, TypeError):
                self.spill_damaged += 1
        return read

    def _append_spill(self, pending: list[Pending]) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spill_path, "a", encoding="utf-8") as spill:
            spill.write("".join(item.to_line() + "\n" for item in pending))
            spill.flush()
            os.fsync(spill.fileno())
        self._spilled += len(pending)

    def _rewrite_spill(self, pending: list[Pending]) -> None:
        """Replace the file atomically, so a power cut leaves the old or the new list whole."""
        if not pending:
            self.spill_path.unlink(missing_ok=True)
            self._spilled = 0
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.spill_path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as spill:
            spill.write("".join(item.to_line() + "\n" for item in pending))
            spill.flush()
            os.fsync(spill.fileno())
        os.replace(temporary, self.spill_path)
        self._spilled = len(pending)

    def _refill(self) -> None:
        spilled = self._read_spill()
        room = self.keep_ram - len(self._keep)
        self._keep.extend(spilled[:room])
        self._rewrite_spill(spilled[room:])
