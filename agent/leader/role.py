"""The module leader role: wires the tracker, heat meter, splitter, trim loop, interlock and
energy ledger to MQTT through a Link (agent/mqtt/link.py).

Why one object per module with everything passed in (link, clocks, module readings, state
store): the simulator runs many leaders in one process, and tests drive one on a SimClock.
Handlers run on the caller's thread inside `link.poll()`, so nothing here needs a lock. A change
of availability (a Last Will, a board going SAFE) re-splits the budget at once, so a dead
board's share reaches the others well within one leader period; the periodic tick publishes
setpoints to every board (they double as the leader's heartbeat), the module totals, and the
retained interlock whenever it changes.

Everything a board sends is decoded once, at the door (agent/leader/board_state.py): a message
the leader cannot use is rejected there, counted per board with its reason (in `leader/state`
and the metrics) and reported once per streak as a `leader/event`, and it changes nothing; the
leader keeps running whatever its boards say.
"""

import dataclasses
import logging
import re
import time
from typing import Any, Callable

from agent.errors import MessageError
from agent.ha_announce import DiscoveryAnnouncer
from agent.ha_discovery import board_discovery, leader_discovery
from agent.identity import NAME_PATTERN
from agent.leader.board_state import BoardStateError, checked_envelope, checked_state
from agent.leader.heat import HeatMeter
from agent.leader.interlock import ModuleInterlock
from agent.leader.ledger import EnergyLedger
from agent.leader.split import BudgetSplitter, Split, capacity_from_state
from agent.leader.tracker import BoardTracker
from agent.leader.trim import TrimLoop
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER, ROOT
from agent.persist import StateStore

LINK_WINDOW = 256
"""Kept messages a leader's Link hands to paho at once: a whole round of setpoints (one per
board, QoS 1). More is handed over only when the leader next polls or publishes, so a 64-board
round through the default window of 10 waited for seven acknowledgements, each caught only at
a later poll (scripts/bench-mqtt-scale found it)."""
MODULE_BUDGET_MAX_W = 100_000.0
"""A module budget above this is not a heat demand (64 boards at the 15 W ceiling draw 1 kW)."""


@dataclasses.dataclass(frozen=True)
class LeaderSettings:
    """The `[leader]` config section's values that the role uses (see agent/config_schema.py)."""

    period_s: float = 5.0
    silence_timeout_s: float = 15.0
    budget_w: float = 0.0
    flow_min_l_per_min: float | None = None
    oil_max_c: float | None = None
    interlock_clear_s: float = 30.0
    heat_smoothing_s: float = 60.0
    ledger_save_s: float = 300.0


@dataclasses.dataclass(frozen=True)
class ModuleReadings:
    """The module's own sensors on the leader's board, None when unknown or not configured."""

    inlet_c: float | None = None
    outlet_c: float | None = None
    flow_l_per_min: float | None = None
    oil_c: float | None = None


def module_topics(site: str, module: str) -> dict[str, str]:
    base = f"{ROOT}/{site}/{module}"
    return {"base": base, "leader": f"{base}/{LEADER}", "status": f"{base}/{LEADER}/status",
            "interlock": f"{base}/{LEADER}/interlock", "state": f"{base}/{LEADER}/state",
            "budget": f"{base}/{LEADER}/budget", "setpoint": f"{base}/{LEADER}/setpoint",
            "event": f"{base}/{LEADER}/event"}


class LeaderRole:
    def __init__(self, site: str, module: str, link, clock: Callable[[], float],
                 settings: LeaderSettings, read_module: Callable[[], ModuleReadings],
                 store: StateStore | None = None, log: logging.Logger | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 discovery: DiscoveryAnnouncer | None = None):
        """`clock` paces the leader; `wall_clock` times the boards' energy reports, which
        must fit in the time since the last one even across a leader restart. `discovery`
        announces the module and each board it learns of to Home Assistant."""
        self.site = site
        self.module = module
        self.link = link
        self.clock = clock
        self.wall_clock = wall_clock
        self.settings = settings
        self.read_module = read_module
        self.store = store
        self.discovery = discovery
        self.log = log or logging.getLogger("hearth.leader")
        self.topics = module_topics(site, module)
        self.tracker = BoardTracker(settings.silence_timeout_s)
        self.meter = HeatMeter(settings.heat_smoothing_s)
        self.splitter = BudgetSplitter()
        self.trim = TrimLoop()
        self.interlock = ModuleInterlock(settings.flow_min_l_per_min, settings.oil_max_c,
                                         clear_after_s=settings.interlock_clear_s)
        self.ledger = EnergyLedger(settings.ledger_save_s)
        self.budget_w = settings.budget_w
        self.electric_budget_w = settings.budget_w
        self.split = Split({}, 0.0)
        self.readings = ModuleReadings()
        self.rejected_messages = 0
        self.resplits = 0
        self.snapshot: dict[str, Any] = {}
        """The last `leader/state` payload; read by the metrics endpoint's thread (replaced
        whole each period, never mutated, so no lock is needed)."""
        self.ledger_problem = (self.ledger.load(store, wall_clock()) if store is not None
                               else None)
        self._availability_changed = False
        self._interlock_published = False
        self._announced_boards: set[str] = set()
        self._next_tick_s: float | None = None

    # -- MQTT ---------------------------------------------------------------------------

    def start(self) -> None:
        base = self.topics["base"]
        for kind, handler in (("status", self._on_status), ("state", self._on_state),
                              ("event", self._on_event)):
            self.link.subscribe(f"{base}/+/{kind}", handler)
        self.link.subscribe(self.topics["budget"], self._on_budget)
        if self.discovery is not None:
            self.discovery.start()
            self.discovery.announce(*leader_discovery(self.site, self.module))
        if self.ledger.reset_reason is not None:
            self.log.warning("%s/%s: %s", self.site, self.module, self.ledger.reset_reason)
            self._event("ledger_reset", None, f"{self.ledger.reset_reason}; check the state "
                        "directory's SD card and keep the damaged copy for the records")

    def _event(self, cause: str, board: str | None, message: str) -> None:
        """A `leader/event` (QoS 1, kept while the broker is away); `message` is ASCII-safe."""
        self.link.publish(self.topics["event"], {"cause": cause, "board": board,
                                                 "message": message, "severity": "warning"},
                          qos=1)

    def _reject(self, board: str, kind: str, reason: str) -> None:
        """Count a board's message rejected at the door; report the first of a streak."""
        if self.tracker.reject(board, kind, reason):
            self.log.warning("%s/%s: %s from %s rejected: %s", self.site, self.module, kind,
                             board, reason)
            self._event(f"{kind}_rejected", board, f"{kind} from board {board} rejected: "
                        f"{reason}; nothing changed. Check that board's agent version and "
                        "who else holds its account")

    def _board_of(self, topic: str) -> str | None:
        board = topic.split("/")[-2]
        return None if board == LEADER else board

    def _announce(self, board: str) -> None:
        """Tell Home Assistant of a board the first time the leader hears of it; a name no
        Hearth identity can have (agent/identity.py) gets no device."""
        if (self.discovery is None or board in self._announced_boards
                or not re.fullmatch(NAME_PATTERN, board)):
            return
        self._announced_boards.add(board)
        self.discovery.announce(*board_discovery(self.site, self.module, board))

    def _on_status(self, message) -> None:
        board = self._board_of(message.topic)
        if board is None:
            return
        try:
            text = message.text()
        except MessageError:
            self.rejected_messages += 1
            return
        if self.tracker.on_status(self.clock(), board, text):
            self._availability_changed = True
        self._announce(board)

    def _on_state(self, message) -> None:
        board = self._board_of(message.topic)
        if board is None:
            return
        try:
            state = checked_state(message.data(), message.retained)
        except MessageError as error:  # BoardStateError is one
            self._reject(board, "state", str(error))
            return
        self._announce(board)
        view = self.tracker.view(board)
        was_usable = view.usable()
        notes = self.tracker.on_state(self.clock(), board, state)
        if "late" in notes:
            return
        if view.usable() != was_usable:
            # re-split at once only when the board joins or leaves the split: a mode change
            # that keeps it usable (NORMAL <-> LIMITED) waits for the next period, or a module
            # of flapping boards would send a whole round per state message
            self._availability_changed = True
        streak = not self.ledger.rejecting(board)
        problem = self.ledger.board_sample(board, state["boot"], state, self.wall_clock())
        if problem is not None and streak:
            self.log.warning("%s/%s: energy from %s not counted: %s", self.site, self.module,
                             board, problem)
            self._event("energy_rejected", board, f"energy report from board {board}: "
                        f"{problem}. Check the board's power sensor and energy.json")

    def _on_event(self, message) -> None:
        board = self._board_of(message.topic)
        if board is None:
            return
        try:
            envelope = checked_envelope(message.data())
        except MessageError as error:
            self._reject(board, "event", str(error))
            return
        self.tracker.on_event(self.clock(), board, envelope)

    def _on_budget(self, message) -> None:
        try:
            budget = finite_number(message.data().get("budget_w"))
        except MessageError:
            budget = None
        if budget is None or not 0 <= budget <= MODULE_BUDGET_MAX_W:
            self.rejected_messages += 1
            self.log.warning("%s: budget rejected (a number from 0 to %g W expected), keeping "
                             "%.1f W", message.topic, MODULE_BUDGET_MAX_W, self.budget_w)
            return
        self.budget_w = budget

    # -- the work -------------------------------------------------------------------------

    def redistribute(self, now: float) -> None:
        """Split the electric budget over the usable boards and send every online board its
        setpoint; boards not given a share get their floor, which keeps the heartbeat going."""
        self._availability_changed = False
        self.resplits += 1
        usable = []
        for view in self.tracker.usable():
            capacity = capacity_from_state(view.board, view.state)
            if capacity is not None:
                usable.append(capacity)
        budget = 0.0 if self.interlock.state.active else self.electric_budget_w
        self.split = self.splitter.split(budget, usable)
        for view in self.tracker.boards.values():
            if view.status != "online":
                continue
            setpoint = self.split.setpoints_w.get(view.board)
            if setpoint is None:
                setpoint = finite_number(view.state.get("min_w"))
            if setpoint is not None:
                self.link.publish(f"{self.topics['setpoint']}/{view.board}",
                                  {"setpoint_w": round(setpoint, 4)}, qos=1, keep=False)

    def react(self, now: float) -> None:
        """Between ticks: re-split at once when a board's availability changed."""
        if self._availability_changed:
            self.redistribute(now)

    def tick(self, now: float) -> None:
        """One leader period."""
        for board in self.tracker.check(now):
            self.log.warning("%s: no state for %.0f s; counted as silent", board,
                             self.settings.silence_timeout_s)
        self.readings = self.read_module()
        state, changed = self.interlock.update(now, self.readings.flow_l_per_min,
                                               self.readings.oil_c)
        if changed or not self._interlock_published:
            self.link.publish(self.topics["interlock"], state.payload(), qos=1, retain=True)
            self._interlock_published = True
        online_power = [finite_number(v.state.get("power_w"))
                        for v in self.tracker.boards.values()
                        if v.status == "online"]
        electric_w = sum(p for p in online_power if p is not None) if online_power else None
        heat = self.meter.update(now, self.readings.inlet_c, self.readings.outlet_c,
                                 self.readings.flow_l_per_min, electric_w)
        self.ledger.meter_sample(now, heat.heat_w)
        self.electric_budget_w = self.trim.update(now, self.budget_w, heat.heat_w)
        self.redistribute(now)
        self._save_ledger(now, force=False)  # before the totals go out (ledger.py: promise)
        self.snapshot = self.state_payload(electric_w)
        self.link.publish(self.topics["state"], self.snapshot, qos=0)

    def _save_ledger(self, now: float, force: bool) -> None:
        """A full or failing SD card costs the ledger its latest minutes, never the leader."""
        if self.store is None:
            return
        try:
            self.ledger.save_if_due(now, self.store, force=force)
        except OSError as error:
            self.log.warning("%s/%s: energy ledger not saved (%s); the totals are kept in "
                             "memory and saved again next period; check the SD card",
                             self.site, self.module, error)

    def state_payload(self, electric_w: float | None) -> dict[str, Any]:
        usable = [capacity_from_state(v.board, v.state) for v in self.tracker.usable()]
        usable = [c for c in usable if c is not None]
        # without a state store nothing outlives the leader, so there is no file to promise
        totals = (self.ledger.reported_totals_wh() if self.store is not None
                  else self.ledger.totals_wh())
        heat = self.meter.last
        return {
            "budget_w": self.budget_w,
            "electric_budget_w": self.electric_budget_w,
            "setpoint_w": self.split.total_w,
            "unallocated_w": self.split.unallocated_w,
            "capacity_w": sum(c.max_w for c in usable),
            "floor_w": sum(c.min_w for c in usable),
            "power_w": electric_w,
            "heat_w": heat.heat_w,
            "efficiency": heat.efficiency,
            "water_in_c": self.readings.inlet_c,
            "water_out_c": self.readings.outlet_c,
            "flow_l_per_min": self.readings.flow_l_per_min,
            "oil_c": self.readings.oil_c,
            "interlock": self.interlock.state.payload(),
            "boards_online": sum(v.status == "online" for v in self.tracker.boards.values()),
            "boards_usable": len(usable),
            "boards_by_mode": self._boards_by_mode(),
            "energy_electric_wh": totals["electric"],
            "energy_heat_wh": totals["heat"],
            "energy_heat_metered_wh": self.ledger.module_heat_metered_wh,
            "energy_reset": self.ledger.reset_reason,
            "rejected_messages": self.rejected_messages,
            "boards": {
                v.board: {"status": v.status, "mode": v.mode, "faults": list(v.faults),
                          "setpoint_w": self.split.setpoints_w.get(v.board),
                          "power_w": finite_number(v.state.get("power_w")),
                          "restarts": v.restarts, "lost_states": v.lost_states,
                          "lost_events": v.lost_events,
                          "rejected_states": v.rejected_states,
                          "rejected_events": v.rejected_events, "rejection": v.rejection,
                          "rejected_energy": self.ledger.boards[v.board].rejected
                          if v.board in self.ledger.boards else 0,
                          "energy_rejection": self.ledger.boards[v.board].rejection
                          if v.board in self.ledger.boards else None,
                          "energy_electric_wh": self.ledger.boards[v.board].total_wh["electric"]
                          if v.board in self.ledger.boards else 0.0,
                          "energy_heat_wh": self.ledger.boards[v.board].total_wh["heat"]
                          if v.board in self.ledger.boards else 0.0}
                for v in sorted(self.tracker.boards.values(), key=lambda v: v.board)},
        }

    def _boards_by_mode(self) -> dict[str, int]:
        """Online boards counted by their mode (Home Assistant's module device shows them)."""
        counts: dict[str, int] = {}
        for view in self.tracker.boards.values():
            if view.status == "online" and view.mode is not None:
                counts[view.mode] = counts.get(view.mode, 0) + 1
        return dict(sorted(counts.items()))

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Tick on deadlines that never drift; between them, handle messages as they come."""
        next_s = self.clock()
        while not should_stop():
            self.link.poll(timeout_s=max(0.0, min(next_s - self.clock(), 0.05)))
            now = self.clock()
            self.react(now)
            if now >= next_s:
                self.tick(now)
                next_s += self.settings.period_s
                if next_s <= now:
                    next_s = now + self.settings.period_s

    def close(self) -> None:
        """Keep the ledger (a clean stop loses nothing)."""
        self._save_ledger(self.clock(), force=True)
