"""The module's energy totals on `leader/state` never go lower than any value sent before: not
across a leader that lost power between two saves of its ledger, not when a board goes offline,
not when a board's counter starts again (issue 14: Home Assistant's Energy dashboard takes a
drop of a `total_increasing` sensor as a meter reset and counts the lifetime again)."""

import json

import pytest

from agent.leader.ledger import LEDGER_FILE
from agent.persist import StateStore
from test_leader_input import Leader

KINDS = ("energy_electric_wh", "energy_heat_wh")


def published(leader: Leader) -> list[tuple[float, float]]:
    return [(state["energy_electric_wh"], state["energy_heat_wh"])
            for state in leader.link.on("leader/state")]


def never_lower(series: list[tuple[float, float]]) -> bool:
    return all(later[k] >= earlier[k] for earlier, later in zip(series, series[1:])
               for k in range(2))


STEP_WH = 10.0 * 10.0 / 3600.0
"""A board at 10 W reporting every 10 s."""


def test_totals_after_a_leader_crash_are_not_lower_than_before_it(tmp_path):
    store = StateStore(tmp_path)
    leader = Leader(store)
    for seq in range(1, 40):  # saved at the first period and 300 s later, not since
        leader.state("b1", seq, energy_electric_wh=seq * STEP_WH, energy_heat_wh=seq * STEP_WH / 2)
        leader.tick(10.0)
    before = published(leader)[-1]
    assert before == pytest.approx((38 * STEP_WH, 38 * STEP_WH / 2))
    # power lost: no close(), so nothing after the last due save reached the card
    restarted = Leader(store, start_s=leader.now[0] + 5.0)
    first = restarted.tick(1.0)
    assert first["energy_electric_wh"] >= before[0] and first["energy_heat_wh"] >= before[1]
    # the board reports on (it kept its counters): the totals stand, then rise with it, and
    # what was reported early is not counted twice
    for seq in range(40, 160):
        restarted.state("b1", seq, energy_electric_wh=seq * STEP_WH,
                        energy_heat_wh=seq * STEP_WH / 2)
        restarted.tick(10.0)
    series = published(leader) + published(restarted)
    assert never_lower(series)
    assert series[-1] == pytest.approx((158 * STEP_WH, 158 * STEP_WH / 2))


def test_totals_published_never_pass_what_the_file_promises(tmp_path):
    store = StateStore(tmp_path)
    leader = Leader(store)
    for seq in range(1, 30):
        leader.state("b1", seq, energy_electric_wh=seq * STEP_WH)
        snapshot = leader.tick(10.0)
        promised = json.loads((tmp_path / LEDGER_FILE).read_text())["payload"]["reported_max_wh"]
        assert snapshot["energy_electric_wh"] <= promised["electric"]


def test_totals_stay_when_a_board_goes_offline_and_its_counter_starts_again():
    leader = Leader()
    leader.state("b1", 1, energy_electric_wh=1.0, energy_heat_wh=0.9)
    leader.state("b2", 1, energy_electric_wh=2.0, energy_heat_wh=1.8)
    leader.tick(60.0)
    leader.state("b1", 2, energy_electric_wh=1.1, energy_heat_wh=1.0)
    leader.state("b2", 2, energy_electric_wh=2.1, energy_heat_wh=1.9)
    counted = leader.tick(60.0)
    assert counted["energy_electric_wh"] == pytest.approx(0.2)
    leader.deliver("b2", "status", "offline")  # its Last Will
    offline = leader.tick(60.0)
    leader.tick(60.0)  # and silent beyond the timeout
    # b1 reboots without its counter file: a new segment from its first value
    leader.state("b1", 1, boot="boot-b", energy_electric_wh=0.0, energy_heat_wh=0.0)
    reset = leader.tick(60.0)
    leader.state("b1", 2, boot="boot-b", energy_electric_wh=0.05, energy_heat_wh=0.04)
    after = leader.tick(60.0)
    assert offline["energy_electric_wh"] == reset["energy_electric_wh"] == pytest.approx(0.2)
    assert after["energy_electric_wh"] == pytest.approx(0.25)
    assert never_lower(published(leader))


def test_a_ledger_file_written_before_the_promise_reads_back_its_totals(tmp_path):
    store = StateStore(tmp_path)
    store.write(LEDGER_FILE, 1, {"boards": {"b1": {"boot": "a", "last": {"electric": 5.0,
                                                                         "heat": 4.0},
                                                   "total_wh": {"electric": 5.0, "heat": 4.0},
                                                   "segments": 0, "wall_s": 1.0}},
                                 "module_heat_metered_wh": 0.0})
    first = Leader(store).tick()
    assert (first["energy_electric_wh"], first["energy_heat_wh"]) == (5.0, 4.0)


@pytest.mark.parametrize("promise", ['"lots"', '{"electric": -1, "heat": 0}',
                                     '{"electric": 1e400, "heat": 0}'])
def test_a_damaged_promise_is_a_damaged_ledger_kept_aside(tmp_path, promise):
    (tmp_path / LEDGER_FILE).write_text(
        '{"format": "hearth-state", "version": 1, "payload": {"boards": {}, '
        f'"module_heat_metered_wh": 0.0, "reported_max_wh": {promise}}}}}')
    leader = Leader(StateStore(tmp_path))
    assert [e["cause"] for e in leader.link.on("leader/event")] == ["ledger_reset"]
    assert len(list(tmp_path.glob(f"{LEDGER_FILE}.damaged-*"))) == 1
