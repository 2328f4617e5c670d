"""The board's side of the MQTT contract (docs/mqtt.md): one BoardAgent on its site's broker.

Out: `state` every report period, `event` for every safety event, `reply` to every command, and
the Link's `status` (`online`, `offline` on a clean stop, `offline` as the Last Will). In: the
leader's setpoint and interlock, and `cmd/<name>`, run through the same command processor as the
technician's console so a command cannot mean something else over MQTT.

Setpoints and the interlock are applied in the agent's own tick (BoardAgent.inputs), on the
loop thread, before the supervisor runs: an interlock that arrived during a period makes that
period SAFE. Commands go to the console's CommandProcessor, which itself hands agent work to the
loop through its mailbox and waits for it; so they run on a command thread of this link
(started on the first command), never on the loop thread, which would wait for itself.

Every message in is decoded once (agent.mqtt.envelope) and checked here before anything acts on
it; what fails is rejected with a reason (a command's reply, the log, a rate-limited event) and
counted in `rejected`, and changes nothing. No handler raises into the control loop: a failure
in one is a rejection and an event. Commands are taken only as sent: never from a retained
message, never older than COMMAND_MAX_AGE_S, never twice for one (boot, seq).
"""

import collections
import dataclasses
import json
import logging
import math
import queue
import threading
import tomllib
import uuid
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

from agent.energy_meter import EnergyMeter
from agent.errors import MessageError
from agent.mqtt.envelope import finite_number, printable
from agent.mqtt.link import Link, LinkIo, LinkSettings, Message
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.persist import StateStore
from agent.safety.events import Event
from agent.water_heat import heat_w

COMMAND_SENDERS = ("leader", "operator")
COMMAND_ID_MAX = 64
REMEMBERED_REPLIES = 64
"""Replies kept to answer a retry of the same command id without running it twice."""
REMEMBERED_DELIVERIES = 256
"""(topic, boot, seq) of commands kept to drop a second delivery of one message."""
COMMAND_MAX_AGE_S = 60.0
"""A command whose `ts` is older than this (by the board's clock) is rejected, not run late: a
command waits nowhere on its way (the board's session is clean, a sender's backlog is marked
`hist`), so an old one is a replay or a retained leftover. A module constant rather than a
config key: boards keep NTP time, and a minute is far beyond their skew."""
UPDATE_COMMAND = "update"
"""Taken by the board's updater (agent/update/updater.py, its own process, as root), which
answers it itself; the agent leaves it alone so that a command gets one reply."""
REJECTION_EVENT_S = 60.0
"""At most one event per kind of rejected input in this time (the rest counted in it), so a
flood of bad messages cannot flood the outbox."""


class CommandResult(Protocol):
    ok: bool
    reason: str
    data: Any


class CommandRunner(Protocol):
    """What the MQTT path needs of the console's CommandProcessor (agent/console/commands.py)."""

    def execute(self, name: str, args: Any, source: str,
                confirmed: bool = False) -> CommandResult: ...


class BoardLink:
    def __init__(self, agent, link: Link, topics: BoardTopics,
                 commands: CommandRunner | None = None, energy_store: StateStore | None = None,
                 log: logging.Logger | None = None):
        self.agent = agent
        self.link = link
        self.topics = topics
        self.commands = commands
        self.log = log or link.log
        self.energy = EnergyMeter(energy_store, agent.report_period_s, agent.clock(), self.log)
        self._leader_seen: tuple[str, int] | None = None
        self.rejected: collections.Counter[str] = collections.Counter()
        """Messages rejected since start, by kind: command, setpoint, interlock."""
        self.duplicates = 0
        """Commands dropped as a second delivery of a (boot, seq) already taken."""
        self._rejection_events: dict[str, tuple[float, int]] = {}
        """kind -> (time of its last event, rejections counted then)"""
        self._events_waiting: queue.SimpleQueue[tuple[str, Any, str, str]] = queue.SimpleQueue()
        """Events found on the command thread, recorded on the loop thread by _poll."""
        self._replies: collections.OrderedDict[str, tuple[tuple, dict]] = (
            collections.OrderedDict())
        """command id -> (what was asked, the reply)"""
        self._replies_lock = threading.Lock()
        self.intake = CommandIntake(link.envelope.wall_clock)
        self._commands_waiting: queue.Queue[Message | None] = queue.Queue(maxsize=100)
        self._command_thread: threading.Thread | None = None
        agent.add_report_listener(self, self._on_report)
        agent.subscribe_events(self, self._on_event)
        energy_reset = self.energy.load(link.envelope.wall_clock())
        if energy_reset is not None:
            self._record("energy_counter_reset", None, energy_reset, "warning")
        agent.add_input(self, self._poll)
        link.problem_listeners.append(lambda problem: self._record(*problem, "error"))
        link.subscribe(topics.setpoint, self._on_setpoint)
        link.subscribe(topics.interlock, self._on_interlock)
        link.subscribe(topics.commands, self._queue_command)

    def close(self) -> None:
        """Stop cleanly: energy saved, `offline` published, unsent events kept for next time."""
        agent = self.agent
        agent.remove(self)
        if self._command_thread is not None:
            self._commands_waiting.put(None)
            self._command_thread.join(timeout=5.0)
            self._command_thread = None
        self.energy.save(agent.clock())
        self.link.close()

    # -- out -------------------------------------------------------------------------------

    def state_payload(self, report) -> dict[str, Any]:
        """docs/mqtt.md "Board state"; anything unknown is None (null), never a guess."""
        agent = self.agent
        status = agent.status()
        water_in_c, water_out_c, flow_l_per_min = (
            self._value(status.readings, agent.roles.get(role))
            for role in ("water_in", "water_out", "flow"))
        min_w, max_w = status.power_min_w, status.power_max_w
        if report.allowed_w is not None:
            max_w = min(max_w, report.allowed_w)
            min_w = min(min_w, max_w)
        return {
            "mode": report.mode, "setpoint_w": report.setpoint_w,
            "setpoint_source": status.setpoint_source, "power_w": report.power_w,
            "command_w": report.command_w, "selected": report.selected,
            "soc_c": report.soc_c, "oil_c": report.oil_c, "water_in_c": water_in_c,
            "water_out_c": water_out_c, "flow_l_per_min": flow_l_per_min,
            "heat_w": heat_w(flow_l_per_min, water_in_c, water_out_c),
            "min_w": min_w, "max_w": max_w, "faults": sorted(status.latched),
            "energy_electric_wh": self.energy.electric_wh,
            "energy_heat_wh": self.energy.heat_wh, "counter_reset": self.energy.counter_reset,
            "overruns": agent.timer.overruns,
        }

    @staticmethod
    def _value(readings, name: str | None) -> float | None:
        """A reading's value if it is valid and finite, else None."""
        reading = readings.get(name) if name else None
        if reading is None or not reading.ok or reading.value is None:
            return None
        return reading.value if math.isfinite(reading.value) else None

    def _on_report(self, report) -> None:
        """Called inside the agent's tick: a failure here is an event, never a raise."""
        try:
            self._publish_report(report)
        except Exception as error:
            self._handler_failed("the state report", error)

    def _publish_report(self, report) -> None:
        payload = self.state_payload(report)
        self.energy.count(report.time, report.power_w, payload["heat_w"])
        payload["energy_electric_wh"] = self.energy.electric_wh
        payload["energy_heat_wh"] = self.energy.heat_wh
        self.link.publish(self.topics.state, payload, qos=0)

    def _on_event(self, event: Event) -> None:
        """Called while the supervisor decides: it must never raise. A failure to publish an
        event is only logged (an event about it could fail the same way)."""
        try:
            self._publish_event(event)
        except Exception:
            self.log.exception("event %s not published; the agent goes on", event.cause)

    def _publish_event(self, event: Event) -> None:
        value = event.value
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # "nan" says more than null about a sensor's failure
        self.link.publish(self.topics.event, {
            "cause": event.cause, "value": value, "message": event.message,
            "mode": event.mode, "severity": event.severity, "mono": event.time}, qos=1)

    # -- in (run from _poll in the agent's tick) ----------------------------------------------

    def _poll(self) -> None:
        """The agent's input each tick: received messages handled, then the events found
        since (outbox refusals, failures on the command thread) recorded, on the loop thread."""
        try:
            self.link.poll()
            for cause, problem in self.link.outbox.take_problems():
                self._record(cause, None, problem, "error")
            while not self._events_waiting.empty():  # one consumer: the loop thread
                self._record(*self._events_waiting.get_nowait())
        except Exception as error:
            self._handler_failed("the message input", error)

    def _record(self, cause: str, value: Any, message: str, severity: str) -> None:
        self.agent.record(cause, value, message, severity)

    def _handler_failed(self, what: str, error: Exception, on_loop: bool = True) -> None:
        """A bug met in a handler: logged with its traceback, and an event."""
        self.log.error("%s failed on %s: %s", what, self.topics.board, printable(repr(error)),
                       exc_info=error)
        message = (f"{what} failed: {type(error).__name__}: {printable(str(error))[:200]}; the "
                   "board went on, and what came in changed nothing on purpose. Report it "
                   "with the journal")
        if not on_loop:
            self._events_waiting.put(("mqtt:handler_failed", what, message, "error"))
            return
        try:
            self._record("mqtt:handler_failed", what, message, "error")
        except Exception:
            self.log.exception("the event about it failed too")

    def _reject_input(self, kind: str, reason: str) -> None:
        """Count a rejected setpoint or interlock and say so: one event per kind per
        REJECTION_EVENT_S, with how many were rejected since the last one."""
        self.rejected[kind] += 1
        now = self.agent.clock()
        last_s, counted = self._rejection_events.get(kind, (None, 0))
        if last_s is not None and now - last_s < REJECTION_EVENT_S:
            return
        self._rejection_events[kind] = (now, self.rejected[kind])
        more = self.rejected[kind] - counted - 1
        message = (f"{kind} message rejected, nothing changed: {printable(reason)[:200]}"
                   + (f" ({more} more since the last report)" if more > 0 else "")
                   + "; check the leader, and who else can publish on its topics")
        self.log.warning("%s", message)
        self._record("mqtt:rejected", kind, message, "warning")

    def _on_setpoint(self, message: Message) -> None:
        try:
            self._take_setpoint(message)
        except MessageError as error:
            self._reject_input("setpoint", str(error))
        except Exception as error:
            self.rejected["setpoint"] += 1
            self._handler_failed("the leader's setpoint", error)

    def _take_setpoint(self, message: Message) -> None:
        if message.retained:
            raise MessageError("a retained setpoint is not the leader's word now (nor its "
                               "heartbeat); clear it with an empty retained message")
        data = message.data()
        if data.get("hist") is True:
            return  # a backlog of old setpoints says nothing about what the leader wants now
        boot, seq = data.get("boot"), data.get("seq")
        if isinstance(boot, str) and isinstance(seq, int) and not isinstance(seq, bool):
            seen = self._leader_seen
            if seen is not None and seen[0] == boot and seq <= seen[1]:
                return  # a duplicate or an older message overtaken by a newer one
            self._leader_seen = (boot, seq)
        self.agent.set_setpoint(data.get("setpoint_w"), "leader")

    def _on_interlock(self, message: Message) -> None:
        try:
            self._take_interlock(message)
        except MessageError as error:
            self._reject_input("interlock", f"{error} (interlock unchanged)")
        except Exception as error:
            self.rejected["interlock"] += 1
            self._handler_failed("the module interlock", error)

    def _take_interlock(self, message: Message) -> None:
        data = message.data()
        active, reason = data.get("active"), data.get("reason", "")
        if not isinstance(active, bool):
            raise MessageError(f"'active' must be true or false (got {_short(active)})")
        if active:
            self.agent.set_interlock(reason if isinstance(reason, str) and reason
                                     else "module interlock (the leader gave no reason)")
        else:
            self.agent.set_interlock("")

    def _queue_command(self, message: Message) -> None:
        if message.topic == self.topics.command(UPDATE_COMMAND):
            return
        if self._command_thread is None:
            self._command_thread = threading.Thread(
                target=self._run_commands, name=f"mqtt-commands-{self.topics.board}", daemon=True)
            self._command_thread.start()
        try:
            self._commands_waiting.put_nowait(message)
        except queue.Full:
            self.rejected["command"] += 1
            self.link.publish(self.topics.reply, command_reply(
                None, message.topic.rsplit("/", 1)[-1], False,
                "too many commands waiting on this board; send it again later"), qos=1)

    def _run_commands(self) -> None:
        while True:
            message = self._commands_waiting.get()
            if message is None:
                return
            self._on_command(message)

    def _on_command(self, message: Message) -> None:
        """Answer one command message: exactly one reply, or none for a second delivery of a
        (boot, seq) already taken. Runs on the command thread; never raises."""
        name = message.topic.rsplit("/", 1)[-1]
        try:
            reply = self._answer(name, message)
        except Exception as error:
            self.rejected["command"] += 1
            self._handler_failed(f"command {printable(name)[:40]}", error, on_loop=False)
            reply = command_reply(command_id_of(message), name, False,
                                  f"{name} failed: {type(error).__name__}: {error}; see the "
                                  "board's events and journal")
        if reply is None:
            return
        try:
            self.link.publish(self.topics.reply, reply, qos=1)
        except Exception as error:
            self._handler_failed(f"the reply to {printable(name)[:40]}", error, on_loop=False)

    def _answer(self, name: str, message: Message) -> dict | None:
        """The reply to a command, after running it if it may run; None to drop it."""
        try:
            taken = self.intake.take(message)
        except MessageError as error:
            self.rejected["command"] += 1
            return command_reply(command_id_of(message), name, False, str(error))
        if taken is None:
            self.duplicates += 1
            return None
        command_id, sender, args = taken
        asked = (name, sender, json.dumps(args, sort_keys=True))
        with self._replies_lock:
            remembered = self._replies.get(command_id)
        if remembered is not None:
            if remembered[0] == asked:
                return remembered[1]  # a retry: the first answer again, not a second run
            self.rejected["command"] += 1
            return command_reply(command_id, name, False, "duplicate id: this id was used for "
                                 "another command, so this one is not run; give each command "
                                 "an id of its own")
        if self.commands is None:
            self.rejected["command"] += 1
            return command_reply(command_id, name, False, "this board takes no commands over "
                                 "MQTT; use its console")
        result = self.commands.execute(name, args, sender, confirmed=True)
        data = result.data
        reply = command_reply(command_id, name, bool(result.ok), result.reason or "",
                              dict(data) if isinstance(data, dict) or hasattr(data, "keys")
                              else {})
        if not result.ok:
            self.rejected["command"] += 1
        with self._replies_lock:
            self._replies[command_id] = (asked, reply)
            while len(self._replies) > REMEMBERED_REPLIES:
                self._replies.popitem(last=False)
        return reply


class TakenCommand(NamedTuple):
    """A command that may run: its id, the sender's role and its arguments."""

    id: str
    sender: str
    args: dict


class CommandIntake:
    """How a board takes a command message (docs/mqtt.md "Commands"), for each process on the
    board that takes commands (the agent's BoardLink, the updater), so a command is checked
    the same way whoever runs it: run only as sent, once per (topic, boot, seq)."""

    def __init__(self, wall_clock: Callable[[], float]):
        self.wall_clock = wall_clock
        self._deliveries: collections.OrderedDict[tuple[str, str, int], None] = (
            collections.OrderedDict())

    def take(self, message: Message) -> TakenCommand | None:
        """The command, None for a second delivery of one already taken, or MessageError
        saying why it may not run (answer it with command_id_of(message))."""
        data = message.data()
        raw_id = data.get("id")
        if not self._first_delivery(message.topic, data):
            return None
        if message.retained:
            raise MessageError("the command was sent retained, and commands are never taken "
                               "from retained messages; send it without retain, and clear "
                               "the retained one with an empty retained message")
        if not (isinstance(raw_id, str) and 0 < len(raw_id) <= COMMAND_ID_MAX):
            raise MessageError(f"'id' must be a string of 1 to {COMMAND_ID_MAX} characters "
                               f"(got {_short(raw_id)})")
        sender = data.get("by")
        if sender not in COMMAND_SENDERS:
            raise MessageError(f"'by' must be one of {', '.join(COMMAND_SENDERS)} "
                               f"(got {_short(sender)})")
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise MessageError(f"'args' must be a JSON object (got {_short(args)})")
        if data.get("hist") is True:
            raise MessageError("the command waited in a backlog (hist); a command is only "
                               "run when it is sent, send it again if it still applies")
        self._check_age(data.get("ts"))
        return TakenCommand(raw_id, sender, args)

    def _first_delivery(self, topic: str, data: dict) -> bool:
        """Whether this (topic, boot, seq) is new; MessageError when the envelope lacks them.
        A sender counts seq per topic, so the topic is part of the key."""
        boot, seq = data.get("boot"), data.get("seq")
        if not isinstance(boot, str) or not boot or isinstance(seq, bool) or not isinstance(
                seq, int):
            raise MessageError(f"the envelope needs 'boot' (a string) and 'seq' (an integer); "
                               f"got {_short(boot)} and {_short(seq)}")
        key = (topic, boot, seq)
        if key in self._deliveries:
            return False
        self._deliveries[key] = None
        while len(self._deliveries) > REMEMBERED_DELIVERIES:
            self._deliveries.popitem(last=False)
        return True

    def _check_age(self, sent: Any) -> None:
        sent_s = finite_number(sent)
        if sent_s is None:
            raise MessageError(f"'ts' must be the sender's clock in Unix seconds (got "
                               f"{_short(sent)}); a command without it cannot be told from a "
                               "replay")
        age_s = self.wall_clock() - sent_s
        if age_s > COMMAND_MAX_AGE_S:
            raise MessageError(f"the command is {age_s:.0f} s old (sent at {sent_s:.0f}), older "
                               f"than {COMMAND_MAX_AGE_S:.0f} s, and is not run late; send it "
                               "again if it still applies, and check the sender's clock")


def _short(value: Any) -> str:
    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


def command_reply(command_id: str | None, name: str, accepted: bool, reason: str,
                  data: dict | None = None) -> dict:
    """docs/mqtt.md "Commands"; the reason is made printable, as it may quote what came in."""
    return {"id": command_id, "cmd": printable(name[:COMMAND_ID_MAX]),
            "status": "accepted" if accepted else "rejected",
            "reason": printable(reason) if reason or accepted else "rejected",
            "data": data or {}}


def command_id_of(message: Message) -> str | None:
    """The command's id if it has a usable one: to answer a command whose handling failed."""
    try:
        raw_id = message.data().get("id")
    except Exception:
        return None
    return raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= COMMAND_ID_MAX else None


@dataclasses.dataclass(frozen=True)
class BoardConnection:
    """What connect_board needs besides the agent: where, who, and where to keep things."""

    settings: LinkSettings
    topics: BoardTopics
    outbox_dir: Path
    wall_clock: Callable[[], float]
    boot: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    keep_ram: int = 256
    """Kept messages (events, replies) held in RAM before they spill to outbox_dir."""
    io: LinkIo | None = None
    """Runs the link's network I/O: a NetworkLoop shared by many boards in one process (the
    simulator); None: the link's own paho thread, as on a real board."""


def read_password(path: Path) -> str:
    """The broker password from `mqtt.password_file`: a one-line file, or the credentials TOML
    that scripts/provision writes (`[mqtt] password = ...`)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        password = tomllib.loads(text).get("mqtt", {}).get("password")
    except tomllib.TOMLDecodeError:
        password = None
    if isinstance(password, str):
        return password
    lines = text.splitlines()
    return lines[0] if lines else ""


def link_settings(mqtt) -> LinkSettings:
    """LinkSettings from the config's [mqtt] section (agent.config.Mqtt), for every role: its
    brokers in order (each `host:port`, the port filled in at load) and its login."""
    (host, port), *more = [_host_port(broker) for broker in mqtt.brokers]
    return LinkSettings(host=host, port=port, more_brokers=tuple(more),
                        keepalive_s=mqtt.keepalive_s, ca_file=mqtt.ca_file,
                        cert_file=mqtt.cert_file, key_file=mqtt.key_file, username=mqtt.username,
                        password=read_password(Path(mqtt.password_file))
                        if mqtt.password_file else "")


def _host_port(broker: str) -> tuple[str, int]:
    host, _, port = broker.rpartition(":")
    return host, int(port)


def connect_board(agent, connection: BoardConnection, commands: CommandRunner | None = None,
                  energy_store: StateStore | None = None) -> BoardLink:
    """Build the Link (with its Last Will) and the BoardLink, and start connecting."""
    link = Link(connection.settings, client_id=connection.topics.client_id,
                outbox=Outbox(connection.outbox_dir, keep_ram=connection.keep_ram), boot=connection.boot,
                wall_clock=connection.wall_clock, status_topic=connection.topics.status,
                io=connection.io)
    board_link = BoardLink(agent, link, connection.topics, commands, energy_store)
    link.start()
    return board_link
