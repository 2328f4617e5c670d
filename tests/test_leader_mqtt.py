"""The leader against a real Mosquitto and a module of simulated boards, each with its own
MQTT connection (agent/mqtt/board_link.py): a board killed with SIGKILL, module flow loss, the
budget followed, and the energy ledger across a board reboot and a leader restart.

Run as a script (`python tests/test_leader_mqtt.py PORT BOARD DIR`) it is one simulated board
on the broker until killed: that is the process the SIGKILL test kills.
"""

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings, module_topics
from agent.mqtt.board_link import BoardConnection, connect_board
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.persist import StateStore
from agent.safety.events import EventLog
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

SITE, MODULE = "test-site", "m1"
LEADER_PERIOD_S = 1.0
SPEED = 2.0
"""Simulated seconds per wall second for the boards, so they leave STARTING sooner."""


class Module:
    """Simulated boards stepped together on one thread, each with its own broker connection."""

    def __init__(self, directory: Path, port: int, names: list[str]):
        self.directory = directory
        self.port = port
        self.clock = SimClock(time.monotonic())
        self.boards: dict[str, tuple[SimulatedAgent, object]] = {}
        self.lock = threading.Lock()
        self.first_safe_s: dict[str, float] = {}
        for name in names:
            self.add(name)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop stepping the boards (their connections stay up)."""
        self._paused.set()

    def add(self, name: str, energy_store: StateStore | None = None) -> None:
        sim = SimulatedAgent(self.directory / name / str(uuid.uuid4()), self.clock,
                             seed=len(self.boards), events=EventLog(journal=None))
        link = connect_board(sim.agent, BoardConnection(
            LinkSettings("127.0.0.1", self.port), BoardTopics(SITE, MODULE, name),
            self.directory / name, time.time), energy_store=energy_store)
        with self.lock:
            self.boards[name] = (sim, link)

    def remove(self, name: str):
        with self.lock:
            sim, link = self.boards.pop(name)
        link.close()
        sim.agent.close()
        return link

    def _run(self) -> None:
        period_s = 0.1
        next_s = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(period_s)
                continue
            self.clock.advance(period_s)
            with self.lock:
                for name, (sim, _) in self.boards.items():
                    sim.board.step(period_s)
                    report = sim.agent.tick()
                    if report.mode == "SAFE" and name not in self.first_safe_s:
                        self.first_safe_s[name] = time.monotonic()
            next_s += period_s / SPEED
            time.sleep(max(0.0, next_s - time.monotonic()))

    def modes(self) -> dict[str, str]:
        with self.lock:
            return {name: sim.agent.last_report.mode if sim.agent.last_report else None
                    for name, (sim, _) in self.boards.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for name in list(self.boards):
            self.remove(name)


class RunningLeader:
    def __init__(self, directory: Path, port: int, readings: dict, store: StateStore | None,
                 budget_w: float, **settings):
        self.link = Link(LinkSettings("127.0.0.1", port), client_id=f"leader-{uuid.uuid4()}",
                         outbox=Outbox(directory / "leader-outbox"), boot=str(uuid.uuid4()),
                         status_topic=module_topics(SITE, MODULE)["status"])
        self.role = LeaderRole(SITE, MODULE, self.link, time.monotonic, LeaderSettings(
            period_s=LEADER_PERIOD_S, silence_timeout_s=5.0, budget_w=budget_w, **settings),
            lambda: ModuleReadings(**readings), store=store)
        self.role.start()
        self.link.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.role.run, args=(self._stop.is_set,),
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.role.close()
        self.link.close()


class Listener:
    """A test client recording every setpoint and status with its arrival time."""

    def __init__(self, directory: Path, port: int):
        self.link = Link(LinkSettings("127.0.0.1", port), client_id=f"listener-{uuid.uuid4()}",
                         outbox=Outbox(directory / "listener-outbox"), boot=str(uuid.uuid4()))
        self.setpoints: list[tuple[float, str, float]] = []
        self.statuses: list[tuple[float, str, str]] = []
        base = module_topics(SITE, MODULE)["base"]
        self.link.subscribe(f"{base}/leader/setpoint/+", lambda m: self.setpoints.append(
            (time.monotonic(), m.topic.rsplit("/", 1)[-1], m.data()["setpoint_w"])))
        self.link.subscribe(f"{base}/+/status", lambda m: self.statuses.append(
            (time.monotonic(), m.topic.split("/")[-2], m.text())))
        self._stop = threading.Event()
        self.link.start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.link.poll(timeout_s=0.02)

    def latest(self, since_s: float = 0.0) -> dict[str, float]:
        found = {}
        for at, board, watts in list(self.setpoints):
            if at >= since_s:
                found[board] = watts
        return found

    def settled(self, boards: int, since_s: float | None = None) -> dict[str, float]:
        """The latest setpoint of each board once a whole leader round has arrived: the leader
        sends a round as a burst, and reading mid-burst would mix two rounds' splits."""
        def recent():
            start = time.monotonic() - LEADER_PERIOD_S
            return self.latest(start if since_s is None else max(start, since_s))

        def same_twice():
            first = recent()
            time.sleep(0.1)
            second = recent()
            return second if first == second and len(second) == boards else None
        return wait_for(same_twice, 5 * LEADER_PERIOD_S, f"a whole round to {boards} boards")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.close()


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def all_usable(leader: RunningLeader, count: int) -> bool:
    snapshot = leader.role.snapshot
    return (snapshot.get("boards_usable") == count
            and snapshot.get("capacity_w", 0) >= count * 6.5 - 1e-6)


@pytest.fixture
def broker(mosquitto):
    return mosquitto()


def board_process(port: int, name: str, directory: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, str(port), name, str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_board_redistributed_within_one_leader_period(broker, tmp_path, sim_dir):
    module = Module(sim_dir, broker.port, ["b1", "b2", "b3"])
    killed = board_process(broker.port, "b4", sim_dir / "b4-process")
    listener = Listener(tmp_path, broker.port)
    leader = RunningLeader(tmp_path, broker.port, {}, None, budget_w=18.0)
    try:
        wait_for(lambda: all_usable(leader, 4), 40, "four boards usable at full headroom")
        before = listener.settled(4)
        assert sum(before.values()) == pytest.approx(18.0, abs=1e-3)
        killed_at = time.monotonic()
        killed.kill()
        killed.wait(5)
        offline_at = wait_for(lambda: next((at for at, board, text in listener.statuses
                                            if board == "b4" and text == "offline"
                                            and at >= killed_at), None), 10,
                              "b4's Last Will")

        def redistributed():
            after = {board: watts for at, board, watts in listener.setpoints
                     if at >= offline_at and board != "b4"}
            return next((at for at, board, watts in listener.setpoints
                         if at >= offline_at and len(after) == 3
                         and sum(after.values()) == pytest.approx(18.0, abs=1e-3)), None)

        redistributed_at = wait_for(redistributed, 3 * LEADER_PERIOD_S, "the new split")
        delay_s = redistributed_at - offline_at
        print(f"\nSIGKILL -> Last Will {offline_at - killed_at:.3f} s; Last Will -> "
              f"redistributed setpoints {delay_s:.3f} s (leader period {LEADER_PERIOD_S} s)")
        assert delay_s <= LEADER_PERIOD_S
        time.sleep(LEADER_PERIOD_S * 1.5)
        assert "b4" not in listener.latest(time.monotonic() - LEADER_PERIOD_S)
        assert leader.role.tracker.boards["b4"].status == "offline"
        shares = listener.settled(3)
        assert sum(shares.values()) == pytest.approx(18.0, abs=1e-3)
        assert all(2.0 <= watts <= 6.5 for watts in shares.values())
    finally:
        killed.kill()
        leader.close()
        listener.close()
        module.close()


def test_module_flow_loss_sends_every_board_to_safe(broker, tmp_path, sim_dir):
    readings = {"flow_l_per_min": 8.0, "oil_c": 50.0}
    module = Module(sim_dir, broker.port, ["b1", "b2", "b3"])
    leader = RunningLeader(tmp_path, broker.port, readings, None, budget_w=12.0,
                           flow_min_l_per_min=2.0, oil_max_c=70.0)
    try:
        wait_for(lambda: all_usable(leader, 3), 40, "three usable boards")
        assert set(module.modes().values()) <= {"NORMAL", "LIMITED"}
        module.first_safe_s.clear()
        lost_at = time.monotonic()
        readings["flow_l_per_min"] = 0.0
        wait_for(lambda: len(module.first_safe_s) == 3, 5, "every board in SAFE")
        delays = {board: at - lost_at for board, at in module.first_safe_s.items()}
        print(f"\nmodule flow lost -> SAFE: worst {max(delays.values()):.3f} s, "
              f"per board {({b: round(d, 3) for b, d in sorted(delays.items())})} "
              f"(leader period {LEADER_PERIOD_S} s)")
        assert max(delays.values()) <= LEADER_PERIOD_S + 0.5
        assert leader.role.interlock.state.active
        wait_for(lambda: leader.role.snapshot.get("boards_usable") == 0, 3,
                 "the leader to count no usable board")
    finally:
        leader.close()
        module.close()


def test_budget_followed_within_capacity(broker, tmp_path, sim_dir):
    module = Module(sim_dir, broker.port, ["b1", "b2", "b3"])
    listener = Listener(tmp_path, broker.port)
    leader = RunningLeader(tmp_path, broker.port, {}, None, budget_w=9.0)
    site = Link(LinkSettings("127.0.0.1", broker.port), client_id="site-test",
                outbox=Outbox(tmp_path / "site-outbox"), boot=str(uuid.uuid4()))
    site.start()
    try:
        wait_for(lambda: all_usable(leader, 3), 40, "three usable boards")
        for budget, expected in ((14.0, 14.0), (40.0, 19.5), (3.0, 6.0)):
            site.publish(module_topics(SITE, MODULE)["budget"], {"budget_w": budget}, qos=1)
            site.poll()
            sent_at = time.monotonic()
            wait_for(lambda: leader.role.budget_w == budget, 3, f"budget {budget} W taken")
            time.sleep(LEADER_PERIOD_S * 1.5)
            shares = listener.settled(3, since_s=sent_at + LEADER_PERIOD_S * 0.5)
            assert sum(shares.values()) == pytest.approx(expected, abs=1e-3), (budget, shares)
            assert all(2.0 - 1e-9 <= w <= 6.5 + 1e-9 for w in shares.values())
    finally:
        site.close()
        leader.close()
        listener.close()
        module.close()


def test_energy_ledger_across_board_reboot_and_leader_restart(broker, tmp_path, sim_dir):
    store = StateStore(tmp_path / "leader-state")
    # the leader first: a board it first hears of mid-boot is counted from that first message
    # (agent/leader/ledger.py), so it must hear every board's first report
    leader = RunningLeader(tmp_path, broker.port, {}, store, budget_w=10.0)
    wait_for(lambda: leader.link.connected, 10, "the leader connected")
    module = Module(sim_dir, broker.port, ["b1", "b2"])
    try:
        wait_for(lambda: leader.role.ledger.totals_wh()["electric"] > 0.001, 20,
                 "energy counted")
        # b2 reboots and loses its counters (no energy store): a new segment, nothing subtracted
        link = module.remove("b2")
        b2_first_boot_wh = link.energy.electric_wh
        wait_for(lambda: leader.role.tracker.boards["b2"].status == "offline", 5, "b2 offline")
        counted_before = leader.role.ledger.boards["b2"].total_wh["electric"]
        assert counted_before == pytest.approx(b2_first_boot_wh, rel=0.05)
        module.add("b2")
        wait_for(lambda: leader.role.ledger.boards["b2"].segments == 1
                 and leader.role.ledger.boards["b2"].total_wh["electric"] > counted_before,
                 20, "b2's new segment counted on top")
        # the leader restarts: the ledger comes back from its file and counts the gap
        leader.close()
        saved_b1 = leader.role.ledger.boards["b1"].total_wh["electric"]
        time.sleep(3)
        leader = RunningLeader(tmp_path, broker.port, {}, store, budget_w=10.0)
        assert leader.role.ledger.boards["b1"].total_wh["electric"] == pytest.approx(saved_b1)
        wait_for(lambda: leader.role.ledger.boards["b1"].total_wh["electric"] > saved_b1, 10,
                 "b1 counted after the restart")
        time.sleep(2)
        module.pause()  # no new reports: the leader catches up with every one sent
        with module.lock:
            b1_wh = module.boards["b1"][1].energy.electric_wh
            b2_wh = module.boards["b2"][1].energy.electric_wh
        ledger = leader.role.ledger
        b2_total = b2_first_boot_wh + b2_wh
        # what the boards counted (b2 over both boots), to the last report sent
        wait_for(lambda: ledger.boards["b1"].total_wh["electric"] == pytest.approx(b1_wh, abs=1e-9)
                 and ledger.boards["b2"].total_wh["electric"] == pytest.approx(b2_total, abs=1e-9),
                 10, "the ledger to match the boards' own counters")
        print(f"\nledger b1 {ledger.boards['b1'].total_wh['electric'] * 1000:.3f} mWh "
              f"(board {b1_wh * 1000:.3f}), b2 {ledger.boards['b2'].total_wh['electric'] * 1000:.3f}"
              f" mWh (board, both boots {b2_total * 1000:.3f})")
    finally:
        leader.close()
        module.close()


def test_poisoned_board_state_on_the_wire_is_rejected_and_the_leader_runs_on(broker, tmp_path,
                                                                               sim_dir):
    """Issue 13 item 2: a board account sending a lone surrogate in `mode` or `faults`, or an
    impossible number, used to stop the leader at its next publish; now each is rejected,
    counted for that board, and the leader goes on sending setpoints and its state."""
    module = Module(sim_dir, broker.port, ["b1"])
    leader = RunningLeader(tmp_path, broker.port, {}, None, budget_w=6.0)
    hostile = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-b9")
    hostile.connect("127.0.0.1", broker.port)
    hostile.loop_start()
    try:
        wait_for(lambda: all_usable(leader, 1), 40, "b1 usable")
        topic = f"{module_topics(SITE, MODULE)['base']}/b9/state"
        poison = [b'{"v":1,"boot":"x","seq":1,"mode":"\\ud800","faults":[]}',
                  b'{"v":1,"boot":"x","seq":2,"mode":"NORMAL","faults":["\\udfff"]}',
                  b'{"v":1,"boot":"x","seq":3,"mode":"NORMAL","power_w":1e308}',
                  b'{"v":1,"boot":"x","seq":4,"mode":"NORMAL","energy_electric_wh":1e308}']
        for payload in poison:
            hostile.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(lambda: leader.role.snapshot.get("boards", {}).get("b9", {}).get(
            "rejected_states") == len(poison), 10, "every poisoned state counted")
        ticks_before = leader.role.resplits
        wait_for(lambda: leader.role.resplits >= ticks_before + 2, 5, "the leader ticking on")
        assert leader._thread.is_alive()
        assert leader.role.snapshot["boards_usable"] == 1
        assert leader.role.ledger.totals_wh()["electric"] < 1.0
    finally:
        hostile.loop_stop()
        hostile.disconnect()
        leader.close()
        module.close()


def _board_main(port: str, name: str, directory: str) -> None:
    """One simulated board on the broker in real time until killed."""
    base = Path(directory)
    clock = SimClock(time.monotonic())
    sim = SimulatedAgent(base / "board", clock, seed=7, events=EventLog(journal=None))
    connect_board(sim.agent, BoardConnection(LinkSettings("127.0.0.1", int(port)),
                                             BoardTopics(SITE, MODULE, name), base, time.time))
    period_s = sim.agent.period_s
    next_s = time.monotonic()
    while True:
        clock.advance(period_s)
        sim.board.step(period_s)
        sim.agent.tick()
        next_s += period_s / SPEED
        time.sleep(max(0.0, next_s - time.monotonic()))


if __name__ == "__main__":
    _board_main(*sys.argv[1:4])
