"""The leader's trust boundary: every board `state` and `event` is decoded once into checked
values, and anything it cannot represent or that is physically impossible is rejected there,
counted per board and reported, while the leader keeps running (issue 13, items 2 and 3)."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.leader.board_state import POWER_CEILING_W
from agent.leader.ledger import ALLOWANCE_WINDOW_S, ENERGY_MARGIN, LEDGER_FILE, EnergyLedger
from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings, module_topics
from agent.metrics import exposition
from agent.mqtt import envelope
from agent.mqtt.link import Message
from agent.persist import StateStore

SITE, MODULE = "s1", "m1"


class WireLink:
    """Stands in for agent.mqtt.link.Link where no broker is needed: it stamps and encodes
    every publish exactly as the Link does before handing it to paho, so a payload that could
    never be sent raises here as it would on a connected leader."""

    def __init__(self, wall_clock):
        self.envelope = envelope.Envelope("leader-boot", wall_clock)
        self.sent: list[tuple[str, dict]] = []
        self.handlers: list[tuple[str, object]] = []

    def publish(self, topic, payload, qos=0, retain=False, keep=None):
        message = self.envelope.stamp(topic, payload)
        envelope.encode(message)
        self.sent.append((topic, message))
        return message

    def subscribe(self, pattern, handler):
        self.handlers.append((pattern, handler))

    def poll(self, timeout_s=0.0):
        return 0

    def on(self, suffix: str) -> list[dict]:
        return [message for topic, message in self.sent if topic.endswith(suffix)]


class Leader:
    """A LeaderRole on a WireLink and a settable clock; `deliver` hands the role's handler a
    Message as it comes off the wire (raw bytes, retained flag)."""

    def __init__(self, store: StateStore | None = None, start_s: float = 1_700_000_000.0):
        self.now = [start_s]
        self.link = WireLink(lambda: self.now[0])
        self.role = LeaderRole(SITE, MODULE, self.link, lambda: self.now[0],
                               LeaderSettings(period_s=5, budget_w=12.0),
                               lambda: ModuleReadings(), store=store,
                               wall_clock=lambda: self.now[0])
        self.role.start()
        self.base = module_topics(SITE, MODULE)["base"]

    def deliver(self, board: str, kind: str, payload: bytes | str, retained: bool = False):
        raw = payload.encode("utf-8") if isinstance(payload, str) else payload
        message = Message(f"{self.base}/{board}/{kind}", raw, retained)
        for pattern, handler in self.link.handlers:
            if pattern.endswith(f"/+/{kind}"):
                handler(message)

    def state(self, board: str, seq: int, boot: str = "boot-a", **fields) -> None:
        payload = {"v": 1, "boot": boot, "seq": seq, "ts": self.now[0], "mode": "NORMAL",
                   "faults": [], "min_w": 2.0, "max_w": 6.5, "power_w": 4.0,
                   "energy_electric_wh": 0.0, "energy_heat_wh": 0.0, **fields}
        self.deliver(board, "status", "online")
        self.deliver(board, "state", json.dumps(payload))

    def tick(self, seconds: float = 5.0) -> dict:
        self.now[0] += seconds
        self.role.tick(self.now[0])
        return self.link.on("leader/state")[-1]


# --- item 2: a lone surrogate (or anything else the leader cannot re-encode) in a board's state

@pytest.mark.parametrize("field,value", [("mode", "\ud800"), ("faults", ["\udfff"]),
                                         ("mode", "HEATING"), ("faults", "stuck"),
                                         ("boot", "\ud800")])
def test_state_that_cannot_be_represented_is_rejected_and_counted(field, value):
    leader = Leader()
    leader.state("b1", 1)
    leader.tick()
    leader.state("b1", 2, **{field: value})  # json.dumps writes the surrogate as \ud800
    snapshot = leader.tick()  # encoding the leader's state used to raise UnicodeEncodeError
    board = snapshot["boards"]["b1"]
    assert board["mode"] == "NORMAL" and board["faults"] == []  # the rejected state changed nothing
    assert board["rejected_states"] == 1
    assert field in board["rejection"]
    events = leader.link.on("leader/event")
    assert [(e["cause"], e["board"]) for e in events] == [("state_rejected", "b1")]
    assert field in events[0]["message"]


def test_state_rejections_are_counted_each_time_but_reported_once_per_streak():
    leader = Leader()
    for seq in range(1, 4):
        leader.state("b1", seq, mode="\ud800")
    leader.state("b1", 4)
    leader.state("b1", 5, power_w=1e308)
    snapshot = leader.tick()
    assert snapshot["boards"]["b1"]["rejected_states"] == 4
    assert "power_w" in snapshot["boards"]["b1"]["rejection"]
    assert len(leader.link.on("leader/event")) == 2  # one per streak of rejections


@pytest.mark.parametrize("fields", [
    {"power_w": 1e308}, {"max_w": math.inf}, {"min_w": -3.0}, {"max_w": 400.0},
    {"min_w": 6.0, "max_w": 3.0}, {"energy_electric_wh": -1.0}, {"energy_heat_wh": 1e300},
    {"seq": 10 ** 400}, {"seq": True}, {"hist": "yes"}, {"selected": {"a": 1}}])
def test_physically_impossible_or_malformed_state_is_rejected(fields):
    leader = Leader()
    leader.state("b1", 1)
    leader.state("b1", fields.pop("seq", 2), **fields)
    snapshot = leader.tick()
    assert snapshot["boards"]["b1"]["rejected_states"] == 1
    assert snapshot["boards"]["b1"]["power_w"] == 4.0


def test_retained_state_is_old_news_and_changes_nothing():
    leader = Leader()
    payload = json.dumps({"v": 1, "boot": "a", "seq": 1, "ts": 0, "mode": "NORMAL",
                          "faults": [], "min_w": 2.0, "max_w": 6.5})
    leader.deliver("b1", "state", payload, retained=True)
    snapshot = leader.tick()
    assert snapshot["boards"]["b1"]["rejected_states"] == 1
    assert snapshot["boards"]["b1"]["mode"] is None and snapshot["boards_usable"] == 0


def test_duplicate_or_late_state_changes_nothing():
    leader = Leader()
    leader.state("b1", 1, mode="NORMAL")
    leader.state("b1", 3, mode="LIMITED")
    leader.state("b1", 2, mode="SAFE")  # overtaken by seq 3
    leader.state("b1", 3, mode="FAULT", faults=["x"])  # the same (boot, seq) again
    snapshot = leader.tick()
    assert snapshot["boards"]["b1"]["mode"] == "LIMITED"
    assert snapshot["boards"]["b1"]["rejected_states"] == 0


def test_event_with_unusable_envelope_is_rejected_and_counted():
    leader = Leader()
    leader.state("b1", 1)
    leader.deliver("b1", "event", json.dumps({"v": 1, "boot": "boot-a", "seq": 10 ** 400}))
    leader.deliver("b1", "event", b"\xff\xfe")
    snapshot = leader.tick()
    assert snapshot["boards"]["b1"]["rejected_events"] == 2
    assert snapshot["boards"]["b1"]["lost_events"] == 0


def test_handlers_never_raise_on_any_payload():
    leader = Leader()
    for payload in (b"", b"[]", b"{}", b'{"v":1}', b'{"v":1,"mode":{"\\ud800":1}}',
                    b"[" * 5000, b'{"v":1,"boot":"a","seq":1,"faults":' + b"[" * 3000 + b"]" * 3000
                    + b"}"):
        for kind in ("state", "event", "status"):
            leader.deliver("b1", kind, payload)
    leader.deliver("leader", "state", b'{"v":1,"mode":"\\ud800"}')
    leader.tick()


# --- item 3: the energy ledger takes only what the board's power allows in the elapsed time

def test_a_board_reporting_1e308_wh_across_boots_neither_counts_nor_stops_the_leader(tmp_path):
    store = StateStore(tmp_path)
    leader = Leader(store)
    leader.state("b1", 1, boot="one", energy_electric_wh=0.0)
    leader.state("b1", 2, boot="one", energy_electric_wh=1e308)
    leader.state("b1", 1, boot="two", energy_electric_wh=0.0)
    leader.state("b1", 2, boot="two", energy_electric_wh=1e308)
    snapshot = leader.tick()
    assert snapshot["energy_electric_wh"] == 0.0
    leader.role.close()  # saving the ledger used to raise (infinity is not JSON)
    assert EnergyLedger().load(store, 0.0) is None


def test_energy_beyond_the_power_ceiling_is_a_rejected_report_with_an_event():
    leader = Leader()
    leader.state("b1", 1, energy_electric_wh=100.0, energy_heat_wh=50.0)
    leader.now[0] += 3600.0
    # an hour at the 15 W config ceiling with a 1.5 margin allows 22.5 Wh
    leader.state("b1", 2, energy_electric_wh=122.0, energy_heat_wh=70.0)
    assert leader.role.ledger.totals_wh() == {"electric": 22.0, "heat": 20.0}
    leader.now[0] += 60.0
    leader.state("b1", 3, energy_electric_wh=200.0, energy_heat_wh=71.0)  # 78 Wh in a minute
    snapshot = leader.tick()
    assert snapshot["energy_electric_wh"] == 22.0 and snapshot["energy_heat_wh"] == 20.0
    board = snapshot["boards"]["b1"]
    assert board["rejected_energy"] == 1 and "78" in board["energy_rejection"]
    events = leader.link.on("leader/event")
    assert [(e["cause"], e["board"]) for e in events] == [("energy_rejected", "b1")]
    # the reference stays at the last accepted report: later honest reports still count
    leader.now[0] += 60.0
    leader.state("b1", 4, energy_electric_wh=122.1, energy_heat_wh=70.1)
    assert leader.role.ledger.totals_wh()["electric"] == pytest.approx(22.1)


def test_a_counter_that_jumped_is_rebased_at_the_next_boot_without_counting_the_jump():
    ledger = EnergyLedger()
    counters = {"energy_electric_wh": 10.0, "energy_heat_wh": 10.0}
    assert ledger.board_sample("b1", "one", counters, wall_s=0.0) is None
    jumped = {"energy_electric_wh": 5000.0, "energy_heat_wh": 5000.0}
    assert "4990" in ledger.board_sample("b1", "one", jumped, wall_s=10.0)
    assert ledger.boards["b1"].total_wh["electric"] == 0.0
    assert ledger.board_sample("b1", "two", jumped, wall_s=20.0) is not None  # restart: re-based
    assert ledger.boards["b1"].segments == 1
    assert ledger.board_sample("b1", "two", {"energy_electric_wh": 5000.01,
                                              "energy_heat_wh": 5000.01}, wall_s=30.0) is None
    assert ledger.boards["b1"].total_wh["electric"] == pytest.approx(0.01)


def test_energy_after_a_leader_restart_is_bounded_by_the_time_it_was_away(tmp_path):
    store = StateStore(tmp_path)
    ledger = EnergyLedger()
    ledger.board_sample("b1", "a", {"energy_electric_wh": 100.0, "energy_heat_wh": 90.0}, 1000.0)
    ledger.save_if_due(0.0, store, force=True)
    restarted = EnergyLedger()
    assert restarted.load(store, 1600.0) is None
    # 600 s away at most 22.5 W: 3.75 Wh
    assert restarted.board_sample("b1", "a", {"energy_electric_wh": 103.0,
                                               "energy_heat_wh": 92.0}, 1600.0) is None
    assert restarted.boards["b1"].total_wh == {"electric": 3.0, "heat": 2.0}
    assert restarted.board_sample("b1", "a", {"energy_electric_wh": 110.0,
                                               "energy_heat_wh": 92.0}, 1601.0) is not None


# --- the leader's own ledger file: damaged or other-version files are kept and reported

@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "hearth-state",
                                                               "version": 99, "payload": {}})])
def test_damaged_ledger_file_is_kept_aside_reported_and_the_reset_said(tmp_path, content):
    (tmp_path / LEDGER_FILE).write_text(content)
    leader = Leader(StateStore(tmp_path))
    kept = sorted(tmp_path.glob(f"{LEDGER_FILE}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == content
    events = leader.link.on("leader/event")
    assert [e["cause"] for e in events] == ["ledger_reset"]
    assert kept[0].name in events[0]["message"]
    snapshot = leader.tick()
    assert kept[0].name in snapshot["energy_reset"]
    leader.state("b1", 1, energy_electric_wh=5.0)
    leader.role.close()  # the next save does not touch the kept file
    assert kept[0].read_text() == content


def test_ledger_file_with_impossible_values_is_damaged(tmp_path):
    store = StateStore(tmp_path)
    store.write(LEDGER_FILE, 1, {"boards": {"b1": {"boot": "a", "last": {"electric": 1.0},
                                                   "total_wh": {"electric": -5.0},
                                                   "segments": 0}},
                                 "module_heat_metered_wh": 0.0})
    ledger = EnergyLedger()
    problem = ledger.load(store, 0.0)
    assert "b1" in problem and "total_wh" in problem
    assert ledger.boards == {}
    assert list(tmp_path.glob(f"{LEDGER_FILE}.damaged-*"))


def test_missing_ledger_file_is_a_first_start_not_a_reset(tmp_path):
    leader = Leader(StateStore(tmp_path))
    assert leader.link.on("leader/event") == []
    assert leader.tick()["energy_reset"] is None


def test_rejections_are_in_the_metrics():
    leader = Leader()
    leader.state("b1", 1, mode="\ud800")
    text = exposition(SITE, MODULE, leader.tick())
    assert 'hearth_board_rejected_states_total{site="s1",module="m1",board="b1"} 1' in text
    assert 'hearth_board_rejected_energy_reports_total{site="s1",module="m1",board="b1"} 0' \
        in text


def test_reports_that_arrive_bunched_are_all_counted():
    """Two reports taken in one poll are 0 s apart by the leader's clock; the first bound
    rejected the second (the simulator on Mosquitto showed thousands of these an hour)."""
    ledger = EnergyLedger()
    wh = 100.0
    assert ledger.board_sample("b1", "a", {"energy_electric_wh": wh}, 0.0) is None
    for second in range(1, 600, 2):  # 6 W, reports a second apart, taken two at a time
        for _ in range(2):
            wh += 6.0 / 3600.0
            assert ledger.board_sample("b1", "a", {"energy_electric_wh": wh},
                                       float(second)) is None
    assert ledger.boards["b1"].total_wh["electric"] == pytest.approx(wh - 100.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 2.0)), min_size=1,
                max_size=200))
def test_a_board_that_lies_gains_at_most_the_window_beyond_the_ceiling(reports):
    """Whatever rises it claims and however often it reports, the total taken stays within
    the ceiling's rate over the time passed plus one window of unused allowance."""
    ledger = EnergyLedger()
    wall_s, claimed = 1000.0, 0.0
    ledger.board_sample("b1", "a", {"energy_electric_wh": claimed}, wall_s)
    for gap_s, rise_wh in reports:
        wall_s += gap_s
        claimed += rise_wh
        ledger.board_sample("b1", "a", {"energy_electric_wh": claimed}, wall_s)
    rate_w = POWER_CEILING_W * ENERGY_MARGIN
    bound_wh = rate_w * (wall_s - 1000.0 + ALLOWANCE_WINDOW_S) / 3600.0
    assert ledger.boards["b1"].total_wh["electric"] <= bound_wh + 1e-9
