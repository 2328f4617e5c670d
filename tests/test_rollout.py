"""The site's rollout (agent/update/rollout.py, `hearth update`): the waves, the budget rule,
the pause at the first failure, the record that lets it go on, what it reads at the door, and
the acceptance test: a simulated module of 16 boards with the real leader and every board's
real updater on a real Mosquitto, one board failing its health gate."""

import json

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
