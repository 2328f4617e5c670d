"""The site role: reads the modules' `leader/state`, decides the building's demand and sends
each module its budget on `<module>/leader/budget`, with site totals on `site/state`.

Why it is a separate role that may share a process with a leader: a site of one module needs
no second box, but a site of many modules must not depend on one module's leader staying up.
A module counts as available only while its leader is online and its state is recent and its
interlock is clear; otherwise its capacity is zero and its share goes to the others.
"""

import dataclasses
import logging
import math
from typing import Any, Callable

from agent.errors import MessageError
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER, ROOT
from agent.site.demand import ExternalDemand, split_across_modules
from agent.site.law import DemandLaw, HearthDemand

TARGET_SET = "site/target/set"
"""Home Assistant's `number` writes the site target here: a plain number in C, no envelope."""


@dataclasses.dataclass(frozen=True)
class SiteSettings:
    period_s: float = 10.0
    target_c: float = 55.0
    target_min_c: float = 20.0
    target_max_c: float = 75.0
    kp_w_per_k: float = 50.0
    ki_w_per_k_s: float = 0.05
    demand_timeout_s: float = 120.0
    leader_timeout_s: float = 30.0


def site_topics(site: str) -> dict[str, str]:
    base = f"{ROOT}/{site}"
    return {"base": base, "state": f"{base}/site/state", "status": f"{base}/site/status",
            "demand": f"{base}/site/demand", "target_set": f"{base}/{TARGET_SET}"}


class SiteRole:
    def __init__(self, site: str, link, clock: Callable[[], float], settings: SiteSettings,
                 read_loop_c: Callable[[], float | None] | None = None,
                 log: logging.Logger | None = None, law: DemandLaw | None = None):
        """`read_loop_c` reads the tank/loop temperature; None means demand comes only from
        `site/demand`. `law` turns temperature into demand (agent/site/law.py); Hearth's
        bumpless PI from `settings` when None."""
        self.site = site
        self.link = link
        self.clock = clock
        self.settings = settings
        self.read_loop_c = read_loop_c
        self.log = log or logging.getLogger("hearth.site")
        self.topics = site_topics(site)
        self.target_c = settings.target_c
        self.law = law if law is not None else HearthDemand(
            settings.kp_w_per_k, settings.ki_w_per_k_s, max_step_s=3 * settings.period_s)
        self.demand_w = 0.0
        self.capacity_full_w: dict[str, float] = {}
        """The highest capacity each module has reported: what the site could deliver."""
        self.external = ExternalDemand(settings.demand_timeout_s)
        self.modules: dict[str, dict[str, Any]] = {}
        self.module_seen_s: dict[str, float] = {}
        self.leader_status: dict[str, str] = {}
        self.snapshot: dict[str, Any] = {}
        self.rejected_messages = 0

    def start(self) -> None:
        base = self.topics["base"]
        self.link.subscribe(f"{base}/+/{LEADER}/state", self._on_leader_state)
        self.link.subscribe(f"{base}/+/{LEADER}/status", self._on_leader_status)
        self.link.subscribe(self.topics["demand"], self._on_demand)
        self.link.subscribe(self.topics["target_set"], self._on_target)

    def _on_leader_state(self, message) -> None:
        module = message.topic.split("/")[-3]
        try:
            self.modules[module] = message.data()
        except MessageError:
            self.rejected_messages += 1
            return
        self.module_seen_s[module] = self.clock()

    def _on_leader_status(self, message) -> None:
        self.leader_status[message.topic.split("/")[-3]] = message.text()

    def _on_demand(self, message) -> None:
        try:
            value = message.data().get("demand_w")
        except MessageError:
            value = None
        if not self.external.offer(self.clock(), value):
            self.rejected_messages += 1

    def _on_target(self, message) -> None:
        try:
            value = float(message.text())
        except (MessageError, ValueError):
            value = math.nan
        if not self.settings.target_min_c <= value <= self.settings.target_max_c:
            self.rejected_messages += 1
            self.log.warning("site target %r rejected: expected %g to %g C", message.payload,
                             self.settings.target_min_c, self.settings.target_max_c)
            return
        self.target_c = value

    def capacities_w(self, now: float) -> dict[str, float]:
        """Each module's capacity; 0 for a module whose leader is gone or interlocked."""
        found = {}
        for module, state in self.modules.items():
            recent = now - self.module_seen_s.get(module, -math.inf) <= self.settings.leader_timeout_s
            interlocked = bool((state.get("interlock") or {}).get("active"))
            online = self.leader_status.get(module, "online") == "online"
            capacity = max(0.0, finite_number(state.get("capacity_w")) or 0.0)
            self.capacity_full_w[module] = max(capacity, self.capacity_full_w.get(module, 0.0))
            found[module] = capacity if recent and online and not interlocked else 0.0
        return found

    def tick(self, now: float) -> None:
        capacities = self.capacities_w(now)
        site_capacity_w = sum(capacities.values())
        loop_c = self.read_loop_c() if self.read_loop_c is not None else None
        external_w = self.external.current_w(now)
        if external_w is not None:
            demand_w, source = external_w, "external"
        elif self.read_loop_c is not None:
            if loop_c is not None and math.isfinite(loop_c):
                self.demand_w = self.law.update(now, loop_c, self.target_c, site_capacity_w,
                                                sum(self.capacity_full_w.values()))
            demand_w = min(self.demand_w, site_capacity_w)
            source = "temperature"
        else:
            demand_w, source = 0.0, "none"
        split = split_across_modules(demand_w, capacities)
        for module in self.modules:
            self.link.publish(f"{self.topics['base']}/{module}/{LEADER}/budget",
                              {"budget_w": round(split.setpoints_w.get(module, 0.0), 3)}, qos=1)
        self.snapshot = self.state_payload(now, demand_w, source, loop_c, split, capacities)
        self.link.publish(self.topics["state"], self.snapshot, qos=0)

    def state_payload(self, now, demand_w, source, loop_c, split, capacities) -> dict[str, Any]:
        def total(key: str) -> float | None:
            values = [finite_number(s.get(key)) for s in self.modules.values()]
            values = [v for v in values if v is not None]
            return sum(values) if values else None

        return {"demand_w": demand_w, "demand_source": source, "target_c": self.target_c,
                "loop_c": loop_c, "capacity_w": sum(capacities.values()),
                "unmet_w": max(0.0, split.unallocated_w),
                "budgets_w": dict(split.setpoints_w),
                "power_w": total("power_w"), "heat_w": total("heat_w"),
                "energy_electric_wh": total("energy_electric_wh") or 0.0,
                "energy_heat_wh": total("energy_heat_wh") or 0.0,
                "modules_available": sum(1 for c in capacities.values() if c > 0)}

    def run(self, should_stop: Callable[[], bool]) -> None:
        next_s = self.clock()
        while not should_stop():
            self.link.poll(timeout_s=max(0.0, min(next_s - self.clock(), 0.05)))
            now = self.clock()
            if now >= next_s:
                self.tick(now)
                next_s += self.settings.period_s
                if next_s <= now:
                    next_s = now + self.settings.period_s
