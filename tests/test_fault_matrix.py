"""The fault matrix (DESIGN.md section 4): every safety cause injected through the simulated
hardware or the process boundary — never by calling the supervisor — with, for each: the
event naming the cause and its value, safe actuator settings within one loop period of the
cause becoming visible, the final mode, and at every simulated step no actuator setting
beyond what the mode allows. The run writes reports/fault-matrix.md.

docs/fault-matrix.md is the committed copy, and each row is checked against it: the figures
are simulated time on a seeded board, so a run repeats them exactly and any change shows.
The MQTT rows run on a real Mosquitto at its wall-clock pace: they check everything but
their detection time, which they leave out ("-").
After a change that moves them, copy reports/fault-matrix.md (from a full run of this file)
over docs/fault-matrix.md. A new row is a Case in CASES, or, when its cause is not injected
on a running board (a restart, a second process), a test of its own that passes its Outcome
to `record` and whose row name is in STANDALONE_ROWS."""

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import pytest

from agent.board_state import BoardState
from agent.mqtt.link import DUPLICATE_IDENTITY
from agent.persist import StateStore
from agent.safety.events import EventLog
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from safety_invariants import actuators, assert_mode_respected, is_safe
from test_broker_config import Client
from test_mqtt_board import EPOCH, Board
from test_mqtt_link import Listener
from twin_boards import Twin, generated_broker, run_twins, twin_settings

PERIOD_S = 0.1
WARMUP_S = 40.0
REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "reports" / "fault-matrix.md"
COMMITTED = REPO / "docs" / "fault-matrix.md"
HEADER = ["# Fault matrix", "",
          f"Written by tests/test_fault_matrix.py (loop period {PERIOD_S} s, simulated time on "
          "seeded boards, so every figure repeats exactly). Detection: from injection to the "
          "supervisor's event (the check's own window included); '-' for the MQTT rows, "
          "which run on a real Mosquitto at its wall-clock pace and would not repeat. "
          "Reaction: loop periods from the cause being visible to SAFE actuator settings.", "",
          "| cause | injected through | event | detection (s) | reaction (periods) | final |",
          "| --- | --- | --- | --- | --- | --- |"]
STANDALONE_ROWS = ("damaged latch file", "poweroff command failing",
                   "wall clock jump (+1 year, -5 h)", "poisoned message", "duplicate identity")
"""Rows written by tests of their own (after CASES, in this order)."""


@dataclasses.dataclass
class Case:
    name: str
    injected_by: str
    inject: Callable
    cause: str
    final: str                       # recovered | latched | shutdown | limited | unchanged
    visible: Callable = None         # the agent's readings show the cause (None: a check's window)
    clear: Callable = None
    detect_within_s: float = 1.0
    run_s: float = 30.0
    safe: bool = True
    setpoint_w: float = 5.5


@dataclasses.dataclass
class Outcome:
    name: str
    cause: str
    injected_by: str
    detection_s: float | None        # None: wall-clock time on a real broker, not repeatable
    reaction_periods: int | None
    final_mode: str


def set_plant(**values):
    def inject(sim):
        for key, value in values.items():
            setattr(sim.board.plant, key, value)
    return inject


def ramp_oil(to_c, k_per_s):
    """Heat arriving through the oil at a physical rate (a neighbour, a hot return)."""
    def drive(sim):
        plant = sim.board.plant
        plant.oil_c = min(to_c, plant.oil_c + k_per_s * PERIOD_S)
    return drive


def chip_fault(chip, kind):
    def inject(sim):
        getattr(getattr(sim.board, chip), f"inject_{kind}")()
    return inject


def chip_clear(chip):
    return lambda sim: getattr(sim.board, chip).clear_faults()


def fault_flag(name, value):
    return lambda sim: setattr(sim.board.faults, name, value)


def set_add(name, member):
    return lambda sim: getattr(sim.board.faults, name).add(member)


def stuck(sensor, value=None):
    def inject(sim):
        sim.board.faults.stuck[sensor] = (sim.board.current_value(sensor) if value is None
                                          else value)
    return inject


def power_stuck_at_zero(sim):
    """The INA219 stops converting with its current register at zero: it reads 0 W while the
    board draws its real power (the board no longer updates the emulated chip)."""
    stuck("board_power")(sim)
    sim.board.ina219.set_current(0.0)


def unstuck(sensor):
    return lambda sim: sim.board.faults.stuck.pop(sensor, None)


def reads_at_or_above(reading, celsius):
    """The cause is visible once the agent's own reading of the sensor shows it."""
    def visible(sim):
        value = sim.agent.readings.get(reading)
        return value is not None and value.ok and value.value >= celsius
    return visible


def always(sim):
    return True


def offer(value):
    def inject(sim):
        sim.agent.set_setpoint(value, "leader")
    return inject


def low_then_heat_hard(sim):
    sim.agent.set_setpoint(3.0)
    sim.run_for(20)
    stuck("soc")(sim)
    sim.agent.set_setpoint(5.5)


def runaway_at_minimum(sim):
    """Oil heated from outside pushes the SoC past its warning while the board is at its
    minimum power (the oil's own limit stage holds it there)."""
    sim.board.plant.water_inlet_c = 90.0
    return ramp_oil(64.0, 0.5)


def config_edit(sim):
    path = sim.config_path
    path.write_text(path.read_text() + "\n[limits]\nsoc_warning_c = 68.0\n")


CASES = [
    Case("SoC critical", "plant: heat burst in the SoC", set_plant(soc_c=78.5),
         "overtemp:SoC:critical", "latched", visible=reads_at_or_above("soc", 78.0)),
    Case("SoC warning", "plant: hot inlet water 52 C", set_plant(water_inlet_c=52.0, oil_c=52.0),
         "overtemp:SoC:warning", "limited", safe=False, detect_within_s=60.0, run_s=70.0,
         clear=set_plant(water_inlet_c=30.0, oil_c=30.0)),
    Case("oil critical", "plant: oil heated from outside",
         lambda sim: (set_plant(water_inlet_c=85.0)(sim), ramp_oil(72.0, 1.5))[1],
         "overtemp:oil:critical", "latched", detect_within_s=30.0,
         visible=reads_at_or_above("oil", 70.0),
         clear=set_plant(water_inlet_c=30.0, oil_c=30.0)),
    Case("thermal runaway (rising at minimum power)", "plant: hot oil while capped",
         runaway_at_minimum, "thermal_runaway:rising", "latched", detect_within_s=150.0,
         run_s=160.0, clear=set_plant(water_inlet_c=30.0, oil_c=30.0)),
    Case("thermal runaway (not rising at high power)", "SoC reading frozen before a step up",
         low_then_heat_hard, "thermal_runaway:not_rising", "latched", detect_within_s=105.0,
         run_s=110.0, clear=unstuck("soc")),
    Case("water flow lost (pump off)", "plant: pump off", set_plant(water_flow_l_per_min=0.0),
         "flow_lost", "recovered", detect_within_s=16.0,
         clear=set_plant(water_flow_l_per_min=0.5)),
    Case("flow meter dead", "GPIO: pulses stop", fault_flag("flow_meter_dead", True),
         "flow_lost", "recovered", detect_within_s=16.0,
         clear=fault_flag("flow_meter_dead", False)),
    Case("leader interlock", "leader interlock input",
         lambda sim: sim.agent.set_interlock("module flow lost"), "interlock", "recovered",
         visible=always, clear=lambda sim: sim.agent.set_interlock("")),
    Case("power sensor NACK", "I2C: INA219 stops acknowledging", chip_fault("ina219", "nack"),
         "sensor:board_power.power_w", "recovered", visible=always,
         clear=chip_clear("ina219")),
    Case("oil sensor I2C timeout", "I2C: TMP117 holds the bus", chip_fault("tmp117", "timeout"),
         "sensor:oil", "recovered", visible=always, clear=chip_clear("tmp117")),
    Case("SoC thermal zone missing", "sysfs: thermal_zone0/temp gone",
         fault_flag("soc_zone_absent", True), "sensor:soc", "recovered",
         visible=always, clear=fault_flag("soc_zone_absent", False)),
    Case("SoC reading implausible", "sysfs: thermal zone reads 150 C", stuck("soc", 150.0),
         "sensor:soc", "recovered", visible=always, clear=unstuck("soc")),
    Case("power reading stuck high", "I2C: INA219 frozen at 5.5 W, then a setpoint cut",
         lambda sim: (stuck("board_power")(sim), sim.agent.set_setpoint(3.0, "leader"))[0],
         "thermal_runaway:not_rising", "latched", detect_within_s=125.0, run_s=140.0,
         clear=unstuck("board_power")),
    Case("power reading stuck at 0 W", "I2C: INA219 frozen at 0 W", power_stuck_at_zero,
         "sensor:board_power.power_w", "recovered", detect_within_s=121.0, run_s=260.0,
         setpoint_w=5.0, clear=unstuck("board_power")),
    Case("DS18B20 CRC error", "1-wire: crc=.. NO", set_add("w1_crc_error", "water_in"),
         "sensor:water_in", "unchanged", safe=False, detect_within_s=2.0),
    Case("DS18B20 85.000 power-on value", "1-wire: power-on scratchpad",
         set_add("w1_power_on", "water_out"), "sensor:water_out", "unchanged", safe=False,
         detect_within_s=2.0),
    Case("DS18B20 absent", "1-wire: device gone", set_add("w1_absent", "water_in"),
         "sensor:water_in", "unchanged", safe=False, detect_within_s=2.0),
    Case("under-voltage", "firmware: get_throttled bit 0", set_plant(under_voltage=True),
         "under_voltage", "limited", safe=False, clear=set_plant(under_voltage=False)),
    Case("leader silent", "link: no contact", lambda sim: None, "setpoint_source", "unchanged",
         safe=False, detect_within_s=40.0, run_s=45.0),
    Case("malformed setpoint", "command: setpoint 'lots'",
         offer("lots"), "setpoint_rejected", "unchanged",
         safe=False),
    Case("out-of-range setpoint", "command: setpoint 99 W",
         offer(99.0), "setpoint_rejected", "unchanged",
         safe=False),
    Case("critical temperature that SAFE cannot clear", "sysfs: SoC reads 79 C for minutes",
         stuck("soc", 79.0), "shutdown", "shutdown", detect_within_s=125.0, run_s=140.0),
    Case("config changed on disk", "file: site config edited", config_edit, "config_changed",
         "unchanged", safe=False, detect_within_s=6.0),
]


def run_case(case: Case, directory: Path, **agent_kwargs) -> tuple[SimulatedAgent, Outcome]:
    sim = SimulatedAgent(directory, SimClock(), seed=11, **agent_kwargs)
    sim.agent.set_setpoint(case.setpoint_w, "leader")
    sim.run_for(WARMUP_S, lambda report: sim.agent.setpoints.contact(sim.clock()))
    assert sim.agent.last_report.mode == "NORMAL", "healthy before the fault"
    events_before = len(sim.agent.events.events)
    injected_at = sim.clock()
    driver = case.inject(sim)
    return sim, observe(case, sim, injected_at, events_before, driver)


def observe(case: Case, sim: SimulatedAgent, injected_at: float, events_before: int,
            driver: Callable | None) -> Outcome:
    """Run the board for case.run_s after the injection and measure what it did."""
    keep_alive = case.name != "leader silent"
    visible_at = event_at = None
    safe_ticks = []
    for _ in range(round(case.run_s / PERIOD_S)):
        if keep_alive:
            sim.agent.setpoints.contact(sim.clock())
        if driver is not None:
            driver(sim)
        sim.clock.advance(PERIOD_S)
        sim.board.step(PERIOD_S)
        report = sim.agent.tick()
        if visible_at is None and case.visible is not None and case.visible(sim):
            visible_at = sim.clock()
        assert_mode_respected(sim, report)
        new = list(sim.agent.events.events)[events_before:]
        if event_at is None:
            event_at = next((e.time for e in new if e.cause.startswith(case.cause)), None)
        if is_safe(sim):
            safe_ticks.append(sim.clock())
    events = [e for e in list(sim.agent.events.events)[events_before:]
              if e.cause.startswith(case.cause)]
    assert events, f"no event for {case.cause}"
    assert events[0].value is not None, "the event carries the value"
    assert event_at - injected_at <= case.detect_within_s + 1e-9
    reaction = None
    if case.safe:
        start = visible_at if visible_at is not None else event_at
        safe_at = next((t for t in safe_ticks if t >= start - 1e-9), None)
        assert safe_at is not None, "SAFE settings applied"
        reaction = round((safe_at - start) / PERIOD_S)
        assert reaction <= 1, f"SAFE settings {reaction} periods after the cause was visible"
        unsafe_after = round((sim.clock() - safe_at) / PERIOD_S) + 1 - sum(
            1 for t in safe_ticks if t >= safe_at - 1e-9)
        assert unsafe_after == 0, (f"the cause is still there, yet the board left SAFE settings "
                                   f"for {unsafe_after} periods after reacting")
    return Outcome(case.name, case.cause, case.injected_by, event_at - injected_at, reaction,
                   sim.agent.last_report.mode)


def finish(case: Case, sim: SimulatedAgent) -> str:
    """Clear the cause and see how the board ends: recovered, latched (until reset), ..."""
    if case.clear is not None:
        case.clear(sim)
    sim.run_for(60, lambda report: (sim.agent.setpoints.contact(sim.clock()),
                                    assert_mode_respected(sim, report)))
    mode = sim.agent.last_report.mode
    if case.final == "recovered":
        assert mode == "NORMAL"
    elif case.final == "latched":
        assert mode == "FAULT", "a latched fault outlives its cause"
        accepted, reason = sim.agent.supervisor.reset(sim.clock())
        assert accepted, reason
        sim.run_for(30, lambda report: sim.agent.setpoints.contact(sim.clock()))
        assert sim.agent.last_report.mode == "NORMAL"
        return "latched, cleared by reset"
    elif case.final == "shutdown":
        assert mode == "SHUTDOWN"
        assert sim.poweroff_commands == [["systemctl", "poweroff"]]
    elif case.final == "limited":
        assert mode in ("NORMAL", "LIMITED")
    elif case.final == "unchanged":
        assert mode == "NORMAL"
    return case.final


def matrix_row(outcome: Outcome) -> str:
    detection = "-" if outcome.detection_s is None else f"{outcome.detection_s:.1f}"
    reaction = "-" if outcome.reaction_periods is None else str(outcome.reaction_periods)
    return (f"| {outcome.name} | {outcome.injected_by} | `{outcome.cause}` | "
            f"{detection} | {reaction} | {outcome.final_mode} |")


def committed_rows() -> dict[str, str]:
    """docs/fault-matrix.md's table rows by their first column."""
    lines = COMMITTED.read_text(encoding="utf-8").splitlines()[len(HEADER):]
    return {line.split(" | ")[0].removeprefix("| "): line for line in lines if line}


def record(outcomes: list, outcome: Outcome) -> None:
    """Add a row to the report and check it against the committed copy."""
    outcomes.append(outcome)
    generated = matrix_row(outcome)
    committed = committed_rows().get(outcome.name)
    assert committed == generated, (
        f"docs/fault-matrix.md row {outcome.name!r} is {committed!r}; this run gives "
        f"{generated!r}. If the change is meant, run this file whole and copy "
        "reports/fault-matrix.md over docs/fault-matrix.md")


@pytest.fixture(scope="module")
def outcomes():
    collected: list[Outcome] = []
    yield collected
    if len(collected) < len(CASES) + len(STANDALONE_ROWS):
        return  # a partial run (-k, -x) must not leave a partial report to be copied
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(HEADER + [matrix_row(o) for o in collected]) + "\n")


def test_committed_matrix_has_every_row_in_order():
    """Row by row the runs check the figures; this checks nothing is missing or left over."""
    lines = COMMITTED.read_text(encoding="utf-8").splitlines()
    assert lines[:len(HEADER)] == HEADER
    assert list(committed_rows()) == [c.name for c in CASES] + list(STANDALONE_ROWS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_matrix(case, sim_dir, outcomes):
    sim, outcome = run_case(case, sim_dir)
    final = finish(case, sim)
    record(outcomes, dataclasses.replace(outcome, final_mode=final))
    sim.agent.close()


def test_damaged_latch_file_starts_the_board_in_fault(sim_dir, outcomes):
    """A critical over-temperature is latched and saved; the latch file is then damaged (a
    power cut on a worn card) and the agent restarts: it must come up in FAULT, not heat."""
    case = Case("damaged latch file", "file: latched.json truncated, then a restart", None,
                "state_file:latched", "latched", visible=always, run_s=40.0)
    store = StateStore(sim_dir / "state")
    events = EventLog(journal=None)
    state = BoardState(store, events, 0.0, 1_790_000_000.0)
    before = SimulatedAgent(sim_dir / "before", SimClock(), seed=11, events=events,
                            save_latched=state.save_latched, latched=state.latched)
    before.agent.set_setpoint(case.setpoint_w, "leader")
    before.run_for(WARMUP_S, lambda report: before.agent.setpoints.contact(before.clock()))
    set_plant(soc_c=78.5)(before)
    before.run_for(1)
    assert before.agent.last_report.mode == "FAULT"
    before.agent.close()
    latch_file = store.path("latched.json")
    latch_file.write_bytes(latch_file.read_bytes()[:60])

    clock = SimClock()
    injected_at = clock()
    events = EventLog(journal=None)
    state = BoardState(store, events, injected_at, 1_790_000_000.0)
    sim = SimulatedAgent(sim_dir / "after", clock, seed=11, events=events,
                         save_latched=state.save_latched, latched=state.latched)
    sim.agent.set_setpoint(case.setpoint_w, "leader")
    outcome = observe(case, sim, injected_at, 0, None)
    record(outcomes, dataclasses.replace(outcome, final_mode=finish(case, sim)))
    sim.agent.close()


def test_poweroff_command_failing_leaves_the_board_safe(sim_dir, outcomes):
    def failing_poweroff(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    case = Case("poweroff command failing", "process: poweroff cannot run", stuck("soc", 79.0),
                "poweroff_failed", "shutdown", detect_within_s=135.0, run_s=140.0)
    sim = SimulatedAgent(sim_dir, SimClock(), seed=11)
    sim.agent.supervisor.shutdown.run = failing_poweroff
    sim.agent.set_setpoint(case.setpoint_w, "leader")
    sim.run_for(WARMUP_S, lambda report: sim.agent.setpoints.contact(sim.clock()))
    injected_at = sim.clock()
    case.inject(sim)
    sim.run_for(case.run_s, lambda report: assert_mode_respected(sim, report))
    failed = [e for e in sim.agent.events.events if e.cause == "poweroff_failed"]
    assert failed and "by hand" in failed[0].message
    assert sim.agent.last_report.mode == "SHUTDOWN" and is_safe(sim)
    assert actuators(sim)["workload_frozen"]
    record(outcomes, Outcome(case.name, case.cause, case.injected_by,
                             failed[0].time - injected_at, 0, "shutdown, board left SAFE"))


def test_wall_clock_jump_changes_nothing(sim_dir, monkeypatch, outcomes):
    """The agent runs on the monotonic clock only: a wall-clock jump (NTP, an RTC-less boot)
    must not look like a stale sensor, a silent leader or an expired setpoint."""
    sim = SimulatedAgent(sim_dir, SimClock(), seed=11)
    sim.agent.set_setpoint(5.5, "leader")
    sim.run_for(WARMUP_S, lambda report: sim.agent.setpoints.contact(sim.clock()))
    events_before = len(sim.agent.events.events)
    real_time = time.time
    for jump_s in (86400.0 * 365, -3600.0 * 5):
        monkeypatch.setattr(time, "time", lambda: real_time() + jump_s)
        reports = []
        sim.run_for(10, lambda report: (sim.agent.setpoints.contact(sim.clock()),
                                        reports.append(report)))
        assert all(r.mode == "NORMAL" for r in reports)
    assert list(sim.agent.events.events)[events_before:] == []
    record(outcomes, Outcome("wall clock jump (+1 year, -5 h)", "-", "process: time.time",
                             0.0, None, "unchanged, no event"))


def test_poisoned_messages_change_nothing_and_are_rejected(mosquitto, tmp_path, outcomes):
    """JSON that any sender can write but no role can represent, from a client on the broker
    (a compromised account, a buggy tool): a command whose id is a lone UTF-16 surrogate, an
    interlock whose reason is one, a leader setpoint of 10^400. The board must tick on as it
    was, answer the command with a reply that can be sent, and count and report the rest."""
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    board = Board(broker, tmp_path)
    sim, agent, topics = board.sim, board.agent, board.topics
    modes = []

    def tick(report):
        agent.setpoints.contact(sim.clock())
        assert_mode_respected(sim, report)
        modes.append(report.mode)

    def step():
        sim.run_for(PERIOD_S, tick)

    agent.set_setpoint(5.5, "leader")
    sim.run_for(WARMUP_S, tick)
    # The board subscribes as it connects, before it sends anything: once one of its states
    # is here, the broker holds its subscriptions.
    listener.wait(lambda: any(t == topics.state for t, _ in listener.received), step=step)
    before = agent.status()
    assert before.mode == "NORMAL", "healthy before the poison"
    modes.clear()

    def poison(fields: dict, seq: int) -> str:
        # json.dumps writes a lone surrogate as the escape \ud800, which is valid JSON
        return json.dumps({"v": 1, "boot": "hostile", "seq": seq, "ts": EPOCH + sim.clock(),
                           **fields})

    hostile = Client(broker.port, client_id="hostile")
    hostile.connect(broker.host)
    try:
        hostile.publish(topics.command("setpoint"), poison(
            {"id": "\ud800", "by": "operator", "args": {"watts": 3.0}}, 1))
        hostile.publish(topics.interlock, poison({"active": True, "reason": "\ud800"}, 2))
        hostile.publish(topics.setpoint, poison({"setpoint_w": 10**400}, 3))
    finally:
        hostile.close()
    listener.wait(lambda: listener.on(topics.reply) and sum(board.link.rejected.values()) == 3,
                  step=step)
    step()
    (reply,) = listener.on(topics.reply)
    raw_reply = next(payload for topic, payload in listener.received if topic == topics.reply)
    raw_reply.decode("utf-8")  # what the board answers can be sent and read
    assert reply["status"] == "rejected" and reply["id"] is None, reply
    assert "surrogate" in reply["reason"] and "\\ud800" in reply["reason"], reply
    assert dict(board.link.rejected) == {"command": 1, "interlock": 1, "setpoint": 1}
    rejected = [e for e in board.raised if e.cause == "mqtt:rejected"]
    assert sorted(e.value for e in rejected) == ["interlock", "setpoint"], rejected
    after = agent.status()
    assert modes and set(modes) == {"NORMAL"}, set(modes)
    assert (after.setpoint_w, after.setpoint_source, dict(after.latched), after.active) == (
        before.setpoint_w, before.setpoint_source, dict(before.latched), before.active)
    assert agent.supervisor.interlock_reason == ""
    assert board.link.link.connected and board.link.link.handler_errors == 0
    for link in (board.link, listener):
        link.close()
    record(outcomes, Outcome("poisoned message", "mqtt:rejected",
                             "MQTT: lone surrogate in a command id and an interlock reason, "
                             "setpoint 10^400", None, None, "unchanged, rejected"))


def test_duplicate_identity_is_reported_once_and_both_boards_run_on(tmp_path, outcomes):
    """Two boards flashed with one identity, on the broker config `hearth broker-config`
    writes: the broker closes each one's connection when the other logs in. That is for the
    operator to fix, once told; neither board may stop, nor change its mode, over it."""
    find_s, observe_s = 20.0, 8.0
    account, broker = generated_broker(tmp_path)
    twins = [Twin(twin_settings(broker, account), tmp_path / name) for name in ("one", "two")]
    modes = {id(twin): [] for twin in twins}

    def tick(twin, report):
        twin.sim.agent.setpoints.contact(twin.clock())
        assert_mode_respected(twin.sim, report)
        modes[id(twin)].append(report.mode)

    try:
        for twin in twins:
            twin.sim.agent.set_setpoint(5.5, "leader")
            twin.sim.run_for(WARMUP_S, lambda report, twin=twin: tick(twin, report))
            assert twin.sim.agent.last_report.mode == "NORMAL", "healthy before the twin"
            modes[id(twin)].clear()
        run_twins(twins, find_s, until=lambda: any(twin.duplicates() for twin in twins),
                  on_tick=tick)
        assert any(twin.duplicates() for twin in twins), (
            f"no {DUPLICATE_IDENTITY} in {find_s} s; connections made: "
            f"{[twin.link.connects for twin in twins]}")
        run_twins(twins, observe_s, on_tick=tick)  # past a backoff step: no second report
    finally:
        for twin in twins:
            twin.board_link.close()
        broker.stop()
    reported = [event for twin in twins for event in twin.duplicates()]
    assert len(reported) == 1, [event.message for event in reported]
    for twin in twins:
        seen = modes[id(twin)]
        assert len(seen) >= observe_s / 0.2 and set(seen) == {"NORMAL"}, (len(seen), set(seen))
    record(outcomes, Outcome("duplicate identity", DUPLICATE_IDENTITY,
                             "MQTT: two boards with one identity, generated broker config",
                             None, None, "unchanged, reported once"))


def test_a_stuck_power_reading_is_trusted_again_only_once_it_moves_beyond_its_noise(sim_dir):
    """Judged stuck at 0 W, the INA219 then jitters a few mW (a stuck converter's last bit,
    not a working sensor): the board stays SAFE. Once it reads the board's real power again
    it is trusted and the board ramps back up."""
    sim = SimulatedAgent(sim_dir, SimClock(), seed=11)
    sim.agent.set_setpoint(5.0, "leader")

    def keep_contact(report):
        sim.agent.setpoints.contact(sim.clock())

    sim.run_for(WARMUP_S, keep_contact)
    power_stuck_at_zero(sim)
    sim.run_for(125, keep_contact)
    assert sim.agent.last_report.mode == "SAFE"
    sim.board.ina219.set_current(0.008)  # 5 V x 8 mA = 0.04 W, within the 0.05 W noise
    sim.run_for(30, lambda report: (keep_contact(report), assert_mode_respected(sim, report)))
    assert 0.0 < sim.agent.readings["board_power.power_w"].value <= 0.05
    assert sim.agent.last_report.mode == "SAFE" and is_safe(sim)
    unstuck("board_power")(sim)
    sim.run_for(30, keep_contact)
    assert sim.agent.last_report.mode == "NORMAL"
    sim.agent.close()
