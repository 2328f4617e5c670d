"""The site's rollout (agent/update/rollout.py, `hearth update`): the waves, the budget rule,
the pause at the first failure, the record that lets it go on, what it reads at the door, and
the acceptance test: a simulated module of 16 boards with the real leader and every board's
real updater on a real Mosquitto, one board failing its health gate."""

import dataclasses
import json
import os
import time

import pytest

from agent.errors import MessageError, UpdateError
from agent.mqtt import envelope
from agent.mqtt.link import Message
from agent.mqtt.topics import topic_matches
from agent.persist import StateStore
from agent.update.rollout import (FAILED, PENDING, RECORD_NAME, RECORD_VERSION, SENT, SKIPPED,
                                  Bundle, Rollout, RolloutSettings, checked_leader_state,
                                  checked_update, new_record, plan_waves, read_record, resumed)

SITE = "s1"
BUNDLE = Bundle("hearth-1.2.0.raucb", "http://site:8480/hearth-1.2.0.raucb", "1.2.0", "ab" * 32,
                1234)


def keys(module: str, count: int) -> list[str]:
    return [f"b{n:02d}" for n in range(1, count + 1)]


def test_the_plan_is_a_canary_then_a_share_of_each_module_then_the_rest():
    waves = plan_waves({"m2": keys("m2", 8), "m1": keys("m1", 16)}, 25.0)
    assert waves[0] == ["m1/b01"]
    assert waves[1] == ["m1/b02", "m1/b03", "m1/b04", "m2/b01", "m2/b02"]
    assert waves[2] == [f"m1/b{n:02d}" for n in range(5, 17)] + [
        f"m2/b{n:02d}" for n in range(3, 9)]
    assert sorted(sum(waves, [])) == sorted(
        [f"m1/{b}" for b in keys("m1", 16)] + [f"m2/{b}" for b in keys("m2", 8)])


def test_a_small_module_plans_no_empty_wave():
    assert plan_waves({"m1": ["b01"]}, 25.0) == [["m1/b01"]]
    assert plan_waves({"m1": ["b01", "b02"]}, 50.0) == [["m1/b01"], ["m1/b02"]]
    assert plan_waves({}, 25.0) == []


class WireLink:
    """What the rollout sees of a Link, fed messages encoded as they come off the wire."""

    def __init__(self):
        self.handlers = []
        self.sent = []

    def subscribe(self, pattern, handler):
        self.handlers.append((pattern, handler))

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, payload, retain))

    def poll(self, timeout_s=0.0):
        return 0

    def deliver(self, topic, payload, retained=False, seq=[0]):
        seq[0] += 1
        raw = payload if isinstance(payload, bytes) else envelope.encode(
            {"v": 1, "boot": "b", "seq": seq[0], "ts": 0.0, **payload})
        for pattern, handler in self.handlers:
            if topic_matches(pattern, topic):
                handler(Message(topic, raw, retained))

    def commands(self):
        return [(topic.split("/")[4], payload) for topic, payload, _ in self.sent
                if topic.endswith("/cmd/update")]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def board_state(mode="NORMAL", max_w=6.0):
    return {"mode": mode, "min_w": 2.0, "max_w": max_w, "power_w": 4.0, "faults": []}


def make_rollout(tmp_path, boards=4, budget_w=14.0, share=25.0):
    link, clock = WireLink(), Clock()
    waves = plan_waves({"m1": keys("m1", boards)}, share)
    store = StateStore(tmp_path)
    rollout = Rollout(SITE, link, store, new_record(BUNDLE, waves, False, 0.0),
                      RolloutSettings(share_pct=share, board_timeout_s=600.0), clock=clock,
                      wall_clock=lambda: 5.0)
    rollout.start()

    def hear(mode_by_board=None, budget=budget_w):
        for board in keys("m1", boards):
            mode = (mode_by_board or {}).get(board, "NORMAL")
            link.deliver(f"hearth/v1/{SITE}/m1/{board}/state", board_state(mode))
        link.deliver(f"hearth/v1/{SITE}/m1/leader/state",
                     {"budget_w": budget, "electric_budget_w": budget - 1,
                      "boards": {b: {} for b in keys("m1", boards)}})
    return rollout, link, clock, hear, store


def update(link, board, state, installed="1.1.0", target="1.2.0", reason=None, boot="u1",
           seq=1, retained=False):
    link.deliver(f"hearth/v1/{SITE}/m1/{board}/update",
                 envelope.encode({"v": 1, "boot": boot, "seq": seq, "ts": 0.0,
                                  "installed": installed, "slot": "A", "state": state,
                                  "target": target, "progress_pct": None, "reason": reason}),
                 retained)


def test_no_board_of_a_module_goes_while_the_rest_could_not_draw_its_budget(tmp_path):
    """Four boards of 6 W with a 14 W budget: one may be lost (18 W left), two may not (12 W)."""
    rollout, link, clock, hear, _ = make_rollout(tmp_path, boards=4, budget_w=14.0, share=50.0)
    hear()
    rollout.tick()
    assert [b for b, _ in link.commands()] == ["b01"]  # the canary alone
    update(link, "b01", "committed", installed="1.2.0", boot="new", seq=1)
    hear({"b01": "STARTING"})  # back, but not heating yet: it counts as lost
    rollout.tick()
    assert [b for b, _ in link.commands()] == ["b01"]
    assert "below its budget 14.0 W" in rollout.waiting["m1"]
    hear()  # b01 heats again: b02 (the 50 % wave) may go, and only it
    rollout.tick()
    assert [b for b, _ in link.commands()] == ["b01", "b02"]
    assert rollout.capacity_w("m1", None, clock()) == 18.0


def test_the_larger_of_the_heat_and_electric_budget_counts_and_silence_is_not_capacity(tmp_path):
    rollout, link, clock, hear, _ = make_rollout(tmp_path, boards=4, budget_w=18.0)
    hear()
    rollout.tick()
    assert len(link.commands()) == 1  # 18 W left of 24 W: exactly enough
    update(link, "b01", "committed", installed="1.2.0", boot="new", seq=1)
    clock.now += 31.0  # nobody heard for longer than heard_within_s
    rollout.tick()
    assert len(link.commands()) == 1
    assert "no leader/state from module m1" in rollout.waiting["m1"]


def test_the_command_carries_the_contracts_args_and_an_id(tmp_path):
    rollout, link, clock, hear, store = make_rollout(tmp_path)
    hear()
    rollout.tick()
    (board, payload), = link.commands()
    assert payload["by"] == "operator" and payload["id"].startswith("update-")
    assert payload["args"] == {"url": BUNDLE.url, "version": "1.2.0", "force": False,
                               "sha256": BUNDLE.sha256, "size_bytes": 1234}
    on_disk = store.read(RECORD_NAME, RECORD_VERSION, {}).payload
    assert on_disk["boards"]["m1/b01"]["status"] == SENT  # written before it went out
    assert on_disk["boards"]["m1/b01"]["id"] == payload["id"]


def test_the_first_failure_pauses_the_rollout_and_says_which_board_and_why(tmp_path):
    rollout, link, clock, hear, store = make_rollout(tmp_path)
    hear()
    rollout.tick()
    update(link, "b01", "installing", boot="u1", seq=2)
    update(link, "b01", "rolled_back", reason="health gate: agent restarted 3 times",
           boot="u2", seq=1)
    hear()
    rollout.tick()
    assert rollout.record["state"] == "paused" and rollout.finished
    assert "m1/b01 failed: rolled_back: health gate: agent restarted 3 times" in (
        rollout.record["reason"])
    assert len(link.commands()) == 1
    topic, state, retained = link.sent[-1]
    assert topic == f"hearth/v1/{SITE}/update/state" and retained
    assert state["state"] == "paused" and state["boards"]["m1/b01"]["status"] == FAILED
    assert state["boards"]["m1/b01"]["update_state"] == "rolled_back"


def test_an_old_retained_answer_is_not_taken_for_this_ones(tmp_path):
    """The board failed this version once before: its retained `update` still says so."""
    rollout, link, clock, hear, _ = make_rollout(tmp_path)
    update(link, "b01", "failed", reason="an earlier try", boot="old", seq=7, retained=True)
    hear()
    rollout.tick()
    assert len(link.commands()) == 1
    update(link, "b01", "failed", reason="an earlier try", boot="old", seq=7, retained=True)
    rollout.tick()
    assert rollout.record["state"] == "running"
    assert rollout.record["boards"]["m1/b01"]["status"] == SENT


def test_a_rejected_command_and_a_silent_board_are_failures(tmp_path):
    rollout, link, clock, hear, _ = make_rollout(tmp_path)
    hear()
    rollout.tick()
    (_, payload), = link.commands()
    link.deliver(f"hearth/v1/{SITE}/m1/b01/reply",
                 {"id": "another", "cmd": "update", "status": "rejected", "reason": "x"})
    assert rollout.record["state"] == "running"
    link.deliver(f"hearth/v1/{SITE}/m1/b01/reply",
                 {"id": payload["id"], "cmd": "update", "status": "rejected",
                  "reason": "an update to 1.3.0 runs"})
    assert rollout.record["boards"]["m1/b01"]["reason"] == (
        "cmd/update rejected: an update to 1.3.0 runs")

    rollout, link, clock, hear, _ = make_rollout(tmp_path / "2")
    hear()
    rollout.tick()
    clock.now += 601.0
    hear()
    rollout.tick()
    assert rollout.record["boards"]["m1/b01"]["status"] == FAILED
    assert rollout.record["boards"]["m1/b01"]["reason"].startswith("silent: no update")


def test_a_board_at_the_version_already_is_done_and_a_board_never_heard_is_skipped(tmp_path):
    rollout, link, clock, hear, _ = make_rollout(tmp_path, boards=2, budget_w=4.0, share=100)
    update(link, "b01", "committed", installed="1.2.0", target="1.2.0", boot="x", seq=3,
           retained=True)
    link.deliver(f"hearth/v1/{SITE}/m1/b01/state", board_state())
    link.deliver(f"hearth/v1/{SITE}/m1/leader/state",
                 {"budget_w": 4.0, "electric_budget_w": 4.0, "boards": {"b01": {}, "b02": {}}})
    rollout.tick()
    assert link.commands() == [] and rollout.record["boards"]["m1/b01"]["status"] == "done"
    rollout.tick()
    assert "listening for m1/b02" in rollout.waiting["m1"]
    clock.now += 31.0
    link.deliver(f"hearth/v1/{SITE}/m1/b01/state", board_state())
    link.deliver(f"hearth/v1/{SITE}/m1/leader/state",
                 {"budget_w": 4.0, "electric_budget_w": 4.0, "boards": {"b01": {}, "b02": {}}})
    rollout.tick()
    assert rollout.record["boards"]["m1/b02"]["status"] == SKIPPED
    rollout.tick()
    assert rollout.record["state"] == "done"


def test_a_resumed_rollout_keeps_its_plan_and_sends_no_board_twice(tmp_path):
    rollout, link, clock, hear, store = make_rollout(tmp_path)
    hear()
    rollout.tick()
    record = read_record(store)
    record["boards"]["m1/b02"]["status"] = SKIPPED
    record["boards"]["m1/b03"]["status"] = FAILED
    again = resumed(record, retry_failed=False)
    assert again["boards"]["m1/b01"]["status"] == SENT
    assert again["boards"]["m1/b02"]["status"] == PENDING
    assert again["boards"]["m1/b03"]["status"] == FAILED
    assert resumed(record, retry_failed=True)["boards"]["m1/b03"]["status"] == PENDING
    again_link = WireLink()
    second = Rollout(SITE, again_link, store, again, RolloutSettings(), clock=clock)
    second.start()
    for board in keys("m1", 4):
        again_link.deliver(f"hearth/v1/{SITE}/m1/{board}/state", board_state())
    again_link.deliver(f"hearth/v1/{SITE}/m1/leader/state",
                       {"budget_w": 14.0, "electric_budget_w": 14.0, "boards": {}})
    second.tick()
    assert again_link.commands() == []  # b01 is still in flight: the canary's wave waits


def test_a_damaged_record_is_refused_and_nothing_is_sent(tmp_path):
    store = StateStore(tmp_path)
    store.write(RECORD_NAME, RECORD_VERSION, new_record(BUNDLE, [["m1/b01"]], False, 0.0))
    path = store.path(RECORD_NAME)
    path.write_text(path.read_text().replace('"pending"', '"pendin"'))
    with pytest.raises(UpdateError, match="rollout record cannot be used: .*checksum mismatch"):
        read_record(store)
    bad = new_record(BUNDLE, [["m1/b01"]], False, 0.0)
    bad["waves"] = [["m1/b01", "m1/b01"]]
    store.write(RECORD_NAME, RECORD_VERSION, bad)
    with pytest.raises(UpdateError, match="waves and boards differ.*Move .* aside"):
        read_record(store)
    assert read_record(StateStore(tmp_path / "none")) is None


def test_update_state_of_a_500_board_site_is_a_message_every_reader_takes(tmp_path):
    """Boards pending or done are counted, not listed: a site of 500 boards with long
    names and reasons still fits the 64 KiB every Hearth receiver takes."""
    link, clock = WireLink(), Clock()
    boards = {f"module-{m:02d}": [f"board-{n:03d}" for n in range(50)] for m in range(10)}
    record = new_record(BUNDLE, plan_waves(boards, 25.0), False, 0.0)
    for index, entry in enumerate(record["boards"].values()):
        if index % 50 == 0:
            entry.update(status=SKIPPED, reason="no state from it in the 30 s before its turn; "
                         "run the rollout again when it is back")
    rollout = Rollout(SITE, link, StateStore(tmp_path), record, RolloutSettings(), clock=clock)
    rollout.start()
    for key in record["boards"]:
        module, board = key.split("/")
        update(link, "x", "idle")  # noise on another board's topic
        link.deliver(f"hearth/v1/{SITE}/{module}/{board}/update", envelope.encode(
            {"v": 1, "boot": "u", "seq": 1, "ts": 0.0, "installed": "1.1.0", "slot": "A",
             "state": "idle", "target": None, "progress_pct": None, "reason": None}))
    rollout.publish()
    topic, payload, retained = link.sent[-1]
    raw = envelope.encode(envelope.Envelope("rollout", lambda: 1.0).stamp(topic, payload))
    assert len(raw) < envelope.MAX_PAYLOAD_BYTES
    decoded = envelope.decode(raw)
    assert decoded["counts"] == {"pending": 490, "sent": 0, "done": 0, "failed": 0,
                                 "skipped": 10}
    assert sorted(decoded["boards"]) == sorted(key for key, entry in record["boards"].items()
                                               if entry["status"] == SKIPPED)
    assert len(rollout.summary(every_board=True)["boards"]) == 500


@pytest.mark.parametrize("change, complaint", [
    ({"state": "dancing"}, "'state' must be one of"),
    ({"progress_pct": 101}, "'progress_pct'"), ({"progress_pct": True}, "'progress_pct'"),
    ({"installed": 1.2}, "'installed'"), ({"installed": "x" * 33}, "'installed'"),
    ({"slot": "C"}, "'slot'"), ({"reason": ""}, "'reason'"), ({"seq": 0}, "'seq'"),
    ({"boot": None}, "'boot'")])
def test_a_board_update_it_cannot_use_is_refused_naming_the_field(change, complaint):
    good = {"boot": "b", "seq": 1, "installed": "1.1.0", "slot": "A", "state": "idle",
            "target": None, "progress_pct": None, "reason": None}
    assert checked_update(good).state == "idle"
    with pytest.raises(MessageError, match=complaint):
        checked_update({**good, **change})


def test_what_cannot_be_read_is_counted_and_changes_nothing(tmp_path):
    rollout, link, clock, hear, _ = make_rollout(tmp_path)
    hear()
    rollout.tick()
    for raw in (b"\xff", b'{"v":1,"state":"\\ud800"}', b"[]", b'{"v":1,"seq":1e400}'):
        link.deliver(f"hearth/v1/{SITE}/m1/b01/update", raw)
        link.deliver(f"hearth/v1/{SITE}/m1/b01/reply", raw)
        link.deliver(f"hearth/v1/{SITE}/m1/leader/state", raw)
    assert rollout.rejected["update"] == 4 and rollout.rejected["leader"] == 4
    assert rollout.record["boards"]["m1/b01"]["status"] == SENT
    with pytest.raises(MessageError, match="'budget_w'"):
        checked_leader_state({"budget_w": -1, "electric_budget_w": 1, "boards": {}})
    json.dumps(rollout.summary())


def render_update(component: dict, payload: bytes) -> dict:
    """The update entity's value_template as Home Assistant renders it against a message off
    the wire (Jinja, the same engine), then read as HA's MQTT update reads the result."""
    import jinja2
    value_json = json.loads(payload)
    rendered = jinja2.Environment().from_string(component["value_template"]).render(
        value_json=value_json, value=payload.decode())
    return json.loads(rendered)


@pytest.mark.parametrize("state, installed, target, progress, shown", [
    ("idle", "1.1.0", None, None, ("1.1.0", "1.1.0", False, None)),
    ("installing", "1.1.0", "1.2.0", 40, ("1.1.0", "1.2.0", True, 40)),
    ("trial", "1.1.0", "1.2.0", None, ("1.1.0", "1.2.0", True, None)),
    ("committed", "1.2.0", "1.2.0", None, ("1.2.0", "1.2.0", False, None)),
    ("rolled_back", "1.1.0", "1.2.0", None, ("1.1.0", "1.2.0", False, None)),
    ("refused", "1.2.0", "1.0.0", None, ("1.2.0", "1.0.0", False, None)),
    ("idle", None, None, None, ("unknown", "unknown", False, None))])
def test_a_boards_update_entity_shows_its_update_topic_as_home_assistant_reads_it(
        state, installed, target, progress, shown):
    import ha_rules
    from agent.ha_discovery import board_discovery
    topic, raw = board_discovery(SITE, "m1", "b01")
    assert ha_rules.problems(topic, raw) == []
    component = ha_rules.expanded(json.loads(raw))["components"]["update"]
    assert component["platform"] == "update" and component["device_class"] == "firmware"
    assert component["state_topic"] == f"hearth/v1/{SITE}/m1/b01/update"
    assert "command_topic" not in component  # installs go through `hearth update`, in waves
    payload = envelope.encode({"v": 1, "boot": "u", "seq": 3, "ts": 1.0, "installed": installed,
                               "slot": "A", "state": state, "target": target,
                               "progress_pct": progress, "reason": None})
    entity = render_update(component, payload)
    assert ha_rules.update_state_problems(entity) == []
    assert (entity["installed_version"], entity["latest_version"], entity["in_progress"],
            entity["update_percentage"]) == shown


# -- the acceptance test: 16 simulated boards, the real leader and updaters, a real Mosquitto --

BOARDS = 16
FAILING_BOARD = "b10"
LOSABLE_BOARDS = 3
"""The budget is set so that the module can lose three boards and still meet it, not four."""
OLD, NEW = "1.1.0", "1.2.0"
STEP_WALL_S = 0.5
"""Wall seconds per simulated second: every clock but the wall's (the boards, leader, health
gates, simulated slots, rollout) is the simulation's, so it runs twice as fast as real time."""


class UpdatableBoard:
    """A simulated board (its plant, the real BoardAgent and BoardLink) with the real board
    updater over SimulatedSlots: a simulated boot closes the agent and starts a new one on the
    same hardware, or none when the slot's version crash-loops."""

    def __init__(self, directory, name, seed, clock, broker, failing_versions):
        from agent.mqtt.link import Link, LinkSettings
        from agent.mqtt.outbox import Outbox
        from agent.mqtt.topics import BoardTopics
        from agent.sim.board_farm import BOARD_CONFIG, settle_at_idle
        from agent.sim.harness import SimulatedAgent
        from agent.update.health_gate import GateSettings
        from agent.update.slots import SimulatedSlots
        from agent.update.trial_record import TrialRecords
        from agent.update.updater import Updater
        self.directory, self.name, self.broker = directory, name, broker
        self.topics = BoardTopics(SITE, "m1", name)
        self.sim = SimulatedAgent(directory / "board", clock, seed=seed,
                                  extra_config=BOARD_CONFIG)
        settle_at_idle(self.sim.board.plant, 40.0)
        self.agent = self.sim.agent
        self.link = self._connect()
        self.boots = 0
        self.slots = SimulatedSlots(OLD, on_boot=self._boot, failing_versions=failing_versions,
                                    clock=clock)
        updater_link = Link(LinkSettings(broker.host, broker.port, reconnect_max_s=2),
                            client_id=self.topics.client_id + "-updater",
                            outbox=Outbox(directory / "updater-outbox"),
                            boot=f"updater-{name}")
        self.updater = Updater(self.slots, updater_link, self.topics,
                               TrialRecords(StateStore(directory / "data")),
                               GateSettings(window_s=30.0, hold_s=3.0),
                               self.slots.agent_service, clock=clock)

    def _connect(self):
        from agent.mqtt.board_link import BoardConnection, connect_board
        from agent.mqtt.link import LinkSettings
        return connect_board(self.agent, BoardConnection(
            LinkSettings(self.broker.host, self.broker.port, reconnect_max_s=2), self.topics,
            self.directory / "outbox", time.time))

    def _boot(self, booted, agent_runs: bool) -> None:
        from agent.board_agent import BoardAgent
        from agent.config import load_config
        from agent.safety.events import EventLog
        self.boots += 1
        if self.link is not None:
            self.link.close()
            self.agent.close()
        self.agent = self.link = None
        self.sim.board.smbus.closed = False  # the new boot opens /dev/i2c-1 again
        if agent_runs:
            self.agent = BoardAgent(load_config(self.sim.config_path), self.sim.board.hardware,
                                    events=EventLog(journal=None), run_command=lambda argv: None,
                                    send_signal=lambda pid, signum: None)
            self.link = self._connect()

    def step(self) -> None:
        self.sim.board.plant.water_inlet_c = 40.0
        self.sim.board.step(1.0)
        if self.agent is not None:
            self.agent.tick()

    def close(self) -> None:
        self.updater.close()
        if self.link is not None:
            self.link.close()
            self.agent.close()


def test_a_module_of_16_boards_is_rolled_out_in_waves_within_its_budget_and_stops_at_a_failure(
        mosquitto, tmp_path, signed):
    """16 simulated boards, each with the real board updater over simulated slots, the real
    leader, and `hearth update rollout` run as an operator runs it, on a real Mosquitto: the
    signed bundle checked, served and streamed by every board in Range requests. b10's new
    version crash-loops its agent: its health gate fails, it boots its old slot again, and the
    rollout stops there. At every leader period the boards heating could draw the module's
    budget, and never more than three boards were away updating at once."""
    import subprocess
    import sys
    import uuid

    import ha_rules
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.ha_announce import DiscoveryAnnouncer
    from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings, module_topics
    from agent.mqtt.link import Link, LinkSettings
    from agent.mqtt.outbox import Outbox
    from agent.sim.clock import SimClock

    broker = mosquitto()
    clock = SimClock()
    boards = [UpdatableBoard(tmp_path / f"b{n:02d}", f"b{n:02d}", n, clock, broker,
                             {NEW} if f"b{n:02d}" == FAILING_BOARD else set())
              for n in range(1, BOARDS + 1)]
    leader_link = Link(LinkSettings(broker.host, broker.port, reconnect_max_s=2),
                       client_id=f"hearth-{SITE}-m1-leader", outbox=Outbox(tmp_path / "lo"),
                       boot=str(uuid.uuid4()), status_topic=module_topics(SITE, "m1")["status"],
                       window=256)
    leader = LeaderRole(SITE, "m1", leader_link, clock,
                        LeaderSettings(period_s=2.0, silence_timeout_s=6.0, budget_w=0.0),
                        lambda: ModuleReadings(), discovery=DiscoveryAnnouncer(leader_link))
    leader.start()
    leader_link.start()
    watched: dict[str, bytes] = {}
    progress: list[dict] = []

    def on_message(client, userdata, message) -> None:
        watched[message.topic] = bytes(message.payload)
        if message.topic.endswith("/update/state"):
            progress.append(json.loads(message.payload))

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = on_message
    watcher.connect(broker.host, broker.port)
    watcher.subscribe([("homeassistant/device/+/config", 1), (f"hearth/v1/{SITE}/+/+/update", 1),
                       (f"hearth/v1/{SITE}/update/state", 1)])
    watcher.loop_start()
    config = tmp_path / "operator.toml"
    config.write_text(f'[mqtt]\nbrokers = ["{broker.host}:{broker.port}"]\n')
    samples = []
    rollout = None
    started = time.monotonic()
    next_step_s = started
    next_leader_s = clock()

    def run_for(seconds: float, until=lambda: False) -> None:
        """Everything but the rollout on this thread: updaters and leader polled every 20 ms,
        the boards stepped one period (1 s of the simulation's clock) every STEP_WALL_S."""
        nonlocal next_step_s, next_leader_s
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            for board in boards:
                board.updater.poll()
            leader_link.poll()
            leader.react(clock())
            if time.monotonic() >= next_step_s:
                next_step_s += STEP_WALL_S
                clock.advance(1.0)
                for board in boards:
                    board.step()
                if clock() >= next_leader_s:
                    next_leader_s += 2.0
                    leader.tick(clock())
                    if leader.budget_w > 0:
                        heating_w = sum(view.state["max_w"] for view in leader.tracker.usable())
                        samples.append({**leader.snapshot, "heating_max_w": heating_w})
            time.sleep(0.02)

    try:
        for board in boards:
            board.updater.start()
        max_w = boards[0].agent.status().power_max_w  # the configured limit, 6.5 W

        def ramped() -> bool:  # every board heating, its supervisor's ramp up to the limit
            return leader.snapshot.get("boards_usable") == BOARDS and all(
                view.state.get("max_w") == max_w for view in leader.tracker.boards.values())

        run_for(30.0, until=ramped)
        assert ramped(), leader.snapshot
        leader.budget_w = (BOARDS - LOSABLE_BOARDS) * max_w - 0.5
        run_for(20.0, until=lambda: (leader.snapshot.get("power_w") or 0.0)
                >= 0.98 * leader.budget_w)
        rollout_from = len(samples)
        rollout = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "update", "rollout", str(signed["bundle"]),
             "--keyring", str(signed["keyring"]), "--config", str(config), "--site", SITE,
             "--state-dir", str(tmp_path / "site-state"), "--listen", "127.0.0.1:0",
             "--advertise", "127.0.0.1", "--board-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run_for(75.0, until=lambda: rollout.poll() is not None)
        wall_s = time.monotonic() - started
        assert rollout.poll() is not None, "the rollout did not end"
        run_for(1.0)  # the last reports reach the watcher
    finally:
        if rollout is not None and rollout.poll() is None:
            rollout.kill()
        watcher.loop_stop()
        for board in boards:
            board.close()
        leader_link.close()

    out, err = rollout.communicate()
    assert rollout.returncode == 1, err  # paused
    record = read_record(StateStore(tmp_path / "site-state"))
    waves = record["waves"]
    status = {key: entry["status"] for key, entry in record["boards"].items()}
    # the rollout stopped at b10, in the third wave, and says why
    assert waves[0] == ["m1/b01"] and len(waves[1]) == 3 and len(waves[2]) == 12
    assert record["state"] == "paused"
    assert status[f"m1/{FAILING_BOARD}"] == FAILED
    assert "crash-loops" in record["boards"][f"m1/{FAILING_BOARD}"]["reason"]
    assert f"m1/{FAILING_BOARD} failed: rolled_back" in record["reason"]
    assert out.splitlines()[0] == f"rollout of {signed['bundle'].name} ({NEW}): paused"
    assert all(status[key] == "done" for key in waves[0] + waves[1])
    assert any(status[key] == PENDING for key in waves[2]), status  # never sent after it
    # each board as its slots have it: the updated ones on B at 1.2.0, b10 back on A at 1.1.0
    by_name = {board.name: board for board in boards}
    for key, board_status in status.items():
        slots = by_name[key.split("/")[1]].slots
        if board_status == "done":
            assert (slots.booted().slot, slots.booted().version, slots.primary) == ("B", NEW, "B")
            assert slots.bundle_bytes["B"] == signed["bundle"].read_bytes()
        elif board_status == PENDING:
            assert (slots.booted().slot, slots.booted().version) == ("A", OLD)
    failed = by_name[FAILING_BOARD].slots
    assert (failed.booted().slot, failed.booted().version, failed.primary) == ("A", OLD, "A")
    assert failed.boot_status["B"] == "bad" and by_name[FAILING_BOARD].agent is not None
    # the budget: at every leader period of the rollout, the boards heating could draw it at
    # their max_w (the leader's own view of them), and the module drew it on average
    during = samples[rollout_from:]
    assert len(during) >= 15
    assert all(s["heating_max_w"] >= s["budget_w"] == leader.budget_w for s in during), [
        (round(s["heating_max_w"], 1), s["budget_w"]) for s in during]
    drawn_w = [s["power_w"] for s in during]
    assert sum(drawn_w) / len(drawn_w) >= 0.95 * leader.budget_w, drawn_w
    # as many boards away at once as the budget allows, never more, read off update/state
    away = [state["counts"]["sent"] for state in progress]
    assert max(away) == LOSABLE_BOARDS, away
    assert progress[-1]["state"] == "paused" and progress[-1]["counts"]["failed"] == 1
    # what is on the wire: each board's update topic, and Home Assistant's update entity on it
    board_config = watched[f"homeassistant/device/hearth_{SITE}_m1_{FAILING_BOARD}/config"]
    assert ha_rules.problems(f"homeassistant/device/hearth_{SITE}_m1_{FAILING_BOARD}/config",
                             board_config) == []
    component = ha_rules.expanded(json.loads(board_config))["components"]["update"]
    for name, expected in ((FAILING_BOARD, (OLD, NEW, False)), ("b01", (NEW, NEW, False))):
        raw = watched[f"hearth/v1/{SITE}/m1/{name}/update"]
        entity = render_update(component, raw)
        assert ha_rules.update_state_problems(entity) == []
        assert (entity["installed_version"], entity["latest_version"],
                entity["in_progress"]) == expected
    print(f"rollout test: {wall_s:.0f} s wall, {len(during)} leader periods sampled, "
          f"at most {max(away)} boards updating at once")


# -- the command line ------------------------------------------------------------------------

def operator_config(tmp_path, broker) -> str:
    path = tmp_path / "operator.toml"
    path.write_text(f'[mqtt]\nbrokers = ["{broker.host}:{broker.port}"]\n')
    return str(path)


def test_update_status_lists_each_boards_version_and_the_rollout_off_the_broker(
        mosquitto, tmp_path, capsys):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent import cli
    broker = mosquitto()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="board")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    for topic, payload in (
            ("m1/b01/update", {"installed": "1.2.0", "slot": "B", "state": "committed",
                               "target": "1.2.0", "progress_pct": None, "reason": None}),
            ("m1/b02/update", {"installed": "1.1.0", "slot": "A", "state": "rolled_back",
                               "target": "1.2.0", "progress_pct": None,
                               "reason": "crash loop"}),
            ("update/state", {"state": "paused", "version": "1.2.0", "bundle": "x.raucb",
                              "reason": "m1/b02 failed"})):
        publisher.publish(f"hearth/v1/{SITE}/{topic}", envelope.encode(
            {"v": 1, "boot": "x", "seq": 1, "ts": 1.0, **payload}), qos=1,
            retain=True).wait_for_publish(5)
    publisher.publish(f"hearth/v1/{SITE}/m2/b03/update", b'{"v":1,"state":"??"}', qos=1,
                      retain=True).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    status = cli.main(["update", "status", "--config", operator_config(tmp_path, broker),
                       "--site", SITE, "--state-dir", str(tmp_path), "--wait", "1.5"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == "rollout of x.raucb (1.2.0): paused: m1/b02 failed"
    rows = {line.split()[0]: line.split(None, 5)[1:] for line in out[2:]}
    assert rows["m1/b01"] == ["1.2.0", "B", "committed", "1.2.0"]
    assert rows["m1/b02"] == ["1.1.0", "A", "rolled_back", "1.2.0", "crash loop"]
    assert rows["m2/b03"][:3] == ["unreadable", "update", "topic:"]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """The site's update keys (`hearth bundle keygen`) and a small bundle of 1.2.0 signed
    with them, as `hearth bundle build` signs one."""
    from agent import cli
    from agent.update.bundle import sign, write_content
    work = tmp_path_factory.mktemp("signed")
    assert cli.main(["bundle", "keygen", "--out", str(work / "keys"), "--site", SITE]) == 0
    boot, root = write_content(work / "content", "1.2.0")
    boot.write_bytes(os.urandom(65536))  # squashfs wants more than 4 KiB after compression
    root.write_bytes(os.urandom(65536))
    bundle = sign(work / "content", work / "keys/signing/signing.crt",
                  work / "keys/signing/signing.key", work / "hearth-1.2.0.raucb")
    return {"bundle": bundle, "keyring": work / "keys/ca/ca.crt"}


def rollout_command(tmp_path, bundle, keyring) -> list[str]:
    config = tmp_path / "operator.toml"
    config.write_text('[mqtt]\nbrokers = ["127.0.0.1:1"]\n')
    return ["update", "rollout", str(bundle), "--keyring", str(keyring), "--config",
            str(config), "--site", SITE, "--state-dir", str(tmp_path / "state"),
            "--listen", "127.0.0.1:0"]


def test_a_bundle_a_board_would_refuse_is_refused_before_anything_is_sent(
        tmp_path, capsys, signed):
    from agent import cli
    unsigned = tmp_path / "hearth-1.2.0.raucb"
    unsigned.write_bytes(b"not a bundle")
    assert cli.main(rollout_command(tmp_path, unsigned, signed["keyring"])) == 2
    assert "hearth update: " in capsys.readouterr().err
    other_ca = tmp_path / "other"
    assert cli.main(["bundle", "keygen", "--out", str(other_ca), "--site", "other"]) == 0
    assert cli.main(rollout_command(tmp_path, signed["bundle"], other_ca / "ca/ca.crt")) == 2
    assert "signature verification failed" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # no record, no outbox: nothing was sent


def test_a_rollout_of_another_bundle_waits_for_the_paused_one(tmp_path, capsys, signed):
    from agent import cli
    store = StateStore(tmp_path / "state")
    record = new_record(dataclasses.replace(BUNDLE, name="hearth-1.1.9.raucb", version="1.1.9"),
                        [["m1/b01"]], False, 0.0)
    record["state"] = "paused"
    store.write(RECORD_NAME, RECORD_VERSION, record)
    before = store.path(RECORD_NAME).read_bytes()
    status = cli.main(rollout_command(tmp_path, signed["bundle"], signed["keyring"]))
    assert status == 2
    assert ("a rollout of hearth-1.1.9.raucb (1.1.9) is paused; go on with that bundle, or "
            f"move {store.path(RECORD_NAME)} aside") in capsys.readouterr().out
    assert store.path(RECORD_NAME).read_bytes() == before


def test_update_serve_serves_its_bundles_until_stopped(tmp_path):
    import select
    import signal
    import subprocess
    import sys
    import urllib.request
    bundle = tmp_path / "hearth-1.2.0.raucb"
    bundle.write_bytes(b"0123456789" * 100)
    server = subprocess.Popen([sys.executable, "-m", "agent.cli", "update", "serve", str(bundle),
                               "--listen", "127.0.0.1:0", "--advertise", "127.0.0.1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        # the line must come while the server runs, not when its buffer is flushed at exit
        ready, _, _ = select.select([server.stdout], [], [], 20)
        assert ready, "hearth update serve printed no URL within 20 s"
        announced = json.loads(server.stdout.readline())
        assert announced["size_bytes"] == 1000 and len(announced["sha256"]) == 64
        request = urllib.request.Request(announced["url"], headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206 and response.read() == b"0123456789"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def test_the_operator_account_may_publish_the_rollout_and_send_cmd_update_a_board_may_not(
        tmp_path):
    """On a broker running `hearth broker-config`'s files: the rollout logs in as an operator
    and its retained update/state and cmd/update go through; a board can write neither."""
    import uuid

    from test_broker_config import ROOT, Client, generated_site, login

    from agent.mqtt.link import Link, LinkSettings
    from agent.mqtt.outbox import Outbox
    out, port, broker = generated_site(tmp_path)
    clients = []

    def connect(user: str) -> Client:
        client = Client(port, login(out, user))
        assert not client.connect().is_failure
        clients.append(client)
        return client

    try:
        watcher = connect("operator.homeassistant")
        assert watcher.subscribe(f"{ROOT}/#")
        board = connect("m1.b02")
        board.publish(f"{ROOT}/update/state", "board: not the rollout", retain=True)
        board.publish(f"{ROOT}/m1/b01/cmd/update", "board: not a command")
        account = login(out, "operator")
        link = Link(LinkSettings("127.0.0.1", port, username=account["username"],
                                 password=account["password"]), client_id="operator",
                    outbox=Outbox(tmp_path / "outbox"), boot=str(uuid.uuid4()))
        rollout = Rollout("maple-school", link, StateStore(tmp_path / "state"),
                          new_record(BUNDLE, [["m1/b01"]], False, 0.0), RolloutSettings())
        link.start()
        link.publish(f"{ROOT}/m1/b01/cmd/update", {"id": "x", "by": "operator", "args": {}},
                     qos=1)
        rollout.publish()
        deadline = time.monotonic() + 10
        while not link.idle() and time.monotonic() < deadline:
            link.poll(0.1)
        link.close()
        got = [(topic, payload) for topic, payload in watcher.drain(1.0)
               if "/status" not in topic]
        assert [topic for topic, _ in got] == [f"{ROOT}/m1/b01/cmd/update",
                                               f"{ROOT}/update/state"]
        assert json.loads(got[1][1])["version"] == "1.2.0"
        late = connect("operator")
        late.subscribe(f"{ROOT}/update/state")  # retained for whoever looks later
        assert json.loads(late.messages.get(timeout=5)[1])["state"] == "running"
    finally:
        for client in clients:
            client.close()
        broker.stop()
