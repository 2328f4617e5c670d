"""What a simulated site run leaves behind for its report: sampled series, events, injected
faults with their outcomes, and energy totals from the physics and from the MQTT meters.

Why columns of plain lists: the report plots whole series, the JSON is for tools, and a run of
512 boards sampled every few simulated seconds must stay small; one list per quantity does.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass
class FaultRecord:
    """One injected fault and what became of it, for the summary."""

    t_s: float
    kind: str
    target: str
    description: str
    outcome: str = "no reaction observed"
    cleared_s: float | None = None


@dataclasses.dataclass
class Recording:
    meta: dict[str, Any]
    """scenario, description, modules, boards per module, simulated_s, wall_s, broker, speed."""
    times_s: list[float] = dataclasses.field(default_factory=list)
    site: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    """demand_w (the site role's), heat_w (physics: into the water), electric_w (physics),
    load_w (the building's draw), tank_c, target_c, outdoor_c."""
    modules: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """Per module: budget_w, power_w, heat_w (the leader's meter), oil_c, flow_l_per_min,
    outlet_c, interlock (bool), leader_online (bool)."""
    boards: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """Per board (`module/board`): setpoint_w, power_w, soc_c, mode (str)."""
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """{t_s, source, kind, text}: safety events from boards, scenario actions, role changes."""
    faults: list[FaultRecord] = dataclasses.field(default_factory=list)
    energy: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wh: requested (the site's demand integrated), heat_to_water, electric, to_room, stored
    (change of heat held in SoCs and oil baths), load (the building's draw), metered_electric
    and metered_heat (the leaders' ledgers, as counted over MQTT)."""

    def append(self, series: dict[str, list[Any]], values: dict[str, Any]) -> None:
        """Add one sample to each named column of `series` (made on first use)."""
        for key, value in values.items():
            series.setdefault(key, []).append(value)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "times_s": self.times_s, "site": self.site,
                "modules": self.modules, "boards": self.boards, "events": self.events,
                "faults": [dataclasses.asdict(f) for f in self.faults], "energy": self.energy}
