"""Safety across the process boundary: systemd notifications on a real datagram socket,
`hearth failsafe` after the agent is SIGKILLed at high power, latched faults that survive a
restart, and damaged state files that cost an event, not the agent."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from agent.persist import StateStore
from agent.board_state import BoardState
from agent.safety.events import EventLog
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.systemd_notify import Notifier
from safety_invariants import assert_mode_respected, is_safe

POLICY = "root/sys/devices/system/cpu/cpufreq/policy0"
WORKLOAD = "root/sys/fs/cgroup/hearth.slice/hearth-workload.slice"
HEATFILL = "root/sys/fs/cgroup/hearth.slice/hearth-heatfill.slice"


def receive_all(sock) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_sd_notify_ready_status_and_watchdog_only_when_healthy(sim_dir):
    path = str(sim_dir / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    sim = SimulatedAgent(sim_dir / "board", SimClock(), seed=5)
    notifier = Notifier(path)
    ticks = []
    received = []

    def sleep(seconds):
        """Time passes: systemd reads its socket, the simulated board moves on."""
        received.extend(receive_all(server))
        sim.clock.advance(sim.agent.period_s)
        sim.board.step(sim.agent.period_s)

    def messages_so_far():
        messages = received + receive_all(server)
        received.clear()
        return messages

    def stop_after(count):
        def should_stop():
            ticks.append(None)
            return len(ticks) > count
        return should_stop

    sim.agent.run(sleep, stop_after(20), notifier)
    messages = messages_so_far()
    assert messages[0] == "READY=1\nSTATUS=mode STARTING"
    assert "WATCHDOG=1" not in messages, "no watchdog while the flow window is still unknown"
    ticks.clear()
    sim.agent.run(sleep, stop_after(150), notifier)
    messages = messages_so_far()
    assert messages.count("WATCHDOG=1") > 50
    assert any("STATUS=mode NORMAL" in m for m in messages)
    sim.board.ina219.inject_nack()
    ticks.clear()
    sim.agent.run(sleep, stop_after(20), notifier)
    messages = messages_so_far()
    assert "WATCHDOG=1" not in messages[1:], "a dead power sensor stops the watchdog pets"
    assert any("STATUS=mode SAFE" in m for m in messages) and messages[-1] == "STOPPING=1"
    notifier.close()
    server.close()


def test_notifier_without_systemd_does_nothing():
    assert Notifier(None).watchdog() is False


def test_abstract_socket_address():
    assert Notifier("@hearth/notify").address == "\0hearth/notify"


def test_failsafe_after_sigkill_at_high_power(sim_dir):
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "agent", "--sim", "--sim-dir", str(sim_dir),
         "--setpoint", "6.0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    max_freq = sim_dir / POLICY / "scaling_max_freq"
    seen = []
    for line in agent.stdout:  # one state line a second; wait for full power in NORMAL
        seen.append(line)
        if "mode=NORMAL" in line and "freq=1500 MHz" in line:
            break
        if len(seen) > 60:
            agent.kill()
            pytest.fail("the agent never reached high power:\n" + "".join(seen))
    assert (sim_dir / HEATFILL / "cgroup.freeze").read_text().strip() in ("0", "1")
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    assert max_freq.read_text().strip() == "1500000", "killed while at high power"

    result = subprocess.run(
        [sys.executable, "-m", "agent", "failsafe", "--root", str(sim_dir / "root"),
         "--config", str(sim_dir / "missing.toml")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert max_freq.read_text().strip() == "600000"
    assert (sim_dir / WORKLOAD / "cgroup.freeze").read_text().strip() == "1"
    assert (sim_dir / HEATFILL / "cgroup.freeze").read_text().strip() == "1"
    assert "capped" in result.stdout


def test_failsafe_reports_what_it_could_not_do(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent", "failsafe", "--root", str(tmp_path),
                             "--config", str(tmp_path / "none.toml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no cpufreq policy" in result.stderr and "could not freeze" in result.stderr


def test_latched_fault_survives_a_restart(sim_dir):
    store = StateStore(sim_dir / "state")
    events = EventLog(journal=None)
    state = BoardState(store, events, 0.0, WALL_TIME_S)
    sim = SimulatedAgent(sim_dir / "one", SimClock(), seed=2, events=events,
                         save_latched=state.save_latched, latched=state.latched)
    sim.run_for(20)
    sim.board.plant.soc_c = 79.0
    sim.run_for(1)
    assert sim.agent.last_report.mode == "FAULT"
    sim.agent.close()

    restarted_events = EventLog(journal=None)
    state = BoardState(store, restarted_events, 0.0, WALL_TIME_S)
    assert "overtemp:SoC:critical" in state.latched
    again = SimulatedAgent(sim_dir / "two", SimClock(), seed=2, events=restarted_events,
                           save_latched=state.save_latched, latched=state.latched)
    again.run_for(30)
    assert again.agent.last_report.mode == "FAULT", "still latched after the restart"
    accepted, _ = again.agent.supervisor.reset(again.clock())
    assert accepted
    assert BoardState(store, EventLog(journal=None), 0.0, WALL_TIME_S).latched == {}
    again.agent.close()


def test_damaged_gains_file_costs_an_event_not_the_agent(sim_dir):
    store = StateStore(sim_dir / "state")
    (sim_dir / "state").mkdir()
    store.path("gains.json").write_text('{"format": "hearth-state", "payl')
    events = EventLog(journal=None)
    state = BoardState(store, events, 0.0, WALL_TIME_S)
    assert state.gains is None and state.latched == {}
    assert [e.cause for e in events.events] == ["state_file:gains"]


WALL_TIME_S = 1_790_000_000.0
LATCHED_BEFORE = {"overtemp:SoC:critical": "SoC at 79.0 C, at or above its critical threshold"}


def _rewrite_document(path, **changes):
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _damage(store, kind):
    """Damage latched.json as a power cut, a hand edit, a downgrade or a bad card would."""
    path = store.path("latched.json")
    if kind == "bad JSON":
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "bad checksum":
        path.write_text(path.read_text().replace("79.0", "29.0"))
    elif kind == "wrong version":
        _rewrite_document(path, version=2)
    elif kind == "faults not a table":
        store.write("latched.json", 1, {"faults": sorted(LATCHED_BEFORE)})
    elif kind == "message not text":
        store.write("latched.json", 1, {"faults": {"overtemp:SoC:critical": 79.0}})
    elif kind == "no faults key":
        store.write("latched.json", 1, {})


DAMAGE = ("bad JSON", "bad checksum", "wrong version", "faults not a table", "message not text",
          "no faults key")


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_latch_file_latches_a_fault_of_its_own(sim_dir, kind):
    """A critical over-temperature was latched; then latched.json was damaged. The board must
    not start with nothing latched: it latches `state_file:latched`, keeps the damaged file
    aside, says so, stays SAFE across restarts and needs a technician's reset."""
    store = StateStore(sim_dir / "state")
    BoardState(store, EventLog(journal=None), 0.0, WALL_TIME_S).save_latched(LATCHED_BEFORE)
    _damage(store, kind)
    damaged = store.path("latched.json").read_bytes()

    events = EventLog(journal=None)
    state = BoardState(store, events, 0.0, WALL_TIME_S)
    assert list(state.latched) == ["state_file:latched"]
    [event] = [e for e in events.events if e.cause == "state_file:latched"]
    aside = list((sim_dir / "state").glob("latched.json.damaged-*"))
    assert [p.read_bytes() for p in aside] == [damaged], "the damaged file is kept aside"
    assert event.severity == "critical" and event.value == str(store.path("latched.json"))
    assert str(store.path("latched.json")) in event.message and aside[0].name in event.message
    assert "`reset`" in event.message

    sim = SimulatedAgent(sim_dir / "board", SimClock(), seed=2, events=events,
                         save_latched=state.save_latched, latched=state.latched)
    sim.agent.set_setpoint(5.5, "leader")
    sim.step()
    assert is_safe(sim), "SAFE settings from the first period"
    sim.run_for(40, lambda report: (sim.agent.setpoints.contact(sim.clock()),
                                    assert_mode_respected(sim, report)))
    assert sim.agent.last_report.mode == "FAULT"

    restarted = BoardState(store, EventLog(journal=None), 0.0, WALL_TIME_S)
    assert list(restarted.latched) == ["state_file:latched"], "a restart does not clear it"
    assert len(list((sim_dir / "state").glob("latched.json.damaged-*"))) == 1

    accepted, reason = sim.agent.supervisor.reset(sim.clock())
    assert accepted, reason
    sim.run_for(30, lambda report: sim.agent.setpoints.contact(sim.clock()))
    assert sim.agent.last_report.mode == "NORMAL"
    after_reset = EventLog(journal=None)
    assert BoardState(store, after_reset, 0.0, WALL_TIME_S).latched == {}
    assert list(after_reset.events) == []
    sim.agent.close()


def test_an_unreadable_latch_file_stays_latched_until_it_can_be_rewritten(sim_dir):
    """latched.json that cannot even be read (here: a directory in its place) cannot be kept
    aside or rewritten: the fault holds, and reset refuses, until a technician repairs it."""
    store = StateStore(sim_dir / "state")
    store.path("latched.json").mkdir(parents=True)
    events = EventLog(journal=None)
    state = BoardState(store, events, 0.0, WALL_TIME_S)
    assert list(state.latched) == ["state_file:latched"]
    [event] = [e for e in events.events if e.cause == "state_file:latched"]
    assert "cannot be read" in event.message and "could not be kept aside" in event.message
    sim = SimulatedAgent(sim_dir / "board", SimClock(), seed=2, events=events,
                         save_latched=state.save_latched, latched=state.latched)
    sim.run_for(20)
    assert sim.agent.last_report.mode == "FAULT" and is_safe(sim)

    accepted, reason = sim.agent.supervisor.reset(sim.clock())
    assert not accepted and "latched.json" in reason and "could not be saved" in reason
    assert list(sim.agent.supervisor.latched) == ["state_file:latched"]
    sim.run_for(10)
    assert sim.agent.last_report.mode == "FAULT" and is_safe(sim)

    store.path("latched.json").rmdir()  # the technician's repair
    accepted, reason = sim.agent.supervisor.reset(sim.clock())
    assert accepted, reason
    assert BoardState(store, EventLog(journal=None), 0.0, WALL_TIME_S).latched == {}
    sim.agent.close()
