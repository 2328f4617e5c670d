"""The board's side of the MQTT contract (docs/mqtt.md): one BoardAgent on its module's broker.

Out: `state` every report period, `event` for every safety event, `reply` to every command, and
the Link's `status` (`online`, `offline` on a clean stop, `offline` as the Last Will). In: the
leader's setpoint and interlock, and `cmd/<name>`, run through the same command processor as the
technician's console so a command cannot mean something else over MQTT.

Setpoints and the interlock are applied in the agent's own tick (BoardAgent.inputs), on the
loop thread, before the supervisor runs: an interlock that arrived during a period makes that
period SAFE. Commands go to the console's CommandProcessor, which itself hands agent work to the
loop through its mailbox and waits for it; so they run on a command thread of this link
(started on the first command), never on the loop thread, which would wait for itself.
"""

import collections
import dataclasses
import logging
import math
import queue
import threading
import tomllib
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

from agent.errors import MessageError
from agent.mqtt.link import Link, LinkSettings, Message, NetworkLoop
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.persist import StateStore
from agent.safety.events import Event

WATER_CP_J_PER_KG_K = 4180.0
WATER_KG_PER_L = 1.0
ENERGY_FILE = "energy.json"
ENERGY_VERSION = 1
ENERGY_SAVE_S = 900.0
"""Energy counters are written this often (and at a clean stop): at most 15 minutes of energy
lost to a power cut, and no steady stream of SD-card writes."""
COMMAND_SENDERS = ("leader", "operator")
COMMAND_ID_MAX = 64
REMEMBERED_REPLIES = 64
"""Replies kept to answer a QoS 1 re-delivery of the same command id without running it twice."""


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
        self.energy_store = energy_store
        self.log = log or link.log
        self.energy_electric_wh, self.energy_heat_wh = self._load_energy()
        self._last_report_s: float | None = None
        self._energy_saved_s = agent.clock()
        self._leader_seen: tuple[str, int] | None = None
        self._replies: collections.OrderedDict[tuple[str, str], dict] = (
            collections.OrderedDict())
        self._replies_lock = threading.Lock()
        self._commands_waiting: queue.Queue[Message | None] = queue.Queue(maxsize=100)
        self._command_thread: threading.Thread | None = None
        # The agent calls its publish callback each report period; we take it over and pass
        # every report on to the previous one (the terminal's state lines).
        self._previous_publish = agent.publish
        agent.publish = self._on_report
        agent.events.listeners.append(self._on_event)
        agent.inputs.append(link.poll)
        link.subscribe(topics.setpoint, self._on_setpoint)
        link.subscribe(topics.interlock, self._on_interlock)
        link.subscribe(topics.commands, self._queue_command)

    def close(self) -> None:
        """Stop cleanly: energy saved, `offline` published, unsent events kept for next time."""
        agent = self.agent
        if agent.publish == self._on_report:
            agent.publish = self._previous_publish
        if self._on_event in agent.events.listeners:
            agent.events.listeners.remove(self._on_event)
        if self.link.poll in agent.inputs:
            agent.inputs.remove(self.link.poll)
        if self._command_thread is not None:
            self._commands_waiting.put(None)
            self._command_thread.join(timeout=5.0)
            self._command_thread = None
        self._save_energy()
        self.link.close()

    # -- out -------------------------------------------------------------------------------

    def state_payload(self, report) -> dict[str, Any]:
        """docs/mqtt.md "Board state"; anything unknown is None (null), never a guess."""
        agent = self.agent
        water_in_c = self._reading("water_in")
        water_out_c = self._reading("water_out")
        flow_l_per_min = self._reading(agent.flow_reading)
        heat_w = None
        if None not in (water_in_c, water_out_c, flow_l_per_min):
            heat_w = (flow_l_per_min / 60.0 * WATER_KG_PER_L * WATER_CP_J_PER_KG_K
                      * (water_out_c - water_in_c))
        min_w, max_w = agent.setpoints.power_min_w, agent.setpoints.power_max_w
        if report.allowed_w is not None:
            max_w = min(max_w, report.allowed_w)
            min_w = min(min_w, max_w)
        return {
            "mode": report.mode, "setpoint_w": report.setpoint_w,
            "setpoint_source": agent.setpoints.status, "power_w": report.power_w,
            "command_w": report.command_w, "selected": report.selected,
            "soc_c": report.soc_c, "oil_c": report.oil_c, "water_in_c": water_in_c,
            "water_out_c": water_out_c, "flow_l_per_min": flow_l_per_min, "heat_w": heat_w,
            "min_w": min_w, "max_w": max_w, "faults": sorted(agent.supervisor.latched),
            "energy_electric_wh": self.energy_electric_wh,
            "energy_heat_wh": self.energy_heat_wh, "overruns": agent.timer.overruns,
        }

    def _reading(self, name: str | None) -> float | None:
        reading = self.agent.readings.get(name) if name else None
        if reading is None or not reading.ok or reading.value is None:
            return None
        return reading.value if math.isfinite(reading.value) else None

    def _on_report(self, report) -> None:
        if self._previous_publish is not None:
            self._previous_publish(report)
        payload = self.state_payload(report)
        self._count_energy(report.time, report.power_w, payload["heat_w"])
        payload["energy_electric_wh"] = self.energy_electric_wh
        payload["energy_heat_wh"] = self.energy_heat_wh
        self.link.publish(self.topics.state, payload, qos=0)

    def _on_event(self, event: Event) -> None:
        value = event.value
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # "nan" says more than null about a sensor's failure
        self.link.publish(self.topics.event, {
            "cause": event.cause, "value": value, "message": event.message,
            "mode": event.mode, "severity": event.severity, "mono": event.time}, qos=1)

    # -- in (run from link.poll in the agent's tick) ------------------------------------------

    def _on_setpoint(self, message: Message) -> None:
        try:
            data = message.data()
        except MessageError as error:
            self.log.warning("setpoint from the leader ignored: %s", error)
            return
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
            data = message.data()
        except MessageError as error:
            self.log.warning("module interlock message ignored (interlock unchanged): %s", error)
            return
        active, reason = data.get("active"), data.get("reason", "")
        if not isinstance(active, bool):
            self.log.warning("module interlock message without a true/false 'active' ignored "
                             "(interlock unchanged): %r", active)
            return
        if active:
            self.agent.set_interlock(reason if isinstance(reason, str) and reason
                                     else "module interlock (the leader gave no reason)")
        else:
            self.agent.set_interlock("")

    def _queue_command(self, message: Message) -> None:
        if self._command_thread is None:
            self._command_thread = threading.Thread(
                target=self._run_commands, name=f"mqtt-commands-{self.topics.board}", daemon=True)
            self._command_thread.start()
        try:
            self._commands_waiting.put_nowait(message)
        except queue.Full:
            self._reply(None, message.topic.rsplit("/", 1)[-1], False,
                        "too many commands waiting on this board; send it again later")

    def _run_commands(self) -> None:
        while True:
            message = self._commands_waiting.get()
            if message is None:
                return
            try:
                self._on_command(message)
            except Exception:
                self.log.exception("command on %s failed; the command thread goes on",
                                   message.topic)

    def _on_command(self, message: Message) -> None:
        name = message.topic.rsplit("/", 1)[-1]
        command_id: str | None = None
        try:
            data = message.data()
            raw_id = data.get("id")
            if isinstance(raw_id, str) and 0 < len(raw_id) <= COMMAND_ID_MAX:
                command_id = raw_id
            else:
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
        except MessageError as error:
            self._reply(command_id, name, False, str(error))
            return
        with self._replies_lock:
            remembered = self._replies.get((name, command_id))
        if remembered is not None:
            self.link.publish(self.topics.reply, remembered, qos=1)
            return
        if self.commands is None:
            self._reply(command_id, name, False, "this board takes no commands over MQTT; "
                        "use its console")
            return
        try:
            result = self.commands.execute(name, args, sender, confirmed=True)
        except Exception as error:  # the command path must never take the link down
            self.log.exception("command %s %s failed", name, command_id)
            self._reply(command_id, name, False, f"{name} failed: {type(error).__name__}: "
                        f"{error}; see the board's events and journal")
            return
        data = result.data
        self._reply(command_id, name, bool(result.ok), result.reason or "",
                    dict(data) if isinstance(data, dict) or hasattr(data, "keys") else {})

    def _reply(self, command_id: str | None, name: str, accepted: bool, reason: str,
               data: dict | None = None) -> None:
        reply = {"id": command_id, "cmd": name[:COMMAND_ID_MAX],
                 "status": "accepted" if accepted else "rejected",
                 "reason": reason if reason or accepted else "rejected", "data": data or {}}
        if command_id is not None:
            with self._replies_lock:
                self._replies[(name, command_id)] = reply
                while len(self._replies) > REMEMBERED_REPLIES:
                    self._replies.popitem(last=False)
        self.link.publish(self.topics.reply, reply, qos=1)

    # -- energy ----------------------------------------------------------------------------

    def _count_energy(self, now: float, power_w: float | None, heat_w: float | None) -> None:
        """Integrate over report periods; a gap (a stall, a restart) is not filled in."""
        last, self._last_report_s = self._last_report_s, now
        if last is None:
            return
        dt_s = now - last
        if not 0 < dt_s <= 3 * self.agent.report_period_s:
            return
        if power_w is not None and math.isfinite(power_w):
            self.energy_electric_wh += max(0.0, power_w) * dt_s / 3600.0
        if heat_w is not None:
            self.energy_heat_wh += max(0.0, heat_w) * dt_s / 3600.0
        if now - self._energy_saved_s >= ENERGY_SAVE_S:
            self._save_energy()

    def _load_energy(self) -> tuple[float, float]:
        if self.energy_store is None:
            return 0.0, 0.0
        read = self.energy_store.read(ENERGY_FILE, ENERGY_VERSION,
                                      {"electric_wh": 0.0, "heat_wh": 0.0})
        if read.problem and self.energy_store.path(ENERGY_FILE).exists():
            self.log.warning("energy counters unusable (%s); counting from zero", read.problem)
        values = []
        for key in ("electric_wh", "heat_wh"):
            value = read.payload.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            values.append(float(value) if ok and math.isfinite(value) and value >= 0 else 0.0)
        return values[0], values[1]

    def _save_energy(self) -> None:
        self._energy_saved_s = self.agent.clock()
        if self.energy_store is None:
            return
        try:
            self.energy_store.write(ENERGY_FILE, ENERGY_VERSION, {
                "electric_wh": self.energy_electric_wh, "heat_wh": self.energy_heat_wh})
        except OSError as error:
            self.log.warning("energy counters not saved: %s", error)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    network: NetworkLoop | None = None
    """A network thread shared by many boards in one process (the simulator); None: the
    link's own paho thread, as on a real board."""


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
    """LinkSettings from the config's [mqtt] section (agent.config.Mqtt)."""
    return LinkSettings(host=mqtt.host, port=mqtt.port, keepalive_s=mqtt.keepalive_s,
                        ca_file=mqtt.ca_file, cert_file=mqtt.cert_file, key_file=mqtt.key_file,
                        username=mqtt.username,
                        password=read_password(Path(mqtt.password_file))
                        if mqtt.password_file else "")


def connect_board(agent, connection: BoardConnection, commands: CommandRunner | None = None,
                  energy_store: StateStore | None = None) -> BoardLink:
    """Build the Link (with its Last Will) and the BoardLink, and start connecting."""
    link = Link(connection.settings, client_id=connection.topics.client_id,
                outbox=Outbox(connection.outbox_dir, keep_ram=connection.keep_ram), boot=connection.boot,
                wall_clock=connection.wall_clock, status_topic=connection.topics.status,
                network=connection.network)
    board_link = BoardLink(agent, link, connection.topics, commands, energy_store)
    link.start()
    return board_link
