"""What a link has yet to send: safety events kept at any cost, telemetry kept while it is useful.

Two classes of message, because they fail differently. Telemetry (`state`) is sent again every
report period, so when RAM is short the oldest goes first and the receiver sees the gap in its
sequence numbers. Kept messages (`event`, `reply`) are never dropped: past `keep_ram` of them
they are appended to a small file in `spill_dir` and read back in order, and a file left by the
previous run (a crash, a power cut, a clean exit with the broker away) is sent first.

Nothing is written while the broker is reachable; the file exists only during a long outage.
Not thread-safe: the Link that owns it serialises every call.

Only what can be sent is stored: a message is encoded once, when it is put, and one that cannot
be (a lone UTF-16 surrogate in a string) is refused there, counted and reported through
take_problems(), so it can neither stop the link when its turn comes nor wait in the file to
stop the next start. A spill file line that does not read back as a sendable message (a torn
write, or one written by an older version) is skipped and reported the same way.
"""

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from agent.mqtt import envelope

SPILL_FILE = "outbox.jsonl"
PROBLEMS_KEPT = 16
"""Reports of refused messages and damaged lines kept for the owner; older ones are counted."""
UNENCODABLE = "mqtt:unencodable"
SPILL_DAMAGED = "mqtt:outbox_damaged"


@dataclasses.dataclass
class Pending:
    """One stamped message waiting to go; `hist` once it has waited through a reconnect."""

    topic: str
    message: dict[str, Any]
    qos: int
    retain: bool = False
    hist: bool = False
    encoded: bytes = b""
    """The message as it goes on the wire without `hist`; made once, by payload()."""

    def payload(self) -> bytes:
        """The bytes to send now; UnicodeEncodeError (a ValueError) for what UTF-8 cannot carry."""
        if not self.encoded:
            self.encoded = envelope.encode(self.message)
        return envelope.encode(self.message, hist=True) if self.hist else self.encoded

    def to_line(self) -> str:
        """One line of the spill file, with the message exactly as it will be sent."""
        if not self.encoded:
            self.payload()
        return (f'{{"topic":{json.dumps(self.topic)},"qos":{int(self.qos)},'
                f'"retain":{"true" if self.retain else "false"},'
                f'"message":{self.encoded.decode("utf-8")}}}')

    @classmethod
    def from_line(cls, line: bytes) -> "Pending":
        """A spilled message, read back as history; ValueError (MessageError), KeyError or
        TypeError when the line is not one that can be sent."""
        data = envelope.load(line.decode("utf-8"))
        pending = cls(str(data["topic"]), dict(data["message"]), int(data["qos"]),
                      bool(data["retain"]), hist=True)
        pending.payload()
        return pending


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
        """Lines of the spill file that could not be read back as a sendable message (a torn
        last write, a message an older version stored although it could not be sent)."""
        self.unencodable = 0
        """Messages refused by put() because they cannot be encoded (never stored, never sent)."""
        self._problems: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=PROBLEMS_KEPT)
        self._spilled = self._clean_spill()

    @property
    def spilled(self) -> int:
        """Kept messages waiting in the spill file now."""
        return self._spilled

    def __len__(self) -> int:
        return len(self._keep) + self._spilled + len(self._telemetry)

    def take_problems(self) -> list[tuple[str, str]]:
        """(cause, operator sentence) for each message refused and each damaged spill file
        since the last call (UNENCODABLE, SPILL_DAMAGED), for the owner to raise as events;
        the sentences are valid UTF-8."""
        taken = list(self._problems)
        self._problems.clear()
        return taken

    def put(self, pending: Pending, keep: bool) -> None:
        """Queue `pending`, or refuse it (counted, reported) if it cannot be encoded."""
        try:
            pending.topic.encode("utf-8")
            pending.payload()
        except (ValueError, TypeError) as error:
            self.unencodable += 1
            self._problems.append((UNENCODABLE,
                f"message for {envelope.printable(pending.topic)} dropped, it cannot be sent: "
                f"{envelope.printable(_why(error))}; {self.unencodable} dropped since start. "
                "Check what the message quoted (a received id or reason)"))
            return
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

    def _clean_spill(self) -> int:
        """At start: count what the previous run left, and rewrite the file without the lines
        that cannot be sent, so they are skipped (and reported) once, not at every read."""
        lines = self._spill_lines()
        read = self._read_spill(lines)
        damaged = len(lines) - len(read)
        if damaged:
            self.spill_damaged += damaged
            self._problems.append((SPILL_DAMAGED,
                f"{damaged} of {len(lines)} lines of {self.spill_path} could not be read back "
                "as messages (a torn write or a message that cannot be sent) and were skipped; "
                f"the other {len(read)} are sent"))
            try:
                self._rewrite_spill(read)
            except OSError as error:
                self._problems.append((SPILL_DAMAGED, f"{self.spill_path} could not be "
                                       f"rewritten without its damaged lines ({error}); they "
                                       "are skipped at each read"))
        return len(read)

    def _spill_lines(self) -> list[bytes]:
        try:
            return [line for line in self.spill_path.read_bytes().splitlines() if line.strip()]
        except FileNotFoundError:
            return []
        except OSError as error:
            self.spill_damaged += 1
            self._problems.append((SPILL_DAMAGED, f"{self.spill_path} could not be read "
                                   f"({error}); what it held is not sent"))
            return []

    def _read_spill(self, lines: list[bytes] | None = None) -> list[Pending]:
        read = []
        for line in self._spill_lines() if lines is None else lines:
            try:
                read.append(Pending.from_line(line))
            except (ValueError, KeyError, TypeError):
                pass  # counted and reported once, by _clean_spill
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


def _why(error: Exception) -> str:
    if isinstance(error, UnicodeEncodeError):
        return f"a lone UTF-16 surrogate ({error.object[error.start:error.end]})"
    return f"{type(error).__name__}: {error}"
