"""What the board keeps on its data partition about its last update, read fail-closed.

Why: an update outlives the process that started it. The updater writes this record before
each step that a reboot, a power cut or a watchdog reset can interrupt (the install, the trial
boot, the verdict), so that whichever slot boots next knows what was going on: a record
saying "trial of slot B, no verdict" read on slot A means the trial boot ended without one.
It lives on the data partition (`/data/hearth-update/`), which both slots mount, and is written
atomically (agent/persist.py). The agent's console reads it too (`update status`, `version`).

A record that cannot be read is never taken as good news: the updater reports it, keeps the
damaged file aside, and a trial boot with no readable record is not committed.
"""

import dataclasses
from pathlib import Path
from typing import Any

from agent.persist import StateStore

DEFAULT_RECORD_DIR = Path("/data/hearth-update")
RECORD_FILE = "update.json"
RECORD_VERSION = 1
STATES = ("idle", "installing", "trial", "committed", "rolled_back", "failed", "refused")
VERDICT_BAD = "bad"
SLOTS = ("A", "B")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """The last update as the board knows it. `verdict` is None during a trial until the gate
    decides; only a bad verdict is written (a good one is followed by state committed)."""

    state: str = "idle"
    target: str | None = None
    reason: str | None = None
    since_ts: float | None = None
    """Wall-clock time the state was entered."""
    from_slot: str | None = None
    """The slot that ran when the update began: the one to come back to."""
    trial_slot: str | None = None
    verdict: str | None = None
    other_slot: str | None = None
    other_version: str | None = None
    other_status: str | None = None
    """The slot not booted, as last seen: its Hearth version and RAUC's boot status."""

    def payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def record_problem(payload: dict[str, Any]) -> str | None:
    """Why a checksummed payload is still not a record this updater can act on, or None."""
    fields = {field.name for field in dataclasses.fields(TrialRecord)}
    if set(payload) != fields:
        return f"fields {sorted(payload)}, expected {sorted(fields)}"
    if payload["state"] not in STATES:
        return f"state {payload['state']!r} is none of {', '.join(STATES)}"
    for key in ("from_slot", "trial_slot", "other_slot"):
        if payload[key] not in (None, *SLOTS):
            return f"{key} {payload[key]!r} is no slot (A or B)"
    if payload["verdict"] not in (None, VERDICT_BAD):
        return f"verdict {payload['verdict']!r} is not null or {VERDICT_BAD!r}"
    if payload["state"] == "trial" and payload["trial_slot"] is None:
        return "a trial without a trial_slot"
    for key in ("target", "reason", "other_version", "other_status"):
        if not isinstance(payload[key], (str, type(None))):
            return f"{key} is {type(payload[key]).__name__}, expected text or null"
    since = payload["since_ts"]
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
        return f"since_ts is {since!r}, expected a number or null"
    return None


@dataclasses.dataclass(frozen=True)
class RecordRead:
    """A read: the record (None when there is none), or what was wrong with the file."""

    record: TrialRecord | None
    problem: str | None = None


class TrialRecords:
    """The record file in its directory (the data partition's `hearth-update/`)."""

    def __init__(self, store: StateStore):
        self.store = store

    @classmethod
    def at(cls, directory: Path = DEFAULT_RECORD_DIR) -> "TrialRecords":
        return cls(StateStore(directory))

    def read(self) -> RecordRead:
        path = self.store.path(RECORD_FILE)
        if not (path.exists() or path.is_symlink()):
            return RecordRead(None)
        read = self.store.read(RECORD_FILE, RECORD_VERSION, {})
        problem = read.problem or record_problem(read.payload)
        if problem is not None:
            return RecordRead(None, f"update record {path} is unusable: "
                              f"{problem.removesuffix('; using safe defaults')}")
        return RecordRead(TrialRecord(**read.payload))

    def write(self, record: TrialRecord) -> None:
        self.store.write(RECORD_FILE, RECORD_VERSION, record.payload())

    def keep_aside(self, wall_time_s: float) -> str:
        """Keep a damaged record as evidence; says where, or why it could not."""
        try:
            return f"kept as {self.store.keep_aside(RECORD_FILE, wall_time_s)}"
        except OSError as error:
            return f"could not be kept aside ({error.strerror or error})"
