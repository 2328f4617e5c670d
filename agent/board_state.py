"""What a board keeps across restarts and power cuts: latched faults and tuned gains.

Written only when it changes (a fault latches or is reset, a tune finishes), atomically, so
the SD card sees no writes in steady state. A missing file is a first start. A damaged gains
file gives the built-in gains and an event. A damaged latch file fails closed (DESIGN.md
section 6): what it held is unknown, so it latches a fault of its own, `state_file:latched`,
which a technician's reset clears once the file has been rewritten good.
"""

from agent.control.autotune import GAINS_FILE, StoredGains, load_gains
from agent.persist import StateStore
from agent.safety.events import Event, EventLog

LATCHED_FILE = "latched.json"
LATCHED_VERSION = 1
LATCH_FILE_CAUSE = "state_file:latched"


def latched_problem(payload: dict) -> str | None:
    """Why a checksummed latch payload still cannot be used, or None: it must map each
    latched cause to its message, both text."""
    faults = payload.get("faults")
    if not isinstance(faults, dict):
        return f"\"faults\" is {type(faults).__name__}, expected a table of cause -> message"
    for cause, message in faults.items():
        if not isinstance(message, str):
            return (f"\"faults\".{cause} is {type(message).__name__}, expected the fault's "
                    "message as text")
    return None


class BoardState:
    def __init__(self, store: StateStore, events: EventLog, now: float, wall_time_s: float):
        """`now` stamps the events (the agent's monotonic clock); `wall_time_s` names the
        copy of a damaged file kept aside."""
        self.store = store
        self.events = events
        self.latched: dict[str, str] = self._load_latched(now, wall_time_s)
        gains, problem = load_gains(store)
        self.gains: StoredGains | None = None if problem else gains
        if problem and store.path(GAINS_FILE).exists():
            self.events.record(Event(now, "state_file:gains", str(store.path(GAINS_FILE)),
                                     f"tuned gains unusable ({problem}); using the built-in "
                                     "gains", "STARTING", "warning"))

    def _load_latched(self, now: float, wall_time_s: float) -> dict[str, str]:
        path = self.store.path(LATCHED_FILE)
        read = self.store.read(LATCHED_FILE, LATCHED_VERSION, {"faults": {}})
        if read.ok:
            problem = latched_problem(read.payload)
            if problem is None:
                return dict(read.payload["faults"])
            problem = f"state file {path}: {problem}"
        elif not (path.exists() or path.is_symlink()):
            return {}
        else:
            problem = read.problem.removesuffix("; using safe defaults")
        try:
            kept = f"the damaged file is kept as {self.store.keep_aside(LATCHED_FILE, wall_time_s)}"
        except OSError as error:
            kept = f"it could not be kept aside ({error.strerror or error})"
        message = (f"{problem}. The faults it held are unknown, so the board stays in FAULT "
                   f"(SAFE settings); {kept}. Check the board's event history and the SD card, "
                   "then `reset` (refused until the latch file can be written good again)")
        latched = {LATCH_FILE_CAUSE: message}
        self.events.record(Event(now, LATCH_FILE_CAUSE, str(path), message, "STARTING",
                                 "critical"))
        try:
            self.save_latched(latched)
        except (OSError, ValueError) as error:
            self.events.record(Event(now, "state_file:latched_write", str(path),
                                     f"the latch file {path} could not be rewritten ({error}); "
                                     "the fault holds in memory and the file stays damaged, "
                                     "so the next start latches it again", "STARTING", "error"))
        return latched

    def save_latched(self, latched: dict[str, str]) -> None:
        self.store.write(LATCHED_FILE, LATCHED_VERSION, {"faults": latched})
