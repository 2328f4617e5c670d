"""The board's lifetime energy counters (agent/energy_meter.py): a damaged or other-version
`energy.json` is kept beside the new one, raised as an event, and every state of that boot says
why the counter went back (issue 13, lesser item)."""

import json

import pytest

from agent.energy_meter import ENERGY_FILE, ENERGY_VERSION, EnergyMeter
from agent.mqtt.board_link import BoardLink
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.persist import StateStore
from agent.safety.events import EventLog
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

WALL_S = 1_700_000_000.0


def board(tmp_path, store: StateStore):
    """A simulated agent with its BoardLink on a Link that is never started (no broker needed:
    what it would send waits in the outbox)."""
    clock = SimClock(1000.0)
    sim = SimulatedAgent(tmp_path / "board", clock, seed=1, events=EventLog(journal=None))
    link = Link(LinkSettings("127.0.0.1", 1), client_id="b1", outbox=Outbox(tmp_path / "out"),
                boot="boot-1", wall_clock=lambda: WALL_S + clock())
    return sim, BoardLink(sim.agent, link, BoardTopics("s", "m", "b1"), energy_store=store)


def test_counters_survive_a_restart(tmp_path):
    store = StateStore(tmp_path)
    meter = EnergyMeter(store, report_period_s=1.0, now_s=0.0)
    assert meter.load(WALL_S) is None and meter.counter_reset is not None  # first start
    for second in range(1, 4):
        meter.count(float(second), 3600.0, 1800.0)
    meter.save(3.0)
    again = EnergyMeter(store, report_period_s=1.0, now_s=0.0)
    assert again.load(WALL_S) is None
    assert (again.electric_wh, again.heat_wh) == (2.0, 1.0)
    assert again.counter_reset is None


@pytest.mark.parametrize("damage", [
    "{not json",
    json.dumps({"format": "hearth-state", "version": ENERGY_VERSION + 1, "payload": {}}),
    "valid checksum, impossible value"])
def test_damaged_counter_file_is_kept_reported_and_the_reset_said(tmp_path, damage):
    store = StateStore(tmp_path)
    if damage == "valid checksum, impossible value":
        store.write(ENERGY_FILE, ENERGY_VERSION, {"electric_wh": -4.0, "heat_wh": 1e300})
        damage = (tmp_path / ENERGY_FILE).read_text()
    else:
        (tmp_path / ENERGY_FILE).write_text(damage)
    sim, link = board(tmp_path, store)
    kept = sorted(tmp_path.glob(f"{ENERGY_FILE}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == damage
    sim.run_for(3.0)  # events are handed out after a period's actuators are written
    events = [e for e in sim.agent.events.events if e.cause == "energy_counter_reset"]
    assert len(events) == 1 and kept[0].name in events[0].message
    queued = link.link.outbox.peek_kept()  # it goes out over MQTT too, once connected
    assert queued.topic.endswith("/event")
    assert queued.message["cause"] == "energy_counter_reset"
    state = link.state_payload(sim.agent.last_report)
    assert kept[0].name in state["counter_reset"]
    link.close()  # the next save writes fresh counters; the kept copy stays as it was
    assert kept[0].read_text() == damage
    assert EnergyMeter(store, 1.0, 0.0).load(WALL_S) is None


def test_a_counter_file_that_cannot_be_written_costs_the_save_not_the_board(tmp_path):
    store = StateStore(tmp_path / "not-a-directory")
    (tmp_path / "not-a-directory").write_text("a file where the directory should be")
    meter = EnergyMeter(store, report_period_s=1.0, now_s=0.0)
    meter.count(1.0, 5.0, None)
    assert "not saved" in meter.save(2.0)
