"""The board's updater: takes `cmd/update`, installs into the other slot, tries it once, and
commits it only when the health gate passes; otherwise the board boots its old slot again and
says why. One per board (`hearth update-board run`, root, hearth-updater.service).

The steps, each recorded on the data partition before it can be interrupted
(agent/update/trial_record.py) and reported on the retained `update` topic (docs/mqtt.md):

    idle --cmd/update--> installing --installed--> trial (reboot with tryboot)
    trial, on the trial slot --gate passes--> committed (rauc status mark-good)
    trial, on the trial slot --gate fails--> verdict recorded, mark-bad, plain reboot
    trial, booted on the old slot --> rolled_back (the recorded reason, or "no verdict")
    installing, at a boot --> failed (the install was cut short)

The updater talks to the slots through `Slots` (agent/update/slots.py): RAUC on a Pi or in
the VM, SimulatedSlots for simulated boards, the same logic above both. Everything runs on
the caller's thread in `poll()` except the install, which runs on a worker thread whose only
output is its result. A command is decoded once, by the board's own CommandIntake (the
agent's), and a command that cannot be used is answered `rejected` and changes nothing.
"""

import collections
import dataclasses
import logging
import queue
import re
import threading
import time
from typing import Any, Callable

from agent.errors import MessageError, UpdateError, UpdateRefusedError
from agent.mqtt.board_link import (
    UPDATE_COMMAND, CommandIntake, command_id_of, command_reply)
from agent.mqtt.envelope import printable
from agent.mqtt.link import Link, Message
from agent.mqtt.topics import BoardTopics
from agent.update.health_gate import PASS, GateSettings, HealthGate, ObservedState
from agent.update.slots import Bundle, ServiceFacts, Slots, other_slot, parse_version
from agent.update.trial_record import VERDICT_BAD, TrialRecord, TrialRecords

COMMAND = UPDATE_COMMAND
NO_VERDICT = ("the trial ended without a verdict: a power cut, crash or watchdog reset after "
              "the install, before or during the trial boot; the board runs its old slot again")
URL_MAX = 2048
URL_PATTERN = re.compile(r"https?://[!-~]+")
"""http(s), then printable ASCII without spaces: what RAUC's streaming takes."""
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
ARGS = ("url", "version", "force", "sha256", "size_bytes")
FLUSH_S = 5.0
"""How long the updater waits for its report to reach the broker before a reboot."""
REMEMBERED_REPLIES = 16


def decode_update_args(args: dict[str, Any]) -> tuple[Bundle, bool]:
    """The bundle and force flag of `cmd/update`'s args, or MessageError naming the key."""
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise MessageError(f"unknown argument {printable(unknown[0])[:40]!r}; update takes "
                           f"{', '.join(ARGS)}")
    url, version = args.get("url"), args.get("version")
    if not (isinstance(url, str) and len(url) <= URL_MAX and URL_PATTERN.fullmatch(url)):
        raise MessageError(f"'url' must be an http:// or https:// URL of printable characters, "
                           f"at most {URL_MAX} long (got {printable(repr(url))[:60]})")
    try:
        parse_version(version)
    except ValueError:
        raise MessageError(f"'version' must be dotted numbers like 1.2.0 (got "
                           f"{printable(repr(version))[:40]})")
    force = args.get("force", False)
    if not isinstance(force, bool):
        raise MessageError(f"'force' must be true or false (got {printable(repr(force))[:40]})")
    sha256 = args.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and SHA256_PATTERN.fullmatch(sha256)):
        raise MessageError(f"'sha256' must be 64 lowercase hex digits (got "
                           f"{printable(repr(sha256))[:40]})")
    size = args.get("size_bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise MessageError(f"'size_bytes' must be a positive whole number (got {size!r})")
    return Bundle(url, version, sha256, size), force


class Updater:
    """One board's updater. start() once, then poll() about once a second (or run())."""

    def __init__(self, slots: Slots, link: Link, topics: BoardTopics, records: TrialRecords,
                 gate_settings: GateSettings, agent_service: Callable[[], ServiceFacts],
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None):
        self.slots = slots
        self.link = link
        self.topics = topics
        self.records = records
        self.gate_settings = gate_settings
        self.agent_service = agent_service
        self.clock = clock
        self.wall_clock = link.envelope.wall_clock
        self.log = log or logging.getLogger("hearth.update")
        self.intake = CommandIntake(self.wall_clock)
        self.record = TrialRecord()
        self.progress_pct: int | None = None
        self.gate: HealthGate | None = None
        self.observed: ObservedState | None = None
        """The board's newest `state` off the broker: what the gate judges."""
        self._installing: threading.Thread | None = None
        self._install_results: queue.SimpleQueue[UpdateError | None] = queue.SimpleQueue()
        self._progress_seen: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._published: dict[str, Any] | None = None
        self._replies: collections.OrderedDict[str, tuple[str, dict]] = (
            collections.OrderedDict())

    # -- the steps ---------------------------------------------------------------------------

    def start(self) -> None:
        """Find out what this boot is (a trial? after one?) and report it; take commands."""
        self.link.subscribe(self.topics.command(COMMAND), self._on_command)
        self.link.subscribe(self.topics.state, self._on_state)
        self.link.start()
        self._boot()

    def poll(self) -> None:
        """Messages in, the install's result, the gate's verdict, the report out."""
        self.link.poll()
        while not self._progress_seen.empty():
            self.progress_pct = self._progress_seen.get_nowait()
        if not self._install_results.empty():
            self._installed(self._install_results.get_nowait())
        if self.gate is not None:
            self._judge()
        self._report()

    def run(self, stop: threading.Event, period_s: float = 1.0) -> None:
        self.start()
        while not stop.wait(period_s):
            self.poll()

    def close(self) -> None:
        self.link.close()

    def _boot(self) -> None:
        """Called at start and after each (simulated) reboot: what the record and the booted
        slot say about the last update."""
        self.gate, self.observed, self.progress_pct = None, None, None
        booted = self.slots.booted()
        read = self.records.read()
        if read.problem is not None:
            self._damaged_record(read.problem, booted.slot, booted.tryboot)
            return
        record = read.record or TrialRecord()
        if record.state == "installing":
            self._enter("failed", record, reason=(
                f"the install of {record.target} was cut short (power cut, crash or reboot) "
                f"before it finished; slot {other_slot(booted.slot)} holds nothing usable, the "
                "board runs its old slot; send the update again"))
        elif record.state == "trial" and booted.slot == record.trial_slot:
            if not booted.tryboot:  # mark-good committed it before the record said so
                self._enter("committed", record, reason=None)
            elif record.verdict == VERDICT_BAD:  # the reboot after mark-bad did not happen
                self._fail_trial(record.reason or NO_VERDICT)
            else:
                self.record = record
                self.gate = HealthGate(self.gate_settings, booted.at_s)
                self.log.info("trial boot of slot %s (Hearth %s): health gate started, %.0f s "
                              "window", booted.slot, booted.version,
                              self.gate_settings.window_s)
        elif record.state == "trial":
            reason = record.reason if record.verdict == VERDICT_BAD else NO_VERDICT
            self._enter("rolled_back", record, reason=reason)
        else:
            self.record = record
        self._note_other_slot()
        self._report()

    def _damaged_record(self, problem: str, slot: str, tryboot: bool) -> None:
        """Fail closed: no commit without a readable record; the damaged file kept aside."""
        aside = self.records.keep_aside(self.wall_clock())
        self.log.error("%s (%s)", problem, aside)
        if tryboot:
            self.record = TrialRecord(trial_slot=slot, from_slot=other_slot(slot))
            self._fail_trial(f"{problem} ({aside}); a trial is never committed without its "
                             "record")
            return
        self._enter("failed", TrialRecord(), reason=(
            f"{problem} ({aside}); the board runs its booted slot, nothing was committed"))
        self._note_other_slot()
        self._report()

    def _enter(self, state: str, record: TrialRecord, **changes: Any) -> None:
        self.record = dataclasses.replace(record, state=state, since_ts=self.wall_clock(),
                                          **changes)
        self.records.write(self.record)
        self.log.info("update %s: %s%s", state, self.record.target,
                      f" ({self.record.reason})" if self.record.reason else "")

    def _note_other_slot(self) -> None:
        try:
            other = self.slots.other()
        except UpdateError as error:
            self.log.warning("the other slot is unknown: %s", error)
            return
        facts = dict(other_slot=other.slot, other_version=other.version,
                     other_status=other.boot_status)
        if any(getattr(self.record, key) != value for key, value in facts.items()):
            self.record = dataclasses.replace(self.record, **facts)
            self.records.write(self.record)

    def _install(self, bundle: Bundle, force: bool) -> None:
        """The worker thread: its only outputs are the progress and result queues."""
        try:
            self.slots.install(bundle, self._progress_seen.put, force)
            self._install_results.put(None)
        except UpdateError as error:
            self._install_results.put(error)
        except Exception as error:  # a bug must still end the install as failed
            self.log.exception("the install failed unexpectedly")
            self._install_results.put(UpdateError(f"the install failed: {error!r}"))

    def _installed(self, error: UpdateError | None) -> None:
        self._installing = None
        if error is not None:
            state = "refused" if isinstance(error, UpdateRefusedError) else "failed"
            self._enter(state, self.record, reason=printable(str(error)))
            self.progress_pct = None
            self._note_other_slot()
            return
        booted = self.slots.booted()
        self._enter("trial", self.record, reason=None, verdict=None,
                    from_slot=booted.slot, trial_slot=other_slot(booted.slot))
        self.progress_pct = 100
        self._reboot(self.slots.reboot_to_trial, "reboot into the trial slot")

    def _judge(self) -> None:
        verdict = self.gate.check(self.clock(), self.agent_service(), self.observed)
        if verdict is None:
            return
        self.gate = None
        if verdict != PASS:
            self._fail_trial(verdict)
            return
        try:
            self.slots.mark_good()
        except UpdateError as error:
            self._fail_trial(f"the health gate passed but the commit failed: {error}")
            return
        self._enter("committed", self.record, reason=None)
        self._note_other_slot()

    def _fail_trial(self, reason: str) -> None:
        """The verdict first (a power cut after it still reports it), then mark-bad and a
        plain reboot: the firmware boots the committed slot."""
        self.gate = None
        self._enter("trial", self.record, verdict=VERDICT_BAD, reason=reason)
        self.log.error("trial failed: %s; marking the slot bad and rebooting into the old "
                       "one", reason)
        try:
            self.slots.mark_bad()
        except UpdateError as error:  # the reboot still ends the trial: tryboot is once
            self.log.error("%s; rebooting anyway", error)
        self._reboot(self.slots.reboot, "reboot into the old slot")

    def _reboot(self, reboot: Callable[[], None], what: str) -> None:
        """Report, wait for the report to reach the broker, reboot; after a simulated reboot,
        start over as a new boot would."""
        self._report()
        deadline_s = time.monotonic() + FLUSH_S
        while not self.link.idle() and time.monotonic() < deadline_s:
            self.link.poll(0.05)
        try:
            reboot()
        except UpdateError as error:
            self._enter("failed", self.record, reason=f"could not {what}: {error}")
            self._report()
            return
        self._boot()

    # -- in ----------------------------------------------------------------------------------

    def _on_state(self, message: Message) -> None:
        try:
            payload = message.data()
        except MessageError as error:
            self.log.warning("the board's state was unreadable: %s", error)
            return
        if not message.retained:
            self.observed = ObservedState(payload, self.clock())

    def _on_command(self, message: Message) -> None:
        """Exactly one reply per command taken; never raises."""
        try:
            reply = self._answer(message)
        except Exception as error:
            self.log.exception("cmd/update failed")
            reply = command_reply(command_id_of(message), COMMAND, False,
                                  f"update failed: {type(error).__name__}: {error}; see the "
                                  "board's journal (hearth-updater.service)")
        if reply is not None:
            self.link.publish(self.topics.reply, reply, qos=1)

    def _answer(self, message: Message) -> dict | None:
        try:
            taken = self.intake.take(message)
        except MessageError as error:
            return command_reply(command_id_of(message), COMMAND, False, str(error))
        if taken is None:
            return None
        asked = repr(sorted(taken.args.items()))
        remembered = self._replies.get(taken.id)
        if remembered is not None:
            if remembered[0] == asked:
                return remembered[1]
            return command_reply(taken.id, COMMAND, False, "duplicate id: this id was used "
                                 "for another command, so this one is not run; give each "
                                 "command an id of its own")
        reply = self._decide(taken.id, taken.args)
        self._replies[taken.id] = (asked, reply)
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)
        return reply

    def _decide(self, command_id: str, args: dict[str, Any]) -> dict:
        try:
            bundle, force = decode_update_args(args)
        except MessageError as error:
            return command_reply(command_id, COMMAND, False, str(error))
        if self._installing is not None or self.gate is not None or self.record.state in (
                "installing", "trial"):
            return command_reply(command_id, COMMAND, False, (
                f"an update to {self.record.target} is under way ({self.record.state}); "
                "this one is not started, send it again when that one has ended"))
        booted = self.slots.booted()
        wanted, installed = parse_version(bundle.version), parse_version(booted.version)
        if wanted == installed and not force:
            return command_reply(command_id, COMMAND, False, (
                f"Hearth {booted.version} is already installed (slot {booted.slot}); nothing "
                "to do, send force to install it again"))
        if wanted < installed and not force:
            reason = (f"bundle {bundle.version} is older than the installed {booted.version}; "
                      "refused, send it with force to downgrade")
            self._enter("refused", self.record, target=bundle.version, reason=reason)
            return command_reply(command_id, COMMAND, False, reason)
        self._enter("installing", self.record, target=bundle.version, reason=None,
                    verdict=None, from_slot=booted.slot, trial_slot=None)
        self.progress_pct = 0
        self._installing = threading.Thread(target=self._install, args=(bundle, force),
                                            name=f"update-{self.topics.board}", daemon=True)
        self._installing.start()
        return command_reply(command_id, COMMAND, True, "", {
            "state": "installing", "target": bundle.version})

    # -- out ---------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The `update` topic's payload (docs/mqtt.md), without the envelope."""
        booted = self.slots.booted()
        record = self.record
        return {"installed": booted.version, "slot": booted.slot, "state": record.state,
                "target": record.target,
                "progress_pct": self.progress_pct if record.state in (
                    "installing", "trial") else None,
                "reason": record.reason, "since": record.since_ts}

    def _report(self) -> None:
        """Publish the report when it changed: retained, so the site reads it at any time."""
        payload = self.report()
        if payload != self._published:
            self._published = payload
            self.link.publish(self.topics.update, payload, qos=1, retain=True)
