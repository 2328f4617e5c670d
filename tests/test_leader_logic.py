"""The leader's pure parts on their own: tracker, heat meter, splitter, trim, interlock, ledger."""

import math

import pytest

from agent.leader.heat import HeatMeter
from agent.leader.interlock import ModuleInterlock
from agent.leader.ledger import EnergyLedger, LEDGER_FILE
from agent.leader.split import BoardCapacity, BudgetSplitter, capacity_from_state
from agent.leader.tracker import BoardTracker
from agent.leader.trim import TrimLoop
from agent.persist import StateStore
from agent.water_heat import heat_w


def state(seq, boot="a", **fields):
    return {"v": 1, "boot": boot, "seq": seq, "ts": 0.0, "mode": "NORMAL", "faults": [],
            "min_w": 2.0, "max_w": 6.5, **fields}


# --- BoardTracker

def test_tracker_lwt_marks_offline_and_state_brings_back():
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_status(0, "b1", "online")
    tracker.on_state(0, "b1", state(1))
    assert [v.board for v in tracker.usable()] == ["b1"]
    assert tracker.on_status(1, "b1", "offline") is True
    assert tracker.usable() == []
    assert tracker.on_status(2, "b1", "online") is True
    tracker.on_state(2, "b1", state(1, boot="b"))
    assert tracker.boards["b1"].restarts == 1
    assert [v.board for v in tracker.usable()] == ["b1"]


def test_a_stale_offline_after_a_broker_restart_yields_to_the_boards_live_state():
    """Mosquitto publishes the Last Wills of the clients it drops when it stops and, with
    persistence, restores them as retained statuses: a reconnecting leader can hear a board's
    "offline" after its "online". The next live state puts the board back in the split; a
    backlog state (hist) from before the outage does not."""
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_status(0, "b1", "online")
    tracker.on_state(0, "b1", state(1))
    tracker.on_status(100, "b1", "offline")
    assert tracker.on_state(100, "b1", state(2, hist=True)) == []
    assert tracker.usable() == []
    assert "online" in tracker.on_state(101, "b1", state(3))
    assert [v.board for v in tracker.usable()] == ["b1"]


def test_tracker_silence_with_connection_still_open():
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_status(0, "b1", "online")
    tracker.on_state(0, "b1", state(1))
    assert tracker.check(9.9) == []
    assert tracker.check(10.0) == ["b1"]
    assert tracker.boards["b1"].status == "silent"
    assert "online" in tracker.on_state(11, "b1", state(2))


def test_tracker_online_without_state_goes_silent():
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_status(0, "b1", "online")
    assert tracker.usable() == []  # no mode known yet: nothing to split on
    assert tracker.check(10) == ["b1"]


def test_tracker_counts_gaps_and_ignores_late_messages():
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_state(0, "b1", state(1))
    assert tracker.on_state(1, "b1", state(5)) == ["gap:3"]
    tracker.on_state(2, "b1", state(3))  # late: no new gap, sequence stays at 5
    assert tracker.boards["b1"].last_state_seq == 5
    assert tracker.boards["b1"].lost_states == 3
    tracker.on_event(2, "b1", {"boot": "a", "seq": 1})
    tracker.on_event(2, "b1", {"boot": "a", "seq": 3})
    assert tracker.boards["b1"].lost_events == 1


@pytest.mark.parametrize("mode,faults", [("SAFE", []), ("FAULT", ["oil:critical"]),
                                         ("SHUTDOWN", []), ("NORMAL", ["stuck"])])
def test_tracker_leaves_out_safe_and_faulted(mode, faults):
    tracker = BoardTracker(silence_timeout_s=10)
    tracker.on_state(0, "b1", state(1, mode=mode, faults=faults))
    assert tracker.usable() == []


# --- HeatMeter

def test_heat_formula():
    # 10 L/min warmed by 5 K: 10/60 kg/s * 4180 J/(kg K) * 5 K = 3483.3 W
    assert heat_w(10.0, 40.0, 45.0) == pytest.approx(3483.33, abs=0.01)


def test_heat_meter_efficiency_and_unknowns():
    meter = HeatMeter(smoothing_s=0)
    reading = meter.update(0, 40.0, 40.1, 6.0, 50.0)
    assert reading.heat_w == pytest.approx(6 / 60 * 4180 * 0.1)
    assert reading.efficiency == pytest.approx(reading.heat_w / 50.0)
    assert meter.update(1, None, 40.1, 6.0, 50.0).heat_w is None
    assert meter.update(2, 40.0, 40.1, 6.0, 0.1).efficiency is None


def test_heat_meter_smooths():
    meter = HeatMeter(smoothing_s=10)
    meter.update(0, 40.0, 40.0, 6.0, 50.0)
    reading = meter.update(10, 40.0, 40.2, 6.0, 50.0)
    assert 0 < reading.heat_w < heat_w(6.0, 40.0, 40.2)


# --- BudgetSplitter

def boards(*ranges):
    return [BoardCapacity(f"b{i}", low, high) for i, (low, high) in enumerate(ranges)]


def test_split_meets_budget_within_limits():
    split = BudgetSplitter().split(15.0, boards((2, 6.5), (2, 6.5), (2, 4.0)))
    assert split.total_w == pytest.approx(15.0)
    for b in boards((2, 6.5), (2, 6.5), (2, 4.0)):
        assert b.min_w <= split.setpoints_w[b.board] <= b.max_w
    # shares of what is above the floors follow headroom: 4.5 : 4.5 : 2
    assert split.setpoints_w["b0"] - 2 == pytest.approx(9 * 4.5 / 11)


def test_split_floors_and_ceilings():
    low = BudgetSplitter().split(3.0, boards((2, 6.5), (2, 6.5)))
    assert low.setpoints_w == {"b0": 2.0, "b1": 2.0} and low.unallocated_w == -1.0
    high = BudgetSplitter().split(50.0, boards((2, 6.5), (2, 6.5)))
    assert high.setpoints_w == {"b0": 6.5, "b1": 6.5} and high.unallocated_w == pytest.approx(37)


def test_split_redistributes_what_a_board_cannot_take():
    heavy = [BoardCapacity("a", 2, 3, weight=10.0), BoardCapacity("b", 2, 6.5, weight=1.0)]
    split = BudgetSplitter().split(8.0, heavy)
    assert split.setpoints_w["a"] == pytest.approx(3.0)
    assert split.setpoints_w["b"] == pytest.approx(5.0)
    assert split.total_w == pytest.approx(8.0)


def test_split_limited_board_gives_its_share_away():
    limited = capacity_from_state("a", state(1, power_w=3.0, selected="soc"))
    free = capacity_from_state("b", state(1, power_w=3.0, selected="power"))
    assert limited.max_w == 3.0 and free.max_w == 6.5
    split = BudgetSplitter().split(9.5, [limited, free])
    assert split.setpoints_w == pytest.approx({"a": 3.0, "b": 6.5})  # unlimited: 4.75 each


def test_capacity_rejects_bad_state():
    assert capacity_from_state("a", {"min_w": None, "max_w": 6}) is None
    assert capacity_from_state("a", {"min_w": 5, "max_w": 2}) is None
    assert capacity_from_state("a", {"min_w": 2, "max_w": math.inf}) is None


# --- TrimLoop

def test_trim_raises_electric_budget_when_heat_falls_short():
    trim = TrimLoop(kp=0.05, ki=0.01)
    assert trim.update(0, 100.0, None) == pytest.approx(100.0)
    electric = 100.0
    for t in range(1, 2000):
        heat = 0.8 * electric  # 20 % lost to the room
        electric = trim.update(float(t), 100.0, heat)
    assert electric == pytest.approx(125.0, rel=0.01)
    assert trim.update(2000, 0.0, 80.0) == 0.0


def test_trim_holds_factor_while_heat_unknown():
    trim = TrimLoop(kp=0.05, ki=0.01)
    for t in range(500):
        trim.update(float(t), 100.0, 90.0)
    held = trim.factor
    assert held > 1.0
    assert trim.update(600, 200.0, None) == pytest.approx(200.0 * held)


# --- ModuleInterlock

def test_interlock_sets_at_once_and_clears_after_delay():
    interlock = ModuleInterlock(flow_min_l_per_min=2.0, oil_max_c=70.0, clear_after_s=30)
    state_, changed = interlock.update(0, 6.0, 50.0)
    assert not state_.active and not changed
    state_, changed = interlock.update(1, 0.5, 50.0)
    assert state_.active and changed and "flow" in state_.reason
    assert interlock.update(2, 0.4, 50.0) == (state_, False)  # same cause: no republish
    assert interlock.update(3, 6.0, 50.0)[0].active
    assert interlock.update(32, 6.0, 50.0)[0].active
    state_, changed = interlock.update(33, 6.0, 50.0)
    assert not state_.active and changed


def test_interlock_fails_safe_on_missing_reading_and_has_hysteresis():
    interlock = ModuleInterlock(flow_min_l_per_min=2.0, oil_max_c=70.0, clear_after_s=0)
    assert interlock.update(0, None, 50.0)[0].active
    assert not interlock.update(1, 6.0, 50.0)[0].active
    assert interlock.update(2, 6.0, 70.0)[0].active
    assert interlock.update(3, 6.0, 69.0)[0].active  # within the 2 C hysteresis
    assert not interlock.update(4, 6.0, 67.9)[0].active
    unconfigured = ModuleInterlock(None, None)
    assert not unconfigured.update(0, None, None)[0].active


# --- EnergyLedger

def counters(electric, heat):
    return {"energy_electric_wh": electric, "energy_heat_wh": heat}


def test_ledger_survives_board_reboot_without_subtracting(tmp_path):
    ledger = EnergyLedger()
    ledger.board_sample("b1", "boot1", counters(100.0, 90.0), 0.0)
    ledger.board_sample("b1", "boot1", counters(110.0, 99.0), 3600.0)
    ledger.board_sample("b1", "boot1", counters(105.0, 95.0), 3601.0)  # late message: ignored
    assert ledger.boards["b1"].total_wh == {"electric": 10.0, "heat": 9.0}
    ledger.board_sample("b1", "boot2", counters(1.0, 0.5), 3700.0)  # lost its counters
    ledger.board_sample("b1", "boot2", counters(3.0, 2.5), 7200.0)  # new segment
    assert ledger.boards["b1"].total_wh == {"electric": 12.0, "heat": 11.0}
    assert ledger.boards["b1"].segments == 1
    ledger.board_sample("b1", "boot3", counters(4.0, 3.0), 7600.0)  # kept its counters
    assert ledger.boards["b1"].total_wh == {"electric": 13.0, "heat": 11.5}
    assert ledger.totals_wh() == {"electric": 13.0, "heat": 11.5}


def test_ledger_persists_rarely_and_reloads(tmp_path):
    store = StateStore(tmp_path)
    ledger = EnergyLedger(save_every_s=300)
    ledger.board_sample("b1", "boot1", counters(100.0, 90.0), 0.0)
    assert ledger.save_if_due(0, store)  # a new board: written at once
    ledger.board_sample("b1", "boot1", counters(101.0, 91.0), 600.0)
    # beyond what the file promised (no rate known yet): written before the totals go out
    assert ledger.save_if_due(10, store)
    ledger.board_sample("b1", "boot1", counters(101.5, 91.5), 700.0)
    assert not ledger.save_if_due(20, store)  # within the promise: the period decides
    assert not ledger.save_if_due(309, store)
    assert ledger.save_if_due(310, store)
    assert not ledger.save_if_due(900, store)  # nothing changed
    ledger.meter_sample(900, 100.0)
    ledger.meter_sample(936, 100.0)
    assert ledger.save_if_due(937, store, force=True)
    restarted = EnergyLedger()
    assert restarted.load(store, 1200.0) is None
    assert restarted.module_heat_metered_wh == pytest.approx(1.0)
    # energy during the restart
    restarted.board_sample("b1", "boot1", counters(103.0, 92.0), 1200.0)
    assert restarted.boards["b1"].total_wh == {"electric": 3.0, "heat": 2.0}


def test_ledger_damaged_file_starts_from_zero(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    ledger = EnergyLedger()
    assert "corrupt" in ledger.load(StateStore(tmp_path), 0.0)
    assert ledger.boards == {}
