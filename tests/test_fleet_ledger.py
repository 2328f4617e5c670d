"""The site's ledger (agent/fleet/ledger*.py): increments that never go back and add up across
counter restarts and recorder restarts, uptime from the leaders' messages, events kept once,
the file's torn line repaired and a damaged one refused, and a recorder on a real Mosquitto."""

import json
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.fleet.ledger import SiteLedger, month_of, row_end_s
from agent.fleet.ledger_file import LedgerDamaged, LedgerFile
from agent.fleet.ledger_recorder import LedgerRecorder
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from tests.test_architecture import import_graph

STEP = st.one_of(
    st.tuples(st.just("rise"), st.floats(0.0, 500.0), st.floats(0.0, 500.0)),
    st.tuples(st.just("late"), st.just(0.0), st.just(0.0)),
    st.tuples(st.just("restart_kept"), st.just(0.0), st.just(0.0)),
    st.tuples(st.just("restart_lost"), st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    st.tuples(st.just("row"), st.just(0.0), st.just(0.0)),
    st.tuples(st.just("recorder_restart"), st.just(0.0), st.just(0.0)),
)


def leader_state(boot: str, electric_wh: float, heat_wh: float) -> dict:
    return {"v": 1, "boot": boot, "seq": 1, "ts": 0.0, "energy_electric_wh": electric_wh,
            "energy_heat_wh": heat_wh}


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["m1", "m2"]), STEP), max_size=60),
       first=st.floats(0.0, 1e6))
def test_increments_never_negative_and_sum_to_what_the_counters_rose(steps, first):
    """Whatever the leaders' counters do (rise, arrive late, carry on or go back at a restart)
    and however often the recorder restarts from its last row, every increment is >= 0 and
    their sum is exactly the rises the leaders counted after their first report."""
    ledger = SiteLedger()
    counters = {m: {"boot": "a", "electric": first, "heat": first / 2, "old": None}
                for m in ("m1", "m2")}
    rose = {m: {"electric": 0.0, "heat": 0.0} for m in counters}
    rows: list[dict] = []
    clock = [0.0]

    def close() -> None:
        rows.append(ledger.close_row(clock[0], clock[0] + 900.0))
        clock[0] += 900.0

    for module in counters:
        ledger.leader_state(module, leader_state("a", first, first / 2), clock[0])
    for module, (kind, electric, heat) in steps:
        counter = counters[module]
        if kind == "rise":
            counter["old"] = (counter["electric"], counter["heat"])
            counter["electric"] += electric
            counter["heat"] += heat
            rose[module]["electric"] += electric
            rose[module]["heat"] += heat
        elif kind == "late" and counter["old"] is not None:
            ledger.leader_state(module, leader_state(counter["boot"], *counter["old"]), clock[0])
            continue
        elif kind == "restart_kept":
            counter["boot"] = uuid.uuid4().hex
        elif kind == "restart_lost":
            counter["boot"] = uuid.uuid4().hex
            counter["electric"] *= electric  # a leader whose ledger came back lower
            counter["heat"] *= heat
            counter["old"] = None
        elif kind == "row":
            close()
            continue
        elif kind == "recorder_restart":
            close()
            ledger = SiteLedger.resume(json.loads(json.dumps(rows[-1])))
            continue
        ledger.leader_state(module, leader_state(counter["boot"], counter["electric"],
                                                 counter["heat"]), clock[0])
    close()
    for row in rows:
        assert all(wh >= 0.0 for part in ("electric_wh", "heat_wh")
                   for wh in row[part].values())
    for module in counters:
        for kind, part in (("electric", "electric_wh"), ("heat", "heat_wh")):
            summed = sum(row[part].get(module, 0.0) for row in rows)
            assert summed == pytest.approx(rose[module][kind], rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(totals=st.lists(st.floats(0.0, 1e4), min_size=1, max_size=30))
def test_cumulative_state_in_rows_never_goes_back(totals):
    """The follower state each row carries (what a recorder resumes from) is monotonic, even
    when the leader's counter jumps around within one boot (late messages)."""
    ledger = SiteLedger()
    previous = 0.0
    for index, total in enumerate(totals):
        ledger.leader_state("m1", leader_state("a", total, total), float(index))
        row = ledger.close_row(index * 900.0, (index + 1) * 900.0)
        cumulative = row["energy"]["modules"]["m1"]["total_wh"]["energy_electric_wh"]
        assert cumulative >= previous
        previous = cumulative


def test_uptime_counts_reported_time_and_not_silence_or_offline():
    ledger = SiteLedger(leader_timeout_s=30.0)
    for second in range(0, 301, 10):  # 300 s of states every 10 s
        ledger.leader_state("m1", leader_state("a", second, second), 1000.0 + second)
    ledger.leader_state("m1", leader_state("a", 400, 400), 1000.0 + 400)  # after 100 s silent
    ledger.leader_status("m1", "offline", 1000.0 + 410)
    ledger.leader_state("m1", leader_state("a", 410, 410), 1000.0 + 415)  # offline: not up
    row = ledger.close_row(1000.0, 1900.0)
    assert row["up_s"]["m1"] == pytest.approx(300.0 + 10.0)


def test_an_event_sent_twice_is_kept_once_and_its_text_bounded():
    ledger = SiteLedger()
    event = {"v": 1, "boot": "b1", "seq": 7, "ts": 5.0, "cause": "oil:critical",
             "severity": "critical", "message": "x" * 1000, "mode": "SAFE"}
    ledger.event("m1", "b03", event, 6.0)
    ledger.event("m1", "b03", event, 7.0)  # the broker re-sent it
    ledger.event("m1", "b04", event, 7.0)  # another board's own seq 7
    row = ledger.close_row(0.0, 900.0)
    assert [(e["board"], e["t"]) for e in row["events"]] == [("b03", 5.0), ("b04", 5.0)]
    assert len(row["events"][0]["message"]) == 200
    resumed = SiteLedger.resume(json.loads(json.dumps(row)))
    resumed.event("m1", "b03", event, 8.0)
    assert resumed.close_row(900.0, 1800.0)["events"] == []


def test_rows_line_up_on_the_quarter_hour_and_months_in_utc():
    assert row_end_s(1798761599.0) == 1798761600.0  # 2026-12-31 23:59:59 -> 2027-01-01 00:00
    assert month_of(1798761600.0 - 900.0) == "2026-12" and month_of(1798761600.0) == "2027-01"


def test_a_torn_last_line_is_kept_aside_and_cut_and_the_recorder_resumes(tmp_path):
    ledger_file = LedgerFile(tmp_path, "s1")
    ledger = SiteLedger()
    ledger.leader_state("m1", leader_state("a", 100.0, 90.0), 0.0)
    ledger_file.append("2026-12", ledger.close_row(0.0, 900.0))
    ledger.leader_state("m1", leader_state("a", 150.0, 130.0), 950.0)
    ledger_file.append("2026-12", ledger.close_row(900.0, 1800.0))
    whole = ledger_file.path("2026-12").read_bytes()
    ledger_file.path("2026-12").write_bytes(whole[:-40])  # a power cut in the second append
    with pytest.raises(LedgerDamaged, match="line 2: torn"):
        ledger_file.read_month("2026-12")

    row, repaired = ledger_file.recover_last_row(2000.0)
    assert "line 2 of 2" in repaired and "kept as s1-2026-12.jsonl.damaged-" in repaired
    assert (tmp_path / repaired.split("kept as ")[1].split(",")[0]).read_bytes() == whole[:-40]
    assert len(ledger_file.read_month("2026-12")) == 1
    resumed = SiteLedger.resume(row)
    resumed.leader_state("m1", leader_state("a", 160.0, 140.0), 2010.0)
    again = resumed.close_row(1800.0, 2700.0)
    assert again["electric_wh"] == {"m1": 60.0} and again["heat_wh"] == {"m1": 50.0}


def test_a_damaged_line_in_the_middle_is_refused_by_name(tmp_path):
    ledger_file = LedgerFile(tmp_path, "s1")
    for start in (0.0, 900.0, 1800.0):
        ledger_file.append("2026-12", SiteLedger().close_row(start, start + 900.0))
    lines = ledger_file.path("2026-12").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"start_s":900.0', b'"start_s":901.0')
    ledger_file.path("2026-12").write_bytes(b"".join(lines))
    with pytest.raises(LedgerDamaged, match=r"s1-2026-12.jsonl line 2: checksum mismatch"):
        ledger_file.read_month("2026-12")


def test_the_board_agent_never_imports_the_ledger():
    graph = import_graph()
    reached, queue = set(), ["agent.board_agent", "agent.commands.agent_cmd"]
    while queue:
        module = queue.pop()
        if module not in reached:
            reached.add(module)
            queue.extend(graph.get(module, ()))
    assert "agent.fleet.ledger" in graph  # the graph sees the package
    assert not [module for module in reached if module.startswith("agent.fleet")]


def test_recorder_writes_rows_from_a_real_broker(mosquitto, tmp_path):
    broker = mosquitto()
    wall = [1796083200.0 + 899.0]  # 2026-12-01 00:14:59 UTC

    def link(name: str) -> Link:
        return Link(LinkSettings(host=broker.host, port=broker.port), client_id=name,
                    outbox=Outbox(tmp_path / name), boot=name, wall_clock=lambda: wall[0])

    leader, listener = link("leader-m1"), link("ledger")
    ledger_file = LedgerFile(tmp_path / "ledger", "s1")
    recorder = LedgerRecorder("s1", listener, ledger_file, lambda: wall[0])
    recorder.start()
    listener.start()
    leader.start()
    deadline = time.monotonic() + 10.0
    while not (listener.connected and leader.connected) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the subscription reaches the broker
    base = "hearth/v1/s1/m1"
    leader.publish(f"{base}/leader/state", {"energy_electric_wh": 1000.0,
                                            "energy_heat_wh": 900.0}, qos=1)
    leader.publish(f"{base}/leader/state", {"energy_electric_wh": 1012.5,
                                            "energy_heat_wh": 911.0}, qos=1)
    leader.publish(f"{base}/b03/event", {"cause": "i2c:oil", "severity": "error",
                                         "message": "oil sensor silent", "mode": "SAFE"}, qos=1)
    deadline = time.monotonic() + 10.0
    while len(recorder.ledger.events) < 1 and time.monotonic() < deadline:
        listener.poll(timeout_s=0.1)
    wall[0] += 2.0  # past the quarter hour
    recorder.tick()
    leader.close()
    listener.close()
    rows = ledger_file.read_month("2026-12")
    assert len(rows) == 1
    assert rows[0]["start_s"] == 1796083200.0 + 899.0 and rows[0]["end_s"] == 1796084100.0
    assert rows[0]["electric_wh"] == {"m1": 12.5} and rows[0]["heat_wh"] == {"m1": 11.0}
    assert [(e["board"], e["cause"], e["severity"]) for e in rows[0]["events"]] == [
        ("b03", "i2c:oil", "error")]
