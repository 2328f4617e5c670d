"""The site role: reads the modules' `leader/state`, decides the building's demand and sends
each module its budget on `<module>/leader/budget`, with site totals on `site/state`
(docs/site.md).

Why it is a separate role that may share a process with a leader: a site of one module needs
no second box, but a site of many modules must not depend on one module's leader staying up.
A module counts as available only while its leader is online and its state is recent and its
interlock is clear; otherwise its capacity is zero and its share goes to the others.

What must outlive a restart is kept in the state directory (agent/site/memory.py): the target
and the mode as soon as they change; the demand law's state, each module's highest capacity
and the energy totals at most every `save_every_s`. The energy totals on `site/state` are the
ones last saved, so a restart (or a crash) can never report less than was sent before.
"""

import dataclasses
import datetime
import logging
import math
import time
from typing import Any, Callable

from agent.errors import MessageError
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER, ROOT
from agent.persist import StateStore
from agent.site.demand import ExternalDemand, split_across_modules
from agent.site.energy import KEYS as ENERGY_KEYS
from agent.site.energy import SiteEnergy
from agent.site.law import DemandLaw, HearthDemand
from agent.site.memory import SiteMemory
from agent.site.outdoor import OutdoorTemperature
from agent.site.target_plan import PlanSettings, Target, TargetPlan

TARGET_SET = "site/target/set"
"""Home Assistant's `number` writes the site target here: a plain number in C, no envelope."""
MODE_SET = "site/mode/set"
"""The site mode, plain text: one of MODES."""
MODES = ("auto", "comfort", "eco", "off")
"""`off`: no site demand, every module at its floor; `eco`: the eco target; `auto` and
`comfort`: the target set on `site/target/set`."""
CONTROL_FILE = "site-control.json"
ENERGY_FILE = "site-energy.json"


@dataclasses.dataclass(frozen=True)
class SiteSettings:
    period_s: float = 10.0
    target_c: float = 55.0
    target_min_c: float = 20.0
    target_max_c: float = 75.0
    proportional_band_k: float = 2.5
    integral_time_s: float = 1200.0
    demand_timeout_s: float = 120.0
    leader_timeout_s: float = 30.0
    eco_target_c: float = 45.0
    save_every_s: float = 60.0
    outdoor_timeout_s: float = 1800.0


def site_topics(site: str) -> dict[str, str]:
    base = f"{ROOT}/{site}"
    return {"base": base, "state": f"{base}/site/state", "status": f"{base}/site/status",
            "demand": f"{base}/site/demand", "target_set": f"{base}/{TARGET_SET}",
            "mode_set": f"{base}/{MODE_SET}", "outdoor": f"{base}/site/outdoor"}


class SiteRole:
    def __init__(self, site: str, link, clock: Callable[[], float], settings: SiteSettings,
                 read_loop_c: Callable[[], float | None] | None = None,
                 log: logging.Logger | None = None, law: DemandLaw | None = None,
                 store: StateStore | None = None, wall_clock: Callable[[], float] = time.time,
                 plan: TargetPlan | None = None,
                 read_outdoor_c: Callable[[], float | None] | None = None):
        """`read_loop_c` reads the tank/loop temperature; None means demand comes only from
        `site/demand`. `law` turns temperature into demand (agent/site/law.py); Hearth's
        bumpless PI from `settings` when None. `store` keeps what must outlive a restart
        (None: nothing is kept); `wall_clock` names a damaged file kept aside and is the time
        of the target `plan` (schedule, guard, legionella, curve: agent/site/target_plan.py;
        None: the target and the mode alone). `read_outdoor_c` reads the outdoor temperature
        for the curve; without it `site/outdoor` gives it."""
        self.site = site
        self.link = link
        self.clock = clock
        self.settings = settings
        self.read_loop_c = read_loop_c
        self.log = log or logging.getLogger("hearth.site")
        self.topics = site_topics(site)
        self.target_c = settings.target_c
        self.mode = "auto"
        self.wall_clock = wall_clock
        self.plan = plan if plan is not None else TargetPlan(PlanSettings(
            settings.target_min_c, settings.target_max_c, eco_c=settings.eco_target_c),
            datetime.timezone.utc, max_gap_s=3 * settings.period_s)
        self.target = Target(settings.target_c, "manual")
        """The plan's last decision: the target in force and why."""
        self.outdoor = OutdoorTemperature(settings.outdoor_timeout_s, read_outdoor_c)
        self.law = law if law is not None else HearthDemand(
            settings.proportional_band_k, settings.integral_time_s,
            max_step_s=3 * settings.period_s)
        self.demand_w = 0.0
        self.capacity_full_w: dict[str, float] = {}
        """The highest capacity each module has reported: what the site could deliver."""
        self.energy = SiteEnergy()
        self.energy_sent_wh = self.energy.totals_wh()
        """The totals on `site/state`: the ones last saved."""
        self._saved_s: float | None = None
        self._control_saved: dict[str, Any] | None = None
        self.memory = SiteMemory(store, wall_clock, self.log) if store is not None else None
        self.external = ExternalDemand(settings.demand_timeout_s)
        self.modules: dict[str, dict[str, Any]] = {}
        self.module_seen_s: dict[str, float] = {}
        self.leader_status: dict[str, str] = {}
        self.snapshot: dict[str, Any] = {}
        self.rejected_messages = 0
        if self.memory is not None:
            self._restore()

    # -- what outlives a restart ------------------------------------------------------------

    def control_payload(self) -> dict[str, Any]:
        return {"target_c": self.target_c, "mode": self.mode, "law": self.law.state(),
                "capacity_full_w": dict(self.capacity_full_w), "plan": self.plan.state()}

    def _restore(self) -> None:
        self.memory.read(CONTROL_FILE, self._take_control, (
            f"the site starts from the config's target {self.settings.target_c:g} C, mode "
            "auto and no demand; set the target and mode again if they were changed"))
        energy = self.memory.read(ENERGY_FILE, SiteEnergy.from_payload, (
            "the site's energy totals start again from the modules' counters; Home "
            "Assistant's Energy dashboard may count a reset"))
        if energy is not None:
            self.energy = energy
            self.energy_sent_wh = energy.totals_wh()

    def _take_control(self, payload: dict[str, Any]) -> None:
        """Take a saved control state, all of it or (ValueError naming the field) none."""
        target_c = finite_number(payload.get("target_c"))
        if target_c is None or not self.settings.target_min_c <= target_c <= (
                self.settings.target_max_c):
            raise ValueError(f"target_c is {payload.get('target_c')!r}, expected "
                             f"{self.settings.target_min_c:g} to {self.settings.target_max_c:g}")
        if payload.get("mode") not in MODES:
            raise ValueError(f"mode is {payload.get('mode')!r}, expected one of "
                             f"{', '.join(MODES)}")
        capacities = payload.get("capacity_full_w")
        if not isinstance(capacities, dict) or not all(
                finite_number(w) is not None and w >= 0.0 for w in capacities.values()):
            raise ValueError(f"capacity_full_w is {capacities!r}, expected watts >= 0 per "
                             "module")
        law = payload.get("law")
        if not isinstance(law, dict):
            raise ValueError(f"law is {law!r}, expected an object")
        plan = payload.get("plan")  # absent in a file written before the plan was kept
        if plan is not None:
            TargetPlan(self.plan.settings, self.plan.zone).restore(plan)  # raises, or fits
        self.law.restore(law)
        if plan is not None:
            self.plan.restore(plan)
        self.target_c, self.mode = target_c, payload["mode"]
        self.capacity_full_w = {str(m): float(w) for m, w in capacities.items()}

    def save(self, now: float, force: bool = False) -> None:
        """Save the control state and the energy totals when due (or `force`); the totals
        that reached the disk are the ones `site/state` reports from then on."""
        if self.memory is None:
            self.energy_sent_wh = self.energy.totals_wh()
            return
        if not force and self._saved_s is not None and now - self._saved_s < (
                self.settings.save_every_s):
            return
        self._saved_s = now
        self._save_control()
        totals = self.energy.totals_wh()
        if totals != self.energy_sent_wh and self.memory.write(ENERGY_FILE,
                                                               self.energy.to_payload()):
            self.energy_sent_wh = totals

    def close(self) -> None:
        """Save everything now (a clean stop)."""
        self.save(self.clock(), force=True)

    # -- messages ---------------------------------------------------------------------------

    def start(self) -> None:
        base = self.topics["base"]
        self.link.subscribe(f"{base}/+/{LEADER}/state", self._on_leader_state)
        self.link.subscribe(f"{base}/+/{LEADER}/status", self._on_leader_status)
        self.link.subscribe(self.topics["demand"], self._on_demand)
        self.link.subscribe(self.topics["target_set"], self._on_target)
        self.link.subscribe(self.topics["mode_set"], self._on_mode)
        self.link.subscribe(self.topics["outdoor"], self._on_outdoor)

    def _on_leader_state(self, message) -> None:
        module = message.topic.split("/")[-3]
        try:
            self.modules[module] = message.data()
        except MessageError:
            self.rejected_messages += 1
            return
        self.module_seen_s[module] = self.clock()
        self.energy.offer(module, self.modules[module])

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
        self._save_control()

    def _on_mode(self, message) -> None:
        try:
            mode = message.text().strip()
        except MessageError:
            mode = None
        if mode not in MODES:
            self.rejected_messages += 1
            self.log.warning("site mode %r rejected: expected one of %s", message.payload,
                             ", ".join(MODES))
            return
        self.mode = mode
        self._save_control()

    def _on_outdoor(self, message) -> None:
        try:
            value = message.data().get("outdoor_c")
        except MessageError:
            value = None
        if not self.outdoor.offer(self.clock(), value):
            self.rejected_messages += 1

    def _save_control(self) -> None:
        """Write the control state if it changed: at once for an operator's command, when
        due for the law's state."""
        payload = self.control_payload()
        if self.memory is not None and payload != self._control_saved:
            if self.memory.write(CONTROL_FILE, payload):
                self._control_saved = payload

    def decide_target(self, now: float, loop_c: float | None) -> Target:
        """Ask the plan for the target in force (once a period: it counts the legionella
        hold); a legionella cycle that ended is logged and saved at once."""
        self.target = self.plan.decide(self.wall_clock(), self.mode, self.target_c, loop_c,
                                       self.outdoor.current_c(now))
        end = self.target.cycle_end
        if end is not None:
            self.log.log(logging.INFO if end.done else logging.WARNING,
                         end.message(self.plan.zone))
            self._save_control()
        return self.target

    # -- the period ---------------------------------------------------------------------------

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
        target_c = self.decide_target(now, loop_c).target_c
        if target_c is None:
            demand_w, source = 0.0, "none"
        elif external_w is not None and self.mode != "off":  # off: only guard and legionella
            demand_w, source = external_w, "external"
        elif self.read_loop_c is not None:
            if loop_c is not None and math.isfinite(loop_c):
                self.demand_w = self.law.update(now, loop_c, target_c, site_capacity_w,
                                                sum(self.capacity_full_w.values()))
            demand_w = min(self.demand_w, site_capacity_w)
            source = "temperature"
        else:
            demand_w, source = 0.0, "none"
        split = split_across_modules(demand_w, capacities)
        for module in self.modules:
            self.link.publish(f"{self.topics['base']}/{module}/{LEADER}/budget",
                              {"budget_w": round(split.setpoints_w.get(module, 0.0), 3)}, qos=1)
        self.save(now)
        self.snapshot = self.state_payload(now, demand_w, source, loop_c, split, capacities)
        self.link.publish(self.topics["state"], self.snapshot, qos=0)

    def state_payload(self, now, demand_w, source, loop_c, split, capacities) -> dict[str, Any]:
        def total(key: str) -> float | None:
            values = [finite_number(s.get(key)) for s in self.modules.values()]
            values = [v for v in values if v is not None]
            return sum(values) if values else None

        target_c = self.target.target_c
        return {"demand_w": demand_w, "demand_source": source, "mode": self.mode,
                "target_c": target_c if target_c is not None else self.target_c,
                "target_reason": self.target.reason,
                "legionella": self.plan.report(self.wall_clock()),
                "loop_c": loop_c, "capacity_w": sum(capacities.values()),
                "unmet_w": max(0.0, split.unallocated_w),
                "budgets_w": dict(split.setpoints_w),
                "power_w": total("power_w"), "heat_w": total("heat_w"),
                **{key: self.energy_sent_wh[key] for key in ENERGY_KEYS},
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
