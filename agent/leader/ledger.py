"""The module's energy ledger: electricity and heat per board and for the module, kept apart,
surviving board reboots and leader restarts.

Why segments: a board reports cumulative counters (`energy_electric_wh`, `energy_heat_wh`) with
its boot id. Within one boot they only rise, so a lower value is an old message arriving late
and is ignored. After a reboot (new boot id) a counter that carried on (the board persisted it)
continues; one that went back (the board lost it) starts a new segment from its first value: the
ledger adds only rises it saw, it never subtracts and never invents energy. Persisted through
agent/persist.py's StateStore only when due (`save_every_s`) or when a board restarted, so the
leader's SD card sees a write every few minutes at most, not one per period.
"""

import dataclasses
from typing import Any

from agent.mqtt.envelope import finite_number
from agent.persist import StateStore

LEDGER_FILE = "leader-energy.json"
LEDGER_VERSION = 1
KINDS = ("electric", "heat")


@dataclasses.dataclass
class BoardEnergy:
    boot: str | None = None
    last: dict[str, float | None] = dataclasses.field(
        default_factory=lambda: {kind: None for kind in KINDS})
    total_wh: dict[str, float] = dataclasses.field(
        default_factory=lambda: {kind: 0.0 for kind in KINDS})
    segments: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"boot": self.boot, "last": dict(self.last), "total_wh": dict(self.total_wh),
                "segments": self.segments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BoardEnergy":
        return cls(data.get("boot"),
                   {k: finite_number(data.get("last", {}).get(k)) for k in KINDS},
                   {k: finite_number(data.get("total_wh", {}).get(k)) or 0.0 for k in KINDS},
                   int(data.get("segments", 0)))


class EnergyLedger:
    def __init__(self, save_every_s: float = 300.0):
        self.save_every_s = save_every_s
        self.boards: dict[str, BoardEnergy] = {}
        self.module_heat_metered_wh = 0.0
        """Heat to water measured by the module's own meter (HeatMeter), integrated here."""
        self.dirty = False
        self.urgent = False
        self._last_save_s: float | None = None
        self._last_meter_s: float | None = None

    def board_sample(self, board: str, boot: str | None, counters: dict[str, Any]) -> float:
        """Take a board's cumulative counters; returns the electric Wh added (for tests and logs)."""
        entry = self.boards.setdefault(board, BoardEnergy())
        restarted = boot != entry.boot
        if restarted:
            entry.boot = boot
            self.urgent = True
        added_electric = 0.0
        went_back = False
        for kind in KINDS:
            value = finite_number(counters.get(f"energy_{kind}_wh"))
            if value is None:
                continue
            last = entry.last[kind]
            if last is None or (restarted and value < last):
                went_back = went_back or last is not None
                entry.last[kind] = value
                self.dirty = True
                continue
            if value <= last:
                continue  # same boot and lower: an old message arriving late
            entry.total_wh[kind] += value - last
            entry.last[kind] = value
            self.dirty = True
            if kind == "electric":
                added_electric = value - last
        entry.segments += went_back
        return added_electric

    def meter_sample(self, now: float, heat_w: float | None) -> None:
        """Integrate the module meter's heat; an unknown reading adds nothing for its interval."""
        if self._last_meter_s is not None and heat_w is not None and heat_w > 0:
            self.module_heat_metered_wh += heat_w * (now - self._last_meter_s) / 3600.0
            self.dirty = True
        self._last_meter_s = now

    def totals_wh(self) -> dict[str, float]:
        return {kind: sum(entry.total_wh[kind] for entry in self.boards.values())
                for kind in KINDS}

    def to_payload(self) -> dict[str, Any]:
        return {"boards": {name: entry.to_dict() for name, entry in sorted(self.boards.items())},
                "module_heat_metered_wh": self.module_heat_metered_wh}

    def load(self, store: StateStore) -> str | None:
        """Load the persisted ledger; returns the problem (None when it was read well)."""
        read = store.read(LEDGER_FILE, LEDGER_VERSION, {"boards": {},
                                                        "module_heat_metered_wh": 0.0})
        try:
            self.boards = {str(name): BoardEnergy.from_dict(data)
                           for name, data in read.payload.get("boards", {}).items()}
        except (AttributeError, TypeError, ValueError) as error:
            self.boards = {}
            return f"energy ledger unusable ({error}); starting from zero"
        self.module_heat_metered_wh = finite_number(
            read.payload.get("module_heat_metered_wh")) or 0.0
        return read.problem

    def save_if_due(self, now: float, store: StateStore, force: bool = False) -> bool:
        """Write when something changed and either a board restarted (its old counters would be
        lost with a leader crash now), the save period passed, or `force` (clean exit)."""
        if not self.dirty and not self.urgent:
            return False
        due = (self._last_save_s is None or now - self._last_save_s >= self.save_every_s)
        if not (force or self.urgent or due):
            return False
        store.write(LEDGER_FILE, LEDGER_VERSION, self.to_payload())
        self._last_save_s = now
        self.dirty = self.urgent = False
        return True
