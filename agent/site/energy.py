"""The site's energy totals: the sum of what each module's counters rose by, never lower.

Why not just add up the modules' latest `energy_*_wh`: Home Assistant's Energy dashboard reads
the site totals as `total_increasing`, so any drop is taken as a meter reset and the lifetime
is counted again. Totals drop when a leader's ledger restarts lower (lost, or an older save), a
module's leader is gone, or the site itself restarts knowing nothing. So each module's counters
are followed in segments, as the leader's ledger follows boards: within one leader boot
(the envelope's `boot`) a lower value is an old message and is ignored; after a new boot a
counter that carried on continues, one that went back starts a new segment from its first
value. A module's total is its first value plus every rise seen; the site's total is the sum
over modules, including modules whose leader is gone. The whole thing is persisted, so a site
restart starts from it.
"""

from typing import Any

from agent.mqtt.envelope import finite_number

KEYS = ("energy_electric_wh", "energy_heat_wh")
TOTAL_MAX_WH = 1e15
"""A counter above this (a 3 kW site for 38 million years) did not come from a leader."""


def _energy(where: str, value: Any) -> float:
    number = finite_number(value)
    if number is None or not 0.0 <= number <= TOTAL_MAX_WH:
        raise ValueError(f"{where} is {value!r}, expected a number from 0 to {TOTAL_MAX_WH:g}")
    return number


class SiteEnergy:
    """Per module: the leader boot last seen, the counters' last values and the totals."""

    def __init__(self):
        self.modules: dict[str, dict[str, Any]] = {}

    def offer(self, module: str, state: dict[str, Any]) -> None:
        """Take a module's `leader/state` (envelope included); counters it lacks are skipped."""
        boot = str(state.get("boot", ""))
        entry = self.modules.get(module)
        for key in KEYS:
            value = finite_number(state.get(key))
            if value is None or not 0.0 <= value <= TOTAL_MAX_WH:
                continue
            if entry is None:
                entry = self.modules[module] = {"boot": boot, "last_wh": {}, "total_wh": {}}
            last = entry["last_wh"].get(key)
            if last is None:
                entry["total_wh"][key] = value
            elif value > last:
                entry["total_wh"][key] += value - last
            elif entry["boot"] == boot:
                continue  # lower within one boot: a late message, not a new counter
            entry["last_wh"][key] = value
        if entry is not None:
            entry["boot"] = boot

    def totals_wh(self) -> dict[str, float]:
        return {key: sum(entry["total_wh"].get(key, 0.0) for entry in self.modules.values())
                for key in KEYS}

    def to_payload(self) -> dict[str, Any]:
        return {"modules": self.modules}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "SiteEnergy":
        """Raises ValueError naming the first field it cannot use."""
        modules = payload.get("modules")
        if not isinstance(modules, dict):
            raise ValueError(f"modules is {type(modules).__name__}, expected an object")
        energy = cls()
        for module, entry in modules.items():
            where = f"modules.{module}"
            if not isinstance(entry, dict) or not isinstance(entry.get("boot"), str):
                raise ValueError(f"{where} has no boot id")
            kept = {"boot": entry["boot"], "last_wh": {}, "total_wh": {}}
            for part in ("last_wh", "total_wh"):
                values = entry.get(part)
                if not isinstance(values, dict) or set(values) - set(KEYS):
                    raise ValueError(f"{where}.{part} is {values!r}, expected an object with "
                                     f"{' and '.join(KEYS)}")
                kept[part] = {key: _energy(f"{where}.{part}.{key}", value)
                              for key, value in values.items()}
            energy.modules[str(module)] = kept
        return energy
