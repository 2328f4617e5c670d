"""The command definitions and processor on a simulated board in simulated time: parsing,
argument checks, remote subset, overrides that expire, tune and flow calibration end to end,
diagnostics on faulty hardware, the generated docs, and `hearth ctl` with and without an agent."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.console.commands import COMMANDS, CommandProcessor, remote_commands
from agent.console.docs import reference_markdown
from agent.console.spec import CommandRefused, parse_line
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.params import BoardParams

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def board(sim_dir):
    simulated = SimulatedAgent(sim_dir, SimClock(), params=BoardParams(
        flow_meter_pulses_per_litre=500.0))
    processor = CommandProcessor(simulated.agent, load_config(simulated.config_path),
                                 board_id="b07", state_dir=sim_dir / "state",
                                 run_command=simulated.poweroff_commands.append)
    run = lambda seconds: simulated.run_for(seconds, on_tick=lambda report: processor.poll())
    run(15)
    yield simulated, processor, run
    processor.close()
    simulated.agent.close()


def test_parse_line_words_keywords_and_flags():
    parsed = parse_line("setpoint 4.5 for 30 --json -y", COMMANDS)
    assert (parsed.command.name, parsed.args, parsed.as_json, parsed.confirmed) == (
        "setpoint", {"watts": 4.5, "minutes": 30.0}, True, True)
    assert parse_line("events 3", COMMANDS).args == {"count": 3}
    assert parse_line("calibrate flow start", COMMANDS).args == {"litres": "start"}
    assert parse_line("help i2c scan", COMMANDS).args == {"command": "i2c scan"}
    with pytest.raises(CommandRefused, match="did you mean `status`"):
        parse_line("stauts", COMMANDS)
    with pytest.raises(CommandRefused, match="unexpected 'x'"):
        parse_line("status x", COMMANDS)
    with pytest.raises(CommandRefused, match="`for` needs a value"):
        parse_line("setpoint 4 for", COMMANDS)


def test_json_and_text_arguments_are_judged_alike(board):
    simulated, processor, run = board
    for value in ("nan", float("nan"), True, "4,5", [4], 16):
        result = processor.execute("setpoint", {"watts": value}, "operator")
        assert not result.ok and "expected a number from 0 to 15 W" in result.reason, value
    assert "unknown argument 'wats'" in processor.execute("setpoint", {"wats": 4},
                                                          "operator").reason
    assert processor.execute_line("setpoint 4", "serial")[0].ok
    assert processor.execute("setpoint", {"watts": 4.0}, "operator").ok


def state_of(simulated, processor) -> tuple:
    """What a refused command must leave as it was."""
    agent = simulated.agent
    return (agent.setpoints.current_w(agent.clock()), agent.setpoints.status,
            dict(agent.supervisor.latched), agent.supervisor.mode, processor.request.source,
            processor.override_until, processor.calibration, processor.tune)


@pytest.mark.parametrize("value", ["3", "\u0663", "4.0", "1e0", True, [3], {"w": 3}])
def test_json_arguments_must_be_json_numbers(board, value):
    """Over MQTT and the socket's JSON requests a number is a JSON number: text is not."""
    simulated, processor, run = board
    before = state_of(simulated, processor)
    for source in ("operator", "socket"):
        result = processor.execute("setpoint", {"watts": value}, source)
        assert not result.ok and result.reason.startswith("watts = "), result.reason
        assert "expected a number from 0 to 15 W" in result.reason
        assert state_of(simulated, processor) == before
    assert not processor.execute("events", {"count": value}, "socket").ok


def test_typed_numbers_are_ascii_digits_only(board):
    simulated, processor, run = board
    before = state_of(simulated, processor)
    for line in ("setpoint \u0663", "setpoint \uff13", "setpoint nan", "setpoint inf",
                 "setpoint 1_0", "setpoint 0x3", "events \u0663", "identify \u0968"):
        result, _ = processor.execute_line(line, "serial")
        assert not result.ok and "expected a" in result.reason, line
        assert result.command == line.split()[0], line
    assert state_of(simulated, processor) == before
    assert processor.execute_line("setpoint 3.5e0", "serial")[0].ok
    assert simulated.agent.setpoint_w == 3.5


@pytest.mark.parametrize("value", [10 ** 400, -10 ** 400, 10 ** 5000, float("inf"),
                                   float("-inf"), 1e308, -1e-300],
                         ids=["1e400", "-1e400", "1e5000", "inf", "-inf", "1e308", "-1e-300"])
def test_huge_and_non_finite_numbers_are_refused_not_raised(board, value):
    simulated, processor, run = board
    before = state_of(simulated, processor)
    for name, arg in (("setpoint", "watts"), ("events", "count"), ("identify", "seconds"),
                      ("i2c scan", "bus"), ("calibrate flow", "litres")):
        result = processor.execute(name, {arg: value}, "serial")
        assert not result.ok and result.reason.startswith(f"{arg} = "), (name, result.reason)
        assert len(result.reason) < 300, result.reason
    assert state_of(simulated, processor) == before


def test_execute_never_raises_and_never_returns_unsendable_text(board):
    """Whatever a caller passes, the answer is a Result whose text any transport can encode."""
    simulated, processor, run = board
    before = state_of(simulated, processor)
    calls = [("\ud800", {}, "operator"), ("setpoint", {"\udfff": 1}, "operator"),
             ("help", {"command": "\ud800"}, "serial"), ("help", {"command": "a\x00b"}, "socket"),
             (None, None, None), ("status", [("a", 1)], "serial"), ("status", {}, ["serial"]),
             ("setpoint", {"watts": 10 ** 400}, "leader"), (b"status", {}, "serial"),
             ("mode", {"mode": "safe\ud800"}, "operator"), ("help", {"command": "x" * 10 ** 5},
                                                           "serial")]
    for name, args, source in calls:
        result = processor.execute(name, args, source)
        assert not result.ok, (name, args)
        json.dumps(result.as_dict(), ensure_ascii=False).encode("utf-8")
        assert len(result.reason) < 300 and result.reason, result.reason
    assert processor.refused_commands == len(calls)
    assert processor.execute("status", {}, "serial").data["refused_commands"] == len(calls)
    assert state_of(simulated, processor) == before


@pytest.mark.parametrize("line", ["mode\x1csafe", "mode\u2028safe", "mode safe\x00",
                                  "mode \x1b[2Jsafe", "mode safe\ud800", "mode\u00a0safe",
                                  "mode safe" + " " * 300, "help " + "x" * 100_000],
                         ids=["FS", "LS", "NUL", "ESC", "surrogate", "NBSP", "300", "100k"])
def test_hostile_console_lines_are_refused_whole(board, line):
    """A line that is not plain printable text, or too long to be typed, is never executed,
    even when its words would otherwise make a command."""
    simulated, processor, run = board
    before = state_of(simulated, processor)
    result, as_json = processor.execute_line(line, "socket")
    assert not result.ok and as_json is False
    assert "line" in result.reason and len(result.reason) < 300, result.reason
    json.dumps(result.as_dict(), ensure_ascii=False).encode("utf-8")
    assert state_of(simulated, processor) == before


def test_remote_sources_get_only_the_remote_subset(board):
    simulated, processor, run = board
    assert {c.name for c in remote_commands("operator")} == {
        "setpoint", "mode", "reset", "identify", "tune"}
    assert {c.name for c in remote_commands("leader")} == {"setpoint", "identify"}
    refused = processor.execute("shutdown", {}, "operator", confirmed=True)
    assert not refused.ok and "not allowed from 'operator'" in refused.reason
    assert not simulated.agent.supervisor.shutdown.started
    assert not processor.execute("mode", {"mode": "safe"}, "leader").ok
    leader = processor.execute("setpoint", {"watts": 5.0}, "leader")
    assert leader.ok and simulated.agent.setpoint_w == 5.0
    assert simulated.agent.setpoints.status == "leader"
    assert processor.override_until is None


def test_local_setpoint_expires_back_to_the_leader(board):
    simulated, processor, run = board
    assert processor.execute("setpoint", {"watts": 4.5, "minutes": 1}, "serial").ok
    run(59)
    assert simulated.agent.setpoint_w == 4.5
    run(2)
    assert simulated.agent.setpoint_w == 3.0  # the configured fallback: no leader here
    assert "console:override_expired" in simulated.agent.events.causes()


def test_mode_safe_goes_through_the_supervisor(board):
    simulated, processor, run = board
    processor.execute("mode", {"mode": "safe"}, "serial")
    report = simulated.agent.tick()
    assert report.mode == "SAFE" and report.selected == "safe"
    assert "console:safe" in simulated.agent.supervisor.active
    processor.execute("mode", {"mode": "auto"}, "serial")
    run(10)
    assert simulated.agent.supervisor.mode.value == "NORMAL"


def test_tune_on_the_live_loop_applies_and_stores_gains(board):
    simulated, processor, run = board
    controller = simulated.agent.controller
    assert processor.execute("tune", {"loop": "power"}, "operator").confirm
    assert processor.execute("tune", {"loop": "power"}, "operator", confirmed=True).ok
    assert simulated.agent.controller is not controller
    run(70)
    assert processor.tune is None
    done = [e for e in simulated.agent.events.events if e.cause == "console:tune_done"]
    assert done and "kp =" in done[-1].message and "stored in" in done[-1].message, done
    assert (processor.state_store.path("gains.json")).exists()
    assert simulated.agent.controller is controller  # the heat controller is back


def test_flow_calibration_finds_the_meters_real_k_factor(board):
    simulated, processor, run = board
    plant = simulated.board.plant
    plant.water_flow_l_per_min = 6.0
    run(6)
    assert processor.execute("calibrate flow", {"litres": "start"}, "serial").ok
    run(60)
    result = processor.execute("calibrate flow", {"litres": 6.0}, "serial")
    assert result.ok, result.reason
    # The simulated meter gives 500 pulses per litre; the config still says 450.
    assert result.data["pulses_per_litre"] == pytest.approx(500.0, rel=0.02)
    assert "pulses_per_litre = " in result.text and "water_flow" in result.text


def test_diagnostics_name_what_is_missing(board):
    simulated, processor, run = board
    del simulated.board.smbus.chips[0x48]
    scan = processor.execute("i2c scan", {}, "serial")
    assert [row["address"] for row in scan.data["found"]] == ["0x40", "0x49"]
    assert "0x48  oil (tmp117) is configured but did NOT answer" in scan.text
    simulated.board.faults.w1_absent.add("water_in")
    run(2)
    listing = processor.execute("w1 list", {}, "serial")
    assert "water_in is configured but its device is not on the bus" in listing.text
    selftest = processor.execute("selftest", {}, "serial")
    assert not selftest.data["passed"]
    failed = {item["item"] for item in selftest.data["items"] if not item["pass"]}
    assert "sensor oil (tmp117)" in failed and "sensor water_in (ds18b20)" in failed


def test_config_check_reports_problems_of_the_file_on_disk(board):
    simulated, processor, run = board
    assert processor.execute("config check", {}, "serial").ok
    simulated.config_path.write_text(simulated.config_path.read_text()
                                     + "\n[limits]\nsoc_limit_c = 99.0\n")
    result = processor.execute("config check", {}, "serial")
    assert not result.ok and "limits.soc_limit_c = 99.0" in result.reason


def test_shutdown_goes_through_the_agents_shutdown_path(board):
    simulated, processor, run = board
    assert processor.execute("shutdown", {}, "serial", confirmed=True).ok
    run(11)
    assert simulated.agent.supervisor.mode.value == "SHUTDOWN"
    assert simulated.poweroff_commands == [["systemctl", "poweroff"]]


def test_without_the_agent_only_agentless_commands_run(tmp_path):
    processor = CommandProcessor.without_agent(tmp_path / "missing.toml", board_id="b07")
    assert processor.prompt() == "hearth b07 NO-AGENT> "
    assert processor.execute("help", {}, "serial").ok
    status = processor.execute("status", {}, "serial")
    assert not status.ok and "the agent is not running" in status.reason
    assert "missing.toml" in processor.execute("config check", {}, "serial").reason


def test_docs_page_matches_the_definitions():
    assert (REPO / "docs/console.md").read_text() == reference_markdown(), (
        "docs/console.md is stale: python -m agent.console.docs > docs/console.md")


def hearth(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL, **kwargs)


def test_ctl_without_an_agent_says_so_in_one_line(tmp_path):
    done = hearth("ctl", "--socket", str(tmp_path / "console.sock"), "status")
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("hearth ctl: the agent is not running: nothing answers on ")


def test_ctl_with_a_stale_socket_left_by_a_dead_agent(tmp_path):
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "console.sock"))
    stale.close()
    done = hearth("ctl", "--socket", str(tmp_path / "console.sock"), "status")
    assert done.returncode == 3 and "the agent is not running" in done.stderr


def test_ctl_against_a_running_agent(sim_dir):
    sock = sim_dir / "console.sock"
    agent = subprocess.Popen([sys.executable, "-m", "agent", "agent", "--sim", "--quiet",
                              "--sim-dir", str(sim_dir / "board"), "--console-socket",
                              str(sock), "--duration", "60"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
        status = hearth("ctl", "--socket", str(sock), "status", "--json")
        assert status.returncode == 0 and '"command": "status"' in status.stdout
        refused = hearth("ctl", "--socket", str(sock), "shutdown")
        assert refused.returncode == 1 and "add --yes to confirm" in refused.stderr
        bad = hearth("ctl", "--socket", str(sock), "setpoint", "99")
        assert bad.returncode == 1 and "expected a number from 0 to 15 W" in bad.stderr
        done = hearth("ctl", "--socket", str(sock), "--yes", "mode", "safe")
        assert done.returncode == 0 and "SAFE requested" in done.stdout
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    assert not sock.exists(), "the agent left its socket behind"
