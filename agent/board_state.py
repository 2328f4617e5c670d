"""What a board keeps across restarts and power cuts: latched faults and tuned gains.

Written only when it changes (a fault latches or is reset, a tune finishes), atomically, so
the SD card sees no writes in steady state. A missing or damaged file gives safe defaults
and an event, never a crash.
"""

from agent.control.autotune import GAINS_FILE, StoredGains, load_gains
from agent.persist import StateStore
from agent.safety.events import Event, EventLog

LATCHED_FILE = "latched.json"
LATCHED_VERSION = 1


class BoardState:
    def __init__(self, store: StateStore, events: EventLog, now: float):
        self.store = store
        self.events = events
        read = store.read(LATCHED_FILE, LATCHED_VERSION, {"faults": {}})
        if read.problem and (store.path(LATCHED_FILE)).exists():
            self._event(now, "state_file", read.problem,
                        f"latched-fault file unusable ({read.problem}); starting with none "
                        "latched — check the board's event history before trusting it")
        faults = read.payload.get("faults")
        self.latched: dict[str, str] = dict(faults) if isinstance(faults, dict) else {}
        gains, problem = load_gains(store)
        self.gains: StoredGains | None = None if problem else gains
        if problem and store.path(GAINS_FILE).exists():
            self._event(now, "state_file", problem,
                        f"tuned gains unusable ({problem}); using the built-in gains")

    def _event(self, now: float, cause: str, value: str, message: str) -> None:
        self.events.record(Event(now, cause, value, message, "STARTING", "warning"))

    def save_latched(self, latched: dict[str, str]) -> None:
        self.store.write(LATCHED_FILE, LATCHED_VERSION, {"faults": latched})
