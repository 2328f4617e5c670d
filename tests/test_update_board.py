"""The board's updater: the simulated slots a simulated module updates with, RAUC's command
lines (and RAUC's own service), the update state machine through every outcome on a real
Mosquitto, the updater's account on a generated broker config, and the console's view."""

import hashlib
import http.server
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

import agent
from agent import cli
from agent.console.commands import CommandProcessor
from agent.errors import MessageError, UpdateError, UpdateRefusedError
from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.update.health_gate import GateSettings
from agent.update.slots import (
    Booted, Bundle, RaucSlots, SimulatedSlots, SlotFacts, run_command)
from agent.update.trial_record import TrialRecord, TrialRecords
from agent.update.updater import NO_VERDICT, Updater, decode_update_args
from test_broker_config import site  # noqa: F401 (a fixture)
from test_mqtt_board import Board
from test_mqtt_link import Listener, _link

BUNDLE = bytes(range(256)) * 4000  # 1 MB: several Range requests of the default chunk


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves BUNDLE at any path, with Range support unless the server says otherwise; counts
    the Range requests it answered."""

    def do_GET(self):
        server = self.server
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if match is None or not server.ranges:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BUNDLE)))
            self.end_headers()
            try:
                self.wfile.write(BUNDLE)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the board hung up on a 200, as it should
            return
        first, last = int(match[1]), min(int(match[2]), len(BUNDLE) - 1)
        server.range_requests += 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(BUNDLE)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self.wfile.write(BUNDLE[first:last + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def bundle_server():
    """Factory: a local HTTP server for BUNDLE; ranges=False answers every request with 200."""
    servers = []

    def start(ranges=True):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        server.ranges, server.range_requests = ranges, 0
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/hearth-1.2.0.raucb"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_simulated_slots_stream_the_bundle_in_ranges_and_try_it_once(bundle_server):
    server, url = bundle_server()
    boots, progress = [], []
    slots = SimulatedSlots("1.1.0", on_boot=lambda booted, runs: boots.append((booted, runs)))
    slots.install(Bundle(url, "1.2.0", hashlib.sha256(BUNDLE).hexdigest(), len(BUNDLE)),
                  progress.append, allow_downgrade=False)
    assert slots.bundle_bytes["B"] == BUNDLE
    assert server.range_requests == 4 and progress[-1] == 100 and progress == sorted(progress)
    assert slots.other().version == "1.2.0" and slots.booted() == Booted("A", False, "1.1.0")
    slots.reboot_to_trial()
    assert boots == [(Booted("B", True, "1.2.0"), True)]
    slots.power_cut()  # no verdict: the firmware boots the committed slot again
    assert boots[-1] == (Booted("A", False, "1.1.0"), True)


def test_simulated_slots_commit_only_what_was_marked_good(bundle_server):
    _, url = bundle_server()
    slots = SimulatedSlots("1.1.0")
    slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    slots.reboot_to_trial()
    slots.mark_good()
    slots.reboot()
    assert slots.booted() == Booted("B", False, "1.2.0")
    assert slots.other().version == "1.1.0"


@pytest.mark.parametrize("bundle, words", [
    (Bundle("URL", "1.2.0", sha256="0" * 64), "has sha256"),
    (Bundle("URL", "1.2.0", size_bytes=5), "the site announced 5"),
])
def test_simulated_slots_refuse_a_bundle_that_is_not_the_announced_one(bundle_server, bundle,
                                                                       words):
    _, url = bundle_server()
    slots = SimulatedSlots("1.1.0")
    with pytest.raises(UpdateError, match=words):
        slots.install(Bundle(url, bundle.version, bundle.sha256, bundle.size_bytes),
                      lambda pct: None, allow_downgrade=False)
    assert slots.other().version is None and slots.trial is None


def test_simulated_slots_need_range_support_and_refuse_downgrades(bundle_server):
    _, url = bundle_server(ranges=False)
    slots = SimulatedSlots("1.1.0")
    with pytest.raises(UpdateError, match="answered 200 to a Range request"):
        slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    with pytest.raises(UpdateRefusedError, match="older than the installed 1.1.0"):
        slots.install(Bundle(url, "1.0.0"), lambda pct: None, allow_downgrade=False)


def test_a_failing_version_crash_loops_its_simulated_agent(bundle_server):
    _, url = bundle_server()
    now = [0.0]
    boots = []
    slots = SimulatedSlots("1.1.0", failing_versions={"1.2.0"}, clock=lambda: now[0],
                           on_boot=lambda booted, runs: boots.append(runs))
    slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    slots.reboot_to_trial()
    now[0] = 5.0
    facts = slots.agent_service()
    assert boots == [False]
    assert (facts.active_state, facts.sub_state, facts.restarts) == (
        "activating", "auto-restart", 3)


# -- the updater on a real Mosquitto -----------------------------------------------------------

HEALTHY = {"mode": "NORMAL", "setpoint_source": "leader", "faults": [], "soc_c": 55.0,
           "power_w": 4.2}
GATE = GateSettings(window_s=30.0, hold_s=5.0, max_restarts=2, state_stale_s=3.0)
TOPICS = BoardTopics("s1", "m1", "b01")


class Rig:
    """One simulated board's updater on a real broker, with the test playing its agent (the
    board's `state`), an operator (commands) and the gate's clock (one step, one second)."""

    def __init__(self, broker, tmp_path, failing=(), installed="1.1.0"):
        self.broker, self.tmp_path = broker, tmp_path
        self.now_s = 0.0
        self.agent_state = dict(HEALTHY)
        """What the simulated agent publishes each step while it runs; None: nothing (it
        never reaches the broker)."""
        self.agent_runs = True
        self.boots = []
        self.slots = SimulatedSlots(installed, on_boot=self._on_boot, failing_versions=failing,
                                    clock=lambda: self.now_s)
        self.listener = Listener(broker, tmp_path, "hearth/#")
        self.listener.ready("hearth/probe")
        self.operator = _link(broker, tmp_path, "operator")
        self.agent = _link(broker, tmp_path, "agent")
        self.operator.start()
        self.agent.start()
        self.listener.wait(lambda: self.operator.connected and self.agent.connected)
        self.updater = self.new_updater()

    def new_updater(self, name="updater-1"):
        """The updater process of a (new) boot: its own link, the data partition's records."""
        link = Link(LinkSettings(self.broker.host, self.broker.port, reconnect_max_s=1),
                    client_id=name, outbox=Outbox(self.tmp_path / name), boot=name)
        updater = Updater(self.slots, link, TOPICS, TrialRecords.at(self.tmp_path / "data"),
                          GATE, self.slots.agent_service, clock=lambda: self.now_s)
        updater.start()
        self.listener.wait(lambda: link.connected)
        time.sleep(0.2)  # its subscriptions go out on connect
        return updater

    def _on_boot(self, booted, agent_runs):
        self.boots.append(booted)
        self.agent_runs = agent_runs

    def command(self, args, command_id="u1", **envelope):
        self.operator.publish(TOPICS.command("update"), {"id": command_id, "by": "operator",
                                                         "args": args, **envelope}, qos=1)
        self.listener.wait(lambda: self.reply(command_id) is not None, step=self.updater.poll)
        return self.reply(command_id)

    def reply(self, command_id):
        replies = [r for r in self.listener.on(TOPICS.reply) if r["id"] == command_id]
        return replies[-1] if replies else None

    def step(self):
        """One second of the board: the agent's state (when it runs and reaches the broker)
        seen by the updater, then the updater's poll."""
        self.listener.wait(lambda: self.updater.record.state != "installing",
                           step=self.updater.poll)
        self.now_s += 1.0
        if self.agent_runs and self.agent_state is not None:
            sent, boots = self.agent.publish(TOPICS.state, self.agent_state), len(self.boots)
            self.listener.wait(lambda: len(self.boots) > boots or (
                self.updater.observed is not None
                and self.updater.observed.payload["seq"] == sent["seq"]), step=self.updater.poll)
        self.updater.poll()

    def run_until(self, state, steps=60):
        for _ in range(steps):
            if self.updater.record.state == state and self.updater.gate is None:
                break
            self.step()
        self.listener.wait(lambda: self.reported()["state"] == state, step=self.updater.poll)
        return self.reported()

    def reported(self):
        """The newest `update` report as it came off the broker."""
        reports = self.listener.on(TOPICS.update)
        return reports[-1] if reports else {"state": None}

    def close(self):
        for link in (self.updater.link, self.operator, self.agent, self.listener.link):
            link.close()


@pytest.fixture
def rig(mosquitto, tmp_path, bundle_server):
    rigs = []

    def make(**kwargs):
        rigs.append(Rig(mosquitto(), tmp_path, **kwargs))
        return rigs[-1]

    yield make
    for made in rigs:
        made.close()


def update_args(bundle_server, **more):
    _, url = bundle_server()
    return {"url": url, "version": "1.2.0", "sha256": hashlib.sha256(BUNDLE).hexdigest(),
            "size_bytes": len(BUNDLE), **more}


def test_a_good_bundle_is_tried_passes_the_gate_and_is_committed(rig, bundle_server):
    board = rig()
    assert board.reported()["state"] is None or board.reported()["state"] == "idle"
    reply = board.command(update_args(bundle_server))
    assert reply["status"] == "accepted" and reply["data"]["state"] == "installing"
    report = board.run_until("committed")
    assert board.boots == [Booted("B", True, "1.2.0")]
    assert (report["installed"], report["slot"], report["target"], report["reason"]) == (
        "1.2.0", "B", "1.2.0", None)
    states = [r["state"] for r in board.listener.on(TOPICS.update)]
    assert states[states.index("installing"):] == ["installing"] * (
        states.count("installing")) + ["trial"] * states.count("trial") + ["committed"]
    board.slots.reboot()  # the next plain reboot stays on it
    assert board.slots.booted() == Booted("B", False, "1.2.0")
    assert TrialRecords.at(board.tmp_path / "data").read().record.state == "committed"


@pytest.mark.parametrize("setup, words", [
    (dict(failing={"1.2.0"}), "crash-loops: restarted 3 times"),
    (dict(agent_state=None), "has not reached the broker"),
    (dict(agent_state=dict(HEALTHY, setpoint_source="fallback")), "not the leader"),
], ids=["crash-loop", "no-broker", "window-runs-out"])
def test_a_failed_trial_rolls_back_to_the_old_slot_with_its_reason(rig, bundle_server, setup,
                                                                   words):
    board = rig(failing=setup.get("failing", ()))
    if "agent_state" in setup:
        board.agent_state = setup["agent_state"]
    board.command(update_args(bundle_server))
    report = board.run_until("rolled_back")
    assert board.boots == [Booted("B", True, "1.2.0"), Booted("A", False, "1.1.0")]
    assert (report["installed"], report["slot"], report["target"]) == ("1.1.0", "A", "1.2.0")
    assert words in report["reason"]
    assert board.slots.boot_status["B"] == "bad" and board.slots.primary == "A"


def test_a_power_cut_mid_trial_is_reported_as_rolled_back_on_the_next_boot(rig, bundle_server):
    board = rig()
    board.agent_state = dict(HEALTHY, mode="SAFE")
    board.command(update_args(bundle_server))
    for _ in range(3):
        board.step()
    assert board.updater.record.state == "trial" and board.updater.gate is not None
    board.updater.link.abort()  # the power goes: no verdict, no goodbye
    board.slots.power_cut()
    board.updater = board.new_updater("updater-2")
    report = board.run_until("rolled_back")
    assert report["reason"] == NO_VERDICT
    assert (report["installed"], report["slot"]) == ("1.1.0", "A")


def test_a_power_cut_mid_install_is_reported_as_failed(rig, bundle_server):
    board = rig()
    records = TrialRecords.at(board.tmp_path / "data")
    records.write(TrialRecord(state="installing", target="1.2.0", from_slot="A"))
    board.updater.link.close()
    board.updater = board.new_updater("updater-2")
    report = board.run_until("failed")
    assert "was cut short" in report["reason"] and report["slot"] == "A"


def test_a_damaged_record_fails_closed_on_a_trial_boot(rig, bundle_server):
    board = rig()
    board.command(update_args(bundle_server))
    board.run_until("trial", steps=2)
    assert board.slots.booted().tryboot
    records_dir = board.tmp_path / "data"
    (records_dir / "update.json").write_text("{ torn")
    board.updater.link.close()
    board.updater = board.new_updater("updater-2")  # the same trial boot, started again
    report = board.run_until("rolled_back")
    assert "update record" in report["reason"] and "never committed" in report["reason"]
    assert board.slots.primary == "A" and board.slots.boot_status["B"] == "bad"
    assert list(records_dir.glob("update.json.damaged-*"))


@pytest.mark.parametrize("args, words", [
    ({"version": "1.2.0"}, "'url' must be"),
    ({"url": "file:///etc/shadow", "version": "1.2.0"}, "'url' must be"),
    ({"url": "http://x/ b.raucb", "version": "1.2.0"}, "'url' must be"),
    ({"url": "http://x/b.raucb", "version": "1.2"}, None),
    ({"url": "http://x/b.raucb", "version": "1.2.0-rc1"}, "'version' must be"),
    ({"url": "http://x/b.raucb", "version": 12}, "'version' must be"),
    ({"url": "http://x/b.raucb", "version": "1.2.0", "force": "yes"}, "'force' must be"),
    ({"url": "http://x/b.raucb", "version": "1.2.0", "sha256": "abc"}, "'sha256' must be"),
    ({"url": "http://x/b.raucb", "version": "1.2.0", "size_bytes": -1}, "'size_bytes'"),
    ({"url": "http://x/b.raucb", "version": "1.2.0", "rm": "-rf"}, "unknown argument 'rm'"),
    ({"url": "http://x/b.raucb", "version": "1.0.0"}, "older than the installed 1.1.0"),
    ({"url": "http://x/b.raucb", "version": "1.1.0"}, "already installed"),
])
def test_decode_update_args_names_what_is_wrong(args, words):
    if words is None:
        assert decode_update_args(args) == (Bundle("http://x/b.raucb", "1.2"), False)
        return
    if "installed" in words:
        return  # decided by the updater against the installed version, below
    with pytest.raises(MessageError, match=re.escape(words)):
        decode_update_args(args)


def test_hostile_commands_are_rejected_and_change_nothing(rig, bundle_server):
    board = rig()
    board.listener.wait(lambda: board.reported()["state"] == "idle", step=board.updater.poll)
    record_file = board.tmp_path / "data" / "update.json"
    before = record_file.read_bytes() if record_file.exists() else None
    hostile = [
        ({"version": "1.2.0"}, {}, "'url' must be"),
        ({"url": "http://x/b.raucb", "version": "1.1.0"}, {}, "already installed"),
        ({"url": "http://x/b.raucb", "version": "1.2.0"}, {"by": "leader2"}, "'by' must be"),
        ({"url": "http://x/b.raucb", "version": "1.2.0"}, {"hist": True}, "backlog"),
        ({"url": "http://x/b.raucb", "version": "1.2.0", "force": 1}, {}, "'force' must be"),
    ]
    for number, (args, envelope, words) in enumerate(hostile):
        reply = board.command(args, command_id=f"h{number}", **envelope)
        assert reply["status"] == "rejected" and words in reply["reason"], reply
    late = _link(board.broker, board.tmp_path, "late", wall_clock=lambda: time.time() - 120)
    late.start()
    board.listener.wait(lambda: late.connected)
    late.publish(TOPICS.command("update"), {"id": "t1", "by": "operator", "args": {
        "url": "http://x/b.raucb", "version": "1.2.0"}}, qos=1)
    board.listener.wait(lambda: board.reply("t1") is not None, step=board.updater.poll)
    assert "120 s old" in board.reply("t1")["reason"]
    late.close()
    board.updater.link.close()  # a retained command waits for the next start
    board.operator.publish(TOPICS.command("update"), {"id": "r1", "by": "operator", "args": {
        "url": "http://x/b.raucb", "version": "1.2.0"}}, qos=1, retain=True)
    board.listener.wait(lambda: board.operator.idle())
    board.updater = board.new_updater("updater-2")
    board.listener.wait(lambda: board.reply("r1") is not None, step=board.updater.poll)
    assert "retained" in board.reply("r1")["reason"]
    board.operator.assert_retained(TOPICS.command("update"), b"")
    assert board.updater.record.state == "idle" and board.boots == []
    assert (record_file.read_bytes() if record_file.exists() else None) == before
    assert {r["state"] for r in board.listener.on(TOPICS.update)} == {"idle"}


def test_a_second_update_waits_and_a_downgrade_is_refused_unless_forced(rig, bundle_server):
    board = rig(installed="1.3.0")
    reply = board.command(update_args(bundle_server), command_id="d1")
    assert reply["status"] == "rejected" and "older than the installed 1.3.0" in reply["reason"]
    assert board.run_until("refused")["target"] == "1.2.0"
    reply = board.command(update_args(bundle_server, force=True), command_id="d2")
    assert reply["status"] == "accepted"
    reply = board.command(update_args(bundle_server, force=True), command_id="d3")
    assert reply["status"] == "rejected" and "under way" in reply["reason"]
    assert board.command(update_args(bundle_server, force=True), command_id="d2") == (
        board.reply("d2"))  # a retry of d2 is answered again, not run twice
    assert board.run_until("committed")["installed"] == "1.2.0"


def test_the_agent_leaves_cmd_update_to_the_updater(mosquitto, tmp_path, bundle_server):
    """Both processes of a board hear its cmd/#: exactly one reply, the updater's."""
    broker = mosquitto()
    listener = Listener(broker, tmp_path, "hearth/#")
    listener.ready("hearth/probe")
    board = Board(broker, tmp_path)  # the board's real (simulated) agent, as in test_mqtt_board
    listener.wait(lambda: board.link.link.connected, step=board.step)
    slots = SimulatedSlots("1.1.0")
    link = _link(broker, tmp_path, "updater")
    updater = Updater(slots, link, TOPICS, TrialRecords.at(tmp_path / "data"), GATE,
                      slots.agent_service)
    updater.start()
    operator = _link(broker, tmp_path, "operator")
    operator.start()
    listener.wait(lambda: link.connected and operator.connected)
    time.sleep(0.2)
    operator.publish(TOPICS.command("update"), {"id": "one", "by": "operator",
                                                "args": update_args(bundle_server)}, qos=1)
    operator.publish(TOPICS.command("identify"), {"id": "two", "by": "operator",
                                                  "args": {"seconds": 1.0}}, qos=1)

    def replies():
        return [(r["id"], r["boot"], r["status"]) for r in listener.on(TOPICS.reply)]
    listener.wait(lambda: len(replies()) >= 2, step=lambda: (board.step(), updater.poll()))
    board.step(1.0)
    updater.poll()
    time.sleep(0.3)
    listener.link.poll(0.1)
    assert sorted(replies()) == [("one", "boot-updater", "accepted"),
                                 ("two", board.link.link.envelope.boot, "accepted")]
    for closing in (board.link, link, operator, listener):
        closing.close()


# -- RAUC's command lines -------------------------------------------------------------------

FAKE_RAUC = r"""#!/bin/sh
# Logs its arguments, and answers as RAUC 1.8's client prints (src/main.c: "%3d%% %s").
echo "$*" >> "{log}"
[ -e "{flags}/allow-downgrade" ] && echo "allow-downgrade present" >> "{log}"
case "$1 $2" in
  "install http://site/good.raucb")
    printf '  0%% Installing\n 20%% Checking bundle\n 40%% Copying image to rootfs.1\n'
    printf '100%% Installing done.\nInstalling `http://site/good.raucb` succeeded\n' ;;
  "install "*)
    printf '  0%% Installing\nLastError: Failed verifying signature: %s\n' \
      'signature verification failed'
    echo "Installing \`$2\` failed" >&2; exit 1 ;;
  "status --detailed")
    printf '%s\n' '{json}' ;;
esac
"""
STATUS_JSON = ('{"compatible":"hearth-rpi","variant":"","booted":"A","boot_primary":"rootfs.0",'
               '"slots":[{"rootfs.0":{"class":"rootfs","bootname":"A","boot_status":"good",'
               '"slot_status":{"bundle":{"compatible":"hearth-rpi","version":"1.1.0"}}}},'
               '{"rootfs.1":{"class":"rootfs","bootname":"B","boot_status":"bad",'
               '"slot_status":{"bundle":{"compatible":"hearth-rpi","version":"1.2.0"}}}},'
               '{"boot.0":{"class":"boot","bootname":null,"boot_status":null}}]}')


def rauc_slots(tmp_path, partition=2, tryboot=0):
    log, flags, bootloader = tmp_path / "calls.log", tmp_path / "run", tmp_path / "bootloader"
    bootloader.mkdir()
    (bootloader / "partition").write_bytes(partition.to_bytes(4, "big"))
    (bootloader / "tryboot").write_bytes(tryboot.to_bytes(4, "big"))
    for name in ("rauc", "systemctl"):
        script = tmp_path / name
        script.write_text(FAKE_RAUC.format(log=log, flags=flags, json=STATUS_JSON))
        script.chmod(0o755)
    slots = RaucSlots("1.1.0", rauc=str(tmp_path / "rauc"),
                      systemctl=str(tmp_path / "systemctl"), bootloader_dir=bootloader,
                      flag_dir=flags, reboot_wait_s=0.0, sleep=lambda s: None)
    return slots, log


def test_rauc_slots_install_with_progress_and_mark_as_rauc_1_8_takes_it(tmp_path):
    slots, log = rauc_slots(tmp_path, partition=3, tryboot=1)
    assert slots.booted() == Booted("B", True, "1.1.0")
    progress = []
    slots.install(Bundle("http://site/good.raucb", "1.2.0"), progress.append,
                  allow_downgrade=True)
    assert progress == [0, 20, 40, 100]
    assert not (tmp_path / "run" / "allow-downgrade").exists()
    slots.mark_good()
    slots.mark_bad()
    with pytest.raises(UpdateError, match="has not rebooted"):
        slots.reboot_to_trial()
    calls = log.read_text().splitlines()
    assert calls == ["install http://site/good.raucb", "allow-downgrade present",
                     "status mark-good booted", "status mark-bad booted",
                     "reboot --reboot-argument=0 tryboot"]
    for call in (line.split() for line in calls if line.startswith("status")):
        check_rauc_takes(call)
    check_rauc_takes(["install", "URL"])
    check_rauc_takes(["status", "--detailed", "--output-format=json"])


def check_rauc_takes(argv):
    """RAUC 1.8's own help for the subcommand lists each option and status word we use."""
    help_text = subprocess.run(["rauc", argv[0], "--help"], capture_output=True,
                               text=True).stdout
    assert f"rauc [OPTION…] {argv[0]}" in help_text
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in help_text, (word, help_text)
        elif word in ("mark-good", "mark-bad", "booted"):
            assert f"{argv[1]} [booted | other | <SLOT_NAME>]" in help_text


def test_rauc_slots_read_the_other_slot_and_name_a_refusal(tmp_path):
    slots, log = rauc_slots(tmp_path)
    assert slots.booted() == Booted("A", False, "1.1.0")
    assert slots.other() == SlotFacts("B", "1.2.0", "bad")
    with pytest.raises(UpdateRefusedError, match="signature verification failed"):
        slots.install(Bundle("http://site/unsigned.raucb", "1.2.0"), lambda pct: None,
                      allow_downgrade=False)
    (tmp_path / "bootloader" / "partition").write_bytes((5).to_bytes(4, "big"))
    with pytest.raises(UpdateError, match="booted partition 5, which is no Hearth slot"):
        slots.booted()


def test_update_board_status_prints_the_record(tmp_path, capsys):
    bootloader = tmp_path / "bootloader"
    bootloader.mkdir()
    (bootloader / "partition").write_bytes((2).to_bytes(4, "big"))
    (bootloader / "tryboot").write_bytes((0).to_bytes(4, "big"))
    settings = tmp_path / "update.toml"
    settings.write_text(f'bootloader_dir = "{bootloader}"\n')
    TrialRecords.at(tmp_path / "data").write(TrialRecord(
        state="rolled_back", target="1.2.0", reason=NO_VERDICT, since_ts=1_790_000_000.0,
        from_slot="A", trial_slot="B", other_slot="B", other_version="1.2.0",
        other_status="bad"))
    words = ["update-board", "status", "--settings", str(settings), "--records",
             str(tmp_path / "data")]
    assert cli.main(words) == 0
    out = capsys.readouterr().out
    assert f"installed {agent.__version__} in slot A\n" in out
    assert "last update: rolled_back, target 1.2.0, since 2026-09-21" in out
    assert f"reason: {NO_VERDICT}" in out and "slot B: 1.2.0 (bad)" in out
    (tmp_path / "data" / "update.json").write_text("[]")
    assert cli.main(words) == 1
    assert "is unusable" in capsys.readouterr().out


# -- the console --------------------------------------------------------------------------------

def test_console_version_and_update_status_read_the_firmware_and_the_record(tmp_path):
    root = tmp_path / "root"
    bootloader = root / "run/hearth/bootloader"  # the VM's, named in update.toml
    bootloader.mkdir(parents=True)
    (bootloader / "partition").write_bytes((3).to_bytes(4, "big"))
    (bootloader / "tryboot").write_bytes((1).to_bytes(4, "big"))
    (root / "etc/hearth").mkdir(parents=True)
    (root / "etc/hearth/update.toml").write_text('bootloader_dir = "/run/hearth/bootloader"\n')
    processor = CommandProcessor.without_agent(tmp_path / "none.toml", board_id="b07", root=root)
    result, _ = processor.execute_line("update status", "serial")
    assert result.ok and result.text == "no update on this board yet"
    TrialRecords.at(root / "data/hearth-update").write(TrialRecord(
        state="trial", target="1.2.0", since_ts=1_790_000_000.0, from_slot="A",
        trial_slot="B", other_slot="A", other_version="1.1.0", other_status="good"))
    result, _ = processor.execute_line("version", "serial")
    assert result.ok and result.text == (
        f"Hearth {agent.__version__} in slot B (trial boot: not committed yet)\n"
        "slot A: 1.1.0 (good)")
    result, as_json = processor.execute_line("update status --json", "socket")
    assert as_json and result.data == {"state": "trial", "target": "1.2.0", "reason": None,
                                       "since_ts": 1_790_000_000.0}
    assert result.text == "last update: trial, target 1.2.0, since 2026-09-21 14:13:20 UTC"
    (root / "data/hearth-update/update.json").write_text("{}")
    result, _ = processor.execute_line("update status", "serial")
    assert result.ok and "update record" in result.text and "is unusable" in result.text
    assert "other slot unknown" in processor.execute_line("version", "serial")[0].text
    refused = processor.execute("version", {}, "operator")
    assert not refused.ok and "not allowed from 'operator'" in refused.reason


# -- the updater's own account on a site's generated broker ------------------------------------

def test_the_updater_logs_in_beside_its_agent_and_reaches_only_its_topics(site):
    """The broker gives an account one connection, so the updater has its own account,
    updater.<module>.<board>: the board's agent stays connected, and the updater reads its
    cmd/update and its board's state and writes its update report and replies, nothing else."""
    out, _, connect = site
    root = "hearth/v1/maple-school"
    operator = connect("operator")
    assert operator.subscribe("hearth/#")
    board = connect("m1.b01", client_id="hearth-maple-school-m1-b01")
    updater = connect("updater.m1.b01", client_id="hearth-maple-school-m1-b01-updater")
    updater.subscribe(f"{root}/m1/b01/cmd/update")
    updater.subscribe(f"{root}/m1/b01/state")
    updater.subscribe(f"{root}/m1/b02/state")
    updater.subscribe(f"{root}/m1/b01/cmd/setpoint")
    operator.publish(f"{root}/m1/b01/cmd/setpoint", "not for the updater")
    operator.publish(f"{root}/m1/b02/state", "another board's")
    operator.publish(f"{root}/m1/b01/cmd/update", "update me")
    board.publish(f"{root}/m1/b01/state", "my state")
    assert updater.received(until="my state") == [(f"{root}/m1/b01/cmd/update", "update me"),
                                                  (f"{root}/m1/b01/state", "my state")]
    allowed = [f"{root}/m1/b01/update", f"{root}/m1/b01/reply"]
    forbidden = [f"{root}/m1/b01/state", f"{root}/m1/b01/status", f"{root}/m1/b01/event",
                 f"{root}/m1/b02/update", f"{root}/m1/b01/cmd/update",
                 f"{root}/m1/leader/setpoint/b01"]
    for number, topic in enumerate(forbidden):
        updater.publish(topic, f"forbidden {number}")
        updater.publish(allowed[number % 2], f"allowed {number}")
    got = [item for item in operator.received(until=f"allowed {len(forbidden) - 1}")
           if item[1].startswith(("allowed", "forbidden"))]
    assert got == [(allowed[n % 2], f"allowed {n}") for n in range(len(forbidden))]
    assert board.disconnects.empty() and updater.disconnects.empty()
    mqtt_section = (out / "clients/updater.m1.b01/mqtt.toml").read_text()
    assert 'username = "updater.m1.b01"' in mqtt_section


def test_an_updater_restarted_on_the_trial_boot_keeps_the_trials_window(rig, bundle_server):
    """The window counts from the trial boot, not from the updater's start: an updater that
    crashes and restarts during the trial cannot make it last forever."""
    board = rig()
    board.agent_state = dict(HEALTHY, setpoint_source="fallback")
    board.command(update_args(bundle_server))
    board.run_until("trial", steps=2)
    booted_at_s = board.now_s
    for _ in range(20):
        board.step()
    board.updater.link.abort()  # the updater dies; systemd starts it again
    board.updater = board.new_updater("updater-2")
    report = board.run_until("rolled_back")
    assert "window of 30 s ran out" in report["reason"]
    assert board.boots[-1] == Booted("A", False, "1.1.0")
    assert board.now_s - booted_at_s <= GATE.window_s + 2


def test_rauc_slots_mark_and_read_through_the_real_rauc_service(tmp_path):
    """RaucSlots against RAUC 1.8 itself (its service on a private D-Bus, the generated
    system.conf and the tryboot backend): the other slot read from RAUC's JSON, and on the
    trial boot mark_good commits autoboot.txt; on a second trial mark_bad leaves it alone."""
    from test_bundle import AUTOBOOT, HEARTH, RaucService, hearth
    from agent.update import autoboot, rauc_system
    keys = tmp_path / "keys"
    assert hearth("bundle", "keygen", "--out", keys, "--site", "test").returncode == 0
    board = tmp_path / "board"
    for name in ("autoboot", "facts", "data", "bin", "dev"):
        (board / name).mkdir(parents=True)
    (board / "autoboot/autoboot.txt").write_text(AUTOBOOT)
    (board / "update.toml").write_text(f'bootloader_dir = "{board / "facts"}"\n')
    devices = {name: str(board / "dev" / name)
               for name in ("rootfs.0", "boot.0", "rootfs.1", "boot.1")}
    for device in devices.values():
        Path(device).touch()
    conf = board / "system.conf"
    conf.write_text(rauc_system.system_conf(
        devices, keyring=str(keys / "ca/ca.crt"), status_file=str(board / "data/status.raucs"),
        handler_dir=str(board / "bin")))
    for name, text in rauc_system.handler_scripts(HEARTH, backend_options=[
            "--autoboot", str(board / "autoboot/autoboot.txt"), "--state-dir",
            str(board / "data"), "--settings", str(board / "update.toml")]).items():
        (board / "bin" / name).write_text(text)
        (board / "bin" / name).chmod(0o755)

    def boot(slot, tryboot):
        (board / "facts/partition").write_bytes({"A": 2, "B": 3}[slot].to_bytes(4, "big"))
        (board / "facts/tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))
        service = RaucService(conf, slot, tmp_path / f"rauc-{slot}-{int(tryboot)}.log")
        slots = RaucSlots("1.1.0", bootloader_dir=board / "facts", run=lambda argv: (
            subprocess.run(list(argv), env=service.env, capture_output=True, text=True,
                           timeout=60)))
        return service, slots

    service, slots = boot("A", tryboot=False)
    try:
        assert slots.booted() == Booted("A", False, "1.1.0")
        assert slots.other() == SlotFacts("B", None, "good")
        assert service.rauc("status", "mark-active", "other").returncode == 0  # as an install
    finally:
        service.stop()
    service, slots = boot("B", tryboot=True)
    try:
        slots.mark_good()
        assert slots.other() == SlotFacts("A", None, "good")
    finally:
        service.stop()
    committed = autoboot.read(board / "autoboot/autoboot.txt")
    assert committed.committed_partition == 3
    service, slots = boot("B", tryboot=False)
    try:
        assert service.rauc("status", "mark-active", "other").returncode == 0
    finally:
        service.stop()
    service, slots = boot("A", tryboot=True)
    try:
        slots.mark_bad()
        assert slots.other() == SlotFacts("B", None, "good")
        status = service.status()
        assert status["boot_primary"] == "rootfs.1"
        assert [slot["rootfs.0"]["boot_status"] for slot in status["slots"]
                if "rootfs.0" in slot] == ["bad"]
    finally:
        service.stop()
    assert autoboot.read(board / "autoboot/autoboot.txt").committed_partition == 3


def test_rauc_slots_turn_a_missing_rauc_into_an_update_error(tmp_path):
    slots, _ = rauc_slots(tmp_path)
    slots.rauc = str(tmp_path / "no-such-rauc")
    slots.run = run_command
    with pytest.raises(UpdateError, match="could not be run"):
        slots.mark_good()
    with pytest.raises(UpdateError, match="could not be started"):
        slots.install(Bundle("http://site/good.raucb", "1.2.0"), lambda pct: None, False)


STREAM_RACE_RAUC = r"""#!/bin/sh
# RAUC 1.13's streamed install as it fails when udev closes the new nbd device before
# dm-verity takes it (fixed in RAUC 1.15): the mount fails, nothing is written.
echo "$*" >> "{log}"
if [ ! -e "{tries}" ] || [ "$(wc -l < "{tries}")" -lt {failures} ]; then
  echo try >> "{tries}"
  printf '  0%% Installing\n 20%% Checking bundle\n'
  printf 'LastError: Failed mounting bundle: Failed to load dm table: Argument list too long\n'
  echo "Installing \`$2\` failed" >&2; exit 1
fi
printf '  0%% Installing\n 40%% Copying image to rootfs.1\n100%% Installing done.\n'
"""


@pytest.mark.parametrize("failures, installs", [(1, 2), (2, 2)])
def test_rauc_slots_retry_a_streamed_install_once_after_its_bundle_failed_to_mount(
        tmp_path, caplog, failures, installs):
    slots, log = rauc_slots(tmp_path)
    (tmp_path / "rauc").write_text(STREAM_RACE_RAUC.format(
        log=log, tries=tmp_path / "tries", failures=failures))
    bundle = Bundle("http://site/good.raucb", "1.2.0")
    with caplog.at_level("WARNING", logger="hearth.update"):
        if failures == 1:
            slots.install(bundle, lambda pct: None, allow_downgrade=False)
        else:
            with pytest.raises(UpdateError, match="Failed to load dm table"):
                slots.install(bundle, lambda pct: None, allow_downgrade=False)
    assert log.read_text().splitlines() == ["install http://site/good.raucb"] * installs
    assert "nothing was written; trying the install once more" in caplog.text
