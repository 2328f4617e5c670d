"""The site's rollout of one bundle to its boards (docs/updates.md, "Rolling out from the site"):
one canary board, then a share of each module, then the rest, never more boards of a module at
once than the module can lose while still meeting its budget, and a pause at the first failure.

Why it is planned this way: a board being updated installs, reboots and sits in its trial,
and for all of that time the module counts it as lost. So a board of a module is sent
`cmd/update` only while the boards of that module that are heating and not being updated can
still draw the module's budget at their `max_w` (what each board says it can draw now, on its
own `state`); the budget is the larger of the heat budget and the trimmed electric budget on
the leader's `leader/state`. A module whose leader or boards have not been heard recently
gets no new update: what is not known is not assumed.

What a board is doing comes from its retained `update` topic (the board's updater publishes it,
docs/mqtt.md) and its `reply`; both are decoded once, here, and what cannot be represented is
rejected and counted. A message counts for a board only when it is newer than the last one seen
before its command was sent (another boot id, or a later seq), so a retained message from an
earlier update is never taken for this one's answer.

The rollout's record (the bundle, the plan, each board's progress) is a state file written
atomically at each change of a board's status, so a rollout stopped (a reboot of the site box,
Ctrl-C) goes on where it was with the same plan; a record that cannot be read is refused, and
a new rollout needs it moved aside. Progress goes out retained on `update/state`.
"""

import dataclasses
import logging
import math
import time
import uuid
from typing import Any, Callable

from agent.errors import MessageError, UpdateError
from agent.leader.board_state import checked_state
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER, ROOT
from agent.persist import StateStore

RECORD_NAME = "update-rollout.json"
RECORD_VERSION = 1
UPDATE_STATES = ("idle", "installing", "trial", "committed", "rolled_back", "failed", "refused")
BUSY_STATES = frozenset({"installing", "trial"})
FAILED_STATES = frozenset({"rolled_back", "failed", "refused"})
HEATING_MODES = frozenset({"NORMAL", "LIMITED"})
TEXT_MAX = 512
VERSION_MAX = 32
BUDGET_MAX_W = 100_000.0
"""A module budget beyond this is not one (the leader refuses it too)."""
PUBLISH_EVERY_S = 1.0
"""Progress changes (install percentages) go out at most this often; status changes at once."""

# A board's status in the rollout's record.
PENDING, SENT, DONE, FAILED, SKIPPED = "pending", "sent", "done", "failed", "skipped"
FINISHED = frozenset({DONE, SKIPPED})


@dataclasses.dataclass(frozen=True)
class BoardUpdate:
    """A board's `update` topic, checked."""

    installed: str | None
    slot: str | None
    state: str
    target: str | None
    progress_pct: int | None
    reason: str | None
    boot: str
    seq: int


def _text(data: dict[str, Any], key: str, max_chars: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise MessageError(f"'{key}' must be null or a string of 1 to {max_chars} characters "
                           f"(got {ascii(value)[:40]})")
    return value


def checked_update(data: dict[str, Any]) -> BoardUpdate:
    """A board's `update` payload (already through the envelope's decode) as a BoardUpdate;
    MessageError naming the field otherwise."""
    boot, seq = data.get("boot"), data.get("seq")
    if not isinstance(boot, str) or not 0 < len(boot) <= 128:
        raise MessageError(f"'boot' must be a string of 1 to 128 characters (got "
                           f"{ascii(boot)[:40]})")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise MessageError(f"'seq' must be an integer from 1 (got {ascii(seq)[:40]})")
    state = data.get("state")
    if state not in UPDATE_STATES:
        raise MessageError(f"'state' must be one of {', '.join(UPDATE_STATES)} (got "
                           f"{ascii(state)[:40]})")
    progress = data.get("progress_pct")
    if progress is not None and (isinstance(progress, bool) or not isinstance(progress, int)
                                 or not 0 <= progress <= 100):
        raise MessageError(f"'progress_pct' must be null or an integer from 0 to 100 (got "
                           f"{ascii(progress)[:40]})")
    slot = _text(data, "slot", 1)
    if slot not in (None, "A", "B"):
        raise MessageError(f"'slot' must be A, B or null (got {ascii(slot)})")
    return BoardUpdate(_text(data, "installed", VERSION_MAX), slot, state,
                       _text(data, "target", VERSION_MAX), progress,
                       _text(data, "reason", TEXT_MAX), boot, seq)


@dataclasses.dataclass(frozen=True)
class ModuleBudget:
    """What a module's `leader/state` says that the rollout needs."""

    budget_w: float
    boards: tuple[str, ...]


def checked_leader_state(data: dict[str, Any]) -> ModuleBudget:
    """The budget (the larger of budget_w and electric_budget_w) and the boards a leader
    knows of; MessageError naming the field otherwise."""
    budgets = []
    for key in ("budget_w", "electric_budget_w"):
        value = finite_number(data.get(key))
        if value is None or not 0 <= value <= BUDGET_MAX_W:
            raise MessageError(f"'{key}' must be a number from 0 to {BUDGET_MAX_W:g} (got "
                               f"{ascii(data.get(key))[:40]})")
        budgets.append(value)
    boards = data.get("boards")
    if not isinstance(boards, dict) or not all(isinstance(name, str) and 0 < len(name) <= 32
                                               for name in boards):
        raise MessageError("'boards' must be an object keyed by board names")
    return ModuleBudget(max(budgets), tuple(sorted(boards)))


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The bundle being rolled out, as the boards are told of it in `cmd/update`."""

    name: str
    url: str
    version: str
    sha256: str
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    share_pct: float = 25.0
    """The second wave: this share of each module (rounded up), after the canary."""
    board_timeout_s: float = 2700.0
    """A board sent its command and not heard from on `update` for this long has failed (an
    install, a reboot and a 15-minute health window fit well inside)."""
    heard_within_s: float = 30.0
    """A leader's budget and a board's state older than this are not used."""
    force: bool = False
    """Send `force` to the boards: a bundle older than what they run is installed anyway."""


def plan_waves(boards: dict[str, list[str]], share_pct: float) -> list[list[str]]:
    """`module/board` keys in waves: the first board of the first module alone (the canary),
    then `share_pct` of each module (rounded up, the canary counted in its module's share),
    then every other board. Modules and boards in name order, so a plan can be read ahead."""
    keys = {module: [f"{module}/{board}" for board in sorted(names)]
            for module, names in sorted(boards.items()) if names}
    if not keys:
        return []
    canary = next(iter(keys.values()))[0]
    share = []
    for module_keys in keys.values():
        count = math.ceil(len(module_keys) * share_pct / 100.0)
        share += [key for key in module_keys[:count] if key != canary]
    rest = [key for module_keys in keys.values() for key in module_keys
            if key != canary and key not in share]
    return [wave for wave in ([canary], share, rest) if wave]


def new_record(bundle: Bundle, waves: list[list[str]], force: bool,
               wall_s: float) -> dict[str, Any]:
    return {"bundle": dataclasses.asdict(bundle), "force": force, "state": "running",
            "reason": None, "started": wall_s, "waves": waves,
            "boards": {key: {"status": PENDING, "id": None, "sent": None, "seen": None,
                             "reason": None}
                       for wave in waves for key in wave}}


def resumed(record: dict[str, Any], retry_failed: bool) -> dict[str, Any]:
    """The record of a rollout run again: running, its skipped boards (and its failed ones when
    asked) pending again; boards still being updated stay so, and are not sent again."""
    record = {**record, "state": "running", "reason": None}
    again = {SKIPPED, FAILED} if retry_failed else {SKIPPED}
    record["boards"] = {key: ({**entry, "status": PENDING, "reason": None}
                              if entry["status"] in again else entry)
                        for key, entry in record["boards"].items()}
    return record


def read_record(store: StateStore) -> dict[str, Any] | None:
    """The rollout's record; None when there is none; UpdateError when it is damaged (a
    rollout is never restarted from a guess: the operator moves the file aside)."""
    if not store.path(RECORD_NAME).exists():
        return None
    read = store.read(RECORD_NAME, RECORD_VERSION, {})
    record = read.payload
    if read.ok:
        try:
            _check_record(record)
        except (KeyError, TypeError, ValueError) as error:
            read = dataclasses.replace(read, problem=f"its content is not a rollout ({error})")
    if not read.ok:
        raise UpdateError(f"the rollout record cannot be used: {read.problem}. Nothing was "
                          f"sent. Move {store.path(RECORD_NAME)} aside to start a new rollout "
                          "(`hearth update status` shows each board's version)")
    return record


def _check_record(record: dict[str, Any]) -> None:
    Bundle(**record["bundle"])
    if record["state"] not in ("running", "paused", "done"):
        raise ValueError(f"state {record['state']!r}")
    keys = [key for wave in record["waves"] for key in wave]
    if sorted(keys) != sorted(record["boards"]) or len(set(keys)) != len(keys):
        raise ValueError("its waves and boards differ")
    for entry in record["boards"].values():
        if entry["status"] not in (PENDING, SENT, DONE, FAILED, SKIPPED):
            raise ValueError(f"board status {entry['status']!r}")


@dataclasses.dataclass
class _Heard:
    """The newest checked message of one kind from one sender, and when it came."""

    value: Any
    at_s: float


class Rollout:
    """One bundle's rollout over a Link with the operator's account: `start()`, then `run()`
    (or `tick()` from a caller's loop) until `finished`."""

    def __init__(self, site: str, link, store: StateStore, record: dict[str, Any],
                 settings: RolloutSettings, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 log: logging.Logger | None = None):
        self.site = site
        self.link = link
        self.store = store
        self.record = record
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.log = log or logging.getLogger("hearth.update")
        self.bundle = Bundle(**record["bundle"])
        self.prefix = f"{ROOT}/{site}"
        self.updates: dict[str, _Heard] = {}
        """module/board -> its last checked `update` (BoardUpdate)."""
        self.states: dict[str, _Heard] = {}
        """module/board -> its last checked `state`."""
        self.budgets: dict[str, _Heard] = {}
        """module -> its leader's ModuleBudget."""
        self.rejected: dict[str, int] = {"update": 0, "reply": 0, "state": 0, "leader": 0}
        self.waiting: dict[str, str] = {}
        """module -> why no board of it may start now (for status and the log)."""
        self._sent_at_s: dict[str, float] = {}
        self._listening_since_s: float | None = None
        self._dirty = True
        """Something in the summary changed (progress goes out at most every PUBLISH_EVERY_S)."""
        self._urgent = True
        """A board's status or the rollout's changed: goes out at the next tick."""
        self._published_at_s: float | None = None

    # -- MQTT ---------------------------------------------------------------------------

    def start(self) -> None:
        self.link.subscribe(f"{self.prefix}/+/+/update", self._on_update)
        self.link.subscribe(f"{self.prefix}/+/+/reply", self._on_reply)
        self.link.subscribe(f"{self.prefix}/+/+/state", self._on_state)
        now = self._listening_since_s = self.clock()
        for key, entry in self.record["boards"].items():
            if entry["status"] == SENT:  # a rollout resumed: its silence counts from now
                self._sent_at_s[key] = now

    def _key(self, topic: str) -> tuple[str, str]:
        module, board = topic[len(self.prefix) + 1:].split("/")[:2]
        return module, board

    def _on_update(self, message) -> None:
        module, board = self._key(message.topic)
        try:
            update = checked_update(message.data())
        except MessageError as error:
            self._rejected("update", message.topic, error)
            return
        key = f"{module}/{board}"
        self.updates[key] = _Heard(update, self.clock())
        entry = self.record["boards"].get(key)
        if entry is None or entry["status"] != SENT or not self._newer(entry, update):
            return
        self._sent_at_s[key] = self.clock()  # heard: its silence counts from here
        self._dirty = True
        if update.target == self.bundle.version and update.state in FAILED_STATES:
            self._finish(key, FAILED, f"{update.state}: {update.reason or 'no reason given'}")
        elif (update.installed == self.bundle.version and update.state in ("committed", "idle")
              and update.target in (None, self.bundle.version)):
            self._finish(key, DONE, None)

    @staticmethod
    def _newer(entry: dict[str, Any], update: BoardUpdate) -> bool:
        seen = entry["seen"]
        return seen is None or update.boot != seen[0] or update.seq > seen[1]

    def _on_reply(self, message) -> None:
        module, board = self._key(message.topic)
        key = f"{module}/{board}"
        entry = self.record["boards"].get(key)
        if entry is None or entry["status"] != SENT:
            return
        try:
            data = message.data()
        except MessageError as error:
            self._rejected("reply", message.topic, error)
            return
        if data.get("id") != entry["id"] or data.get("cmd") != "update":
            return
        if data.get("status") == "rejected":
            reason = data.get("reason")
            reason = reason[:TEXT_MAX] if isinstance(reason, str) else "no reason given"
            self._finish(key, FAILED, f"cmd/update rejected: {reason}")

    def _on_state(self, message) -> None:
        module, board = self._key(message.topic)
        if board == LEADER:
            try:
                budget = checked_leader_state(message.data())
            except MessageError as error:
                self._rejected("leader", message.topic, error)
                return
            self.budgets[module] = _Heard(budget, self.clock())
            return
        try:
            state = checked_state(message.data(), message.retained)
        except MessageError as error:
            self._rejected("state", message.topic, error)
            return
        self.states[f"{module}/{board}"] = _Heard(state, self.clock())

    def _rejected(self, kind: str, topic: str, error: Exception) -> None:
        self.rejected[kind] += 1
        if self.rejected[kind] == 1 or self.rejected[kind] % 100 == 0:
            self.log.warning("%s rejected (%d so far): %s", topic, self.rejected[kind], error)

    # -- the plan -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Done, or paused with no board still in the middle of its update."""
        state = self.record["state"]
        return state == "done" or (state == "paused" and not self.in_flight())

    def in_flight(self) -> list[str]:
        return [key for key, entry in self.record["boards"].items() if entry["status"] == SENT]

    def _fresh(self, heard: _Heard | None, now: float) -> bool:
        return heard is not None and now - heard.at_s <= self.settings.heard_within_s

    def capacity_w(self, module: str, leaving: str | None, now: float) -> float:
        """What the module's boards can draw without `leaving` and the boards being updated:
        the max_w of each board heard recently, heating (NORMAL/LIMITED), without faults."""
        in_flight = set(self.in_flight()) | {leaving}
        total = 0.0
        for key, heard in self.states.items():
            if key.split("/")[0] != module or key in in_flight or not self._fresh(heard, now):
                continue
            state = heard.value
            if state["mode"] in HEATING_MODES and not state["faults"] and state["max_w"]:
                total += state["max_w"]
        return total

    def may_start(self, key: str, now: float) -> str | None:
        """None when `key` may be sent its command now; otherwise why not."""
        module = key.split("/")[0]
        budget = self.budgets.get(module)
        if not self._fresh(budget, now):
            return f"no leader/state from module {module} in {self.settings.heard_within_s:g} s"
        left_w = self.capacity_w(module, key, now)
        if left_w < budget.value.budget_w:
            return (f"module {module} could draw {left_w:.1f} W without {key.split('/')[1]} and "
                    f"the boards being updated, below its budget {budget.value.budget_w:.1f} W")
        return None

    def tick(self) -> None:
        """Time out silent boards, pause at a failure, send the boards that may go now."""
        now = self.clock()
        for key in self.in_flight():
            if now - self._sent_at_s.get(key, now) > self.settings.board_timeout_s:
                self._finish(key, FAILED, f"silent: no update from the board for "
                             f"{self.settings.board_timeout_s:.0f} s after cmd/update")
        if self.record["state"] == "running":
            self._advance(now)
        if self._urgent or (self._dirty and (self._published_at_s is None
                                             or now - self._published_at_s >= PUBLISH_EVERY_S)):
            self.publish()

    def _advance(self, now: float) -> None:
        boards = self.record["boards"]
        for wave in self.record["waves"]:
            if all(boards[key]["status"] in FINISHED for key in wave):
                continue
            waiting = {}
            for key in wave:
                if boards[key]["status"] != PENDING:
                    continue
                heard = self.updates.get(key)
                if (heard is not None and heard.value.installed == self.bundle.version
                        and heard.value.state not in BUSY_STATES):
                    self._finish(key, DONE, "already runs this version")
                    continue
                module = key.split("/")[0]
                if module in waiting:
                    continue
                if not self._fresh(self.budgets.get(module), now):
                    waiting[module] = (f"no leader/state from module {module} in "
                                       f"{self.settings.heard_within_s:g} s")
                    continue
                if not self._fresh(self.states.get(key), now):
                    if now - self._listening_since_s > self.settings.heard_within_s:
                        self._finish(key, SKIPPED, f"no state from it in the "
                                     f"{self.settings.heard_within_s:g} s before its turn; "
                                     "run the rollout again when it is back")
                        continue
                    waiting[module] = f"listening for {key}'s state"
                    continue
                why = self.may_start(key, now)
                if why is None:
                    self._send(key)
                else:
                    waiting[module] = why
            if waiting != self.waiting:
                for module, why in waiting.items():
                    if self.waiting.get(module) != why:
                        self.log.info("waiting: %s", why)
                self.waiting = waiting
                self._dirty = True
            return
        self.record["state"] = "done"
        self._urgent = True
        self._save()
        self.log.info("rollout of %s done", self.bundle.version)

    def _send(self, key: str) -> None:
        module, board = key.split("/")
        entry = self.record["boards"][key]
        heard = self.updates.get(key)
        entry.update(status=SENT, id=f"update-{uuid.uuid4().hex[:16]}", sent=self.wall_clock(),
                     seen=[heard.value.boot, heard.value.seq] if heard else None)
        self._sent_at_s[key] = self.clock()
        self._urgent = True
        self._save()  # before it goes out: a restart never sends a board a second command
        self.link.publish(f"{self.prefix}/{module}/{board}/cmd/update",
                          {"id": entry["id"], "by": "operator",
                           "args": {"url": self.bundle.url, "version": self.bundle.version,
                                    "force": bool(self.record["force"]),
                                    "sha256": self.bundle.sha256,
                                    "size_bytes": self.bundle.size_bytes}}, qos=1)
        self.log.info("%s: cmd/update %s sent", key, self.bundle.version)

    def _finish(self, key: str, status: str, reason: str | None) -> None:
        entry = self.record["boards"][key]
        entry.update(status=status, reason=reason)
        self._sent_at_s.pop(key, None)
        if status == SKIPPED:
            self.log.warning("%s skipped: %s", key, reason)
        if status == FAILED:
            self.log.error("%s failed to update to %s: %s", key, self.bundle.version, reason)
            if self.record["state"] == "running":
                self.record["state"] = "paused"
                self.record["reason"] = (
                    f"{key} failed: {reason}. No more boards are sent the update; check that "
                    f"board (`hearth update status`), then run the rollout again to go on")
                self.log.error("rollout paused: %s", self.record["reason"])
        self._save()
        self._urgent = True

    def _save(self) -> None:
        self.store.write(RECORD_NAME, RECORD_VERSION, self.record)

    # -- what it says ---------------------------------------------------------------------

    def summary(self, every_board: bool = False) -> dict[str, Any]:
        """The `update/state` payload: the rollout, its counts, and the boards sent, failed
        or skipped (`every_board`: all of them). Boards pending or done are only counted on
        the wire, so a site of hundreds of boards fits one message; each board's own `update`
        topic has its version."""
        counts = {status: 0 for status in (PENDING, SENT, DONE, FAILED, SKIPPED)}
        boards = {}
        for key, entry in sorted(self.record["boards"].items()):
            counts[entry["status"]] += 1
            if not every_board and entry["status"] in (PENDING, DONE):
                continue
            heard = self.updates.get(key)
            update = heard.value if heard is not None else None
            boards[key] = {"status": entry["status"], "reason": entry["reason"],
                           "installed": update.installed if update else None,
                           "update_state": update.state if update else None,
                           "progress_pct": update.progress_pct if update else None}
        waves = self.record["waves"]
        wave = next((index for index, keys in enumerate(waves, 1)
                     if any(self.record["boards"][key]["status"] not in FINISHED
                            for key in keys)), None)
        return {"state": self.record["state"], "version": self.bundle.version,
                "bundle": self.bundle.name, "reason": self.record["reason"],
                "wave": wave, "waves": len(waves), "counts": counts,
                "waiting": dict(sorted(self.waiting.items())), "boards": boards}

    def publish(self) -> None:
        self.link.publish(f"{self.prefix}/update/state", self.summary(), qos=1, retain=True)
        self._published_at_s = self.clock()
        self._dirty = self._urgent = False

    def run(self, should_stop: Callable[[], bool], tick_s: float = 0.5) -> None:
        """Poll and tick until finished or told to stop; the last state goes out either way."""
        next_s = self.clock()
        while not self.finished and not should_stop():
            self.link.poll(timeout_s=max(0.0, min(next_s - self.clock(), tick_s)))
            if self.clock() >= next_s:
                self.tick()
                next_s = self.clock() + tick_s
        self.publish()
