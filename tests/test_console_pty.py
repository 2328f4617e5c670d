"""Every console command over a real pseudo-terminal, pyserial on the agent's side: human and
JSON output, and confirmation for the destructive ones."""

import json
import os
import re
import time

import pytest

from agent.console.commands import COMMANDS
from agent.console.spec import parse_line
from test_console_support import PROMPT, Board, Line, open_pty


@pytest.fixture
def console(sim_dir):
    master, slave, path = open_pty()
    board = Board(sim_dir, path).start()
    line = Line(master)
    assert b"Hearth technician console" in line.read_until()
    yield board, line
    board.stop()
    os.close(master)
    os.close(slave)
    assert board.loop_error is None


def as_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# (line typed, a regex the human answer must match, a key path the JSON data must have)
READ_ONLY = [
    ("help", r"setpoint <watts> \[for <minutes>\].*selftest", "commands"),
    ("help setpoint", r"usage: setpoint <watts> \[for <minutes>\]", "usage"),
    ("status", r"board b07  mode NORMAL.*setpoint 3\.00 W from fallback", "mode"),
    ("sensors", r"board_power\.power_w +\d+\.\d+ W +ok.*water_flow", "readings"),
    ("limits", r"soc_critical_c +78.*now: mode NORMAL", "configured"),
    ("faults", r"no faults", "latched"),
    ("events 3", r"s ago +info +", "events"),
    ("i2c scan", r"0x40  board_power \(ina219\).*0x48  oil.*0x49  water_pressure", "found"),
    ("w1 list", r"28-[0-9a-f]{12}  water_(in|out)  \d+\.\d+ C", "devices"),
    ("config show", r'board_type = "oil-carrier".*\[\[sensor\]\]', "sensor"),
    ("config check", r"OK: board type oil-carrier, 8 sensors", "ok"),
    ("selftest", r"PASS  sensor board_power.*PASS  status LED.*14 passed, 0 failed", "items"),
    ("version", r"Hearth \d+\.\d+\.\d+.*other slot", "installed"),
    ("update status", r"no update on this board yet", "state"),
]


def test_read_only_commands_human_and_json(console):
    board, line = console
    for typed, pattern, key in READ_ONLY:
        human = line.command(typed)
        assert re.search(pattern, human, re.S), (typed, human)
        reply = as_json(line.command(typed + " --json"))
        assert reply["ok"] is True, (typed, reply)
        assert reply["command"] == parse_line(typed, COMMANDS).command.name
        assert key in reply["data"], (typed, reply)


def wait_for_mode(board, mode: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while board.agent.supervisor.mode.value != mode and time.monotonic() < deadline:
        time.sleep(0.05)


def test_prompt_shows_board_id_and_mode(console):
    board, line = console
    wait_for_mode(board, "NORMAL")     # the board's first loops may still be starting up
    line.send("\r")
    assert line.read_until().endswith(b"hearth b07 NORMAL> ")
    line.command("mode safe")
    wait_for_mode(board, "SAFE")
    line.send("\r")
    assert line.read_until().endswith(b"hearth b07 SAFE> ")


def test_setpoint_mode_and_identify(console):
    board, line = console
    assert "setpoint 4.5 W (local) for 30 min" in line.command("setpoint 4.5 for 30")
    assert board.agent.setpoints.current_w(board.agent.clock()) == 4.5
    status = as_json(line.command("status --json"))["data"]
    assert status["setpoint_source"] == "local" and 1790 < status["override_left_s"] <= 1800
    refused = line.command("setpoint 9")
    assert "rejected" in refused and "outside this board's range 2 to 6.5 W" in refused
    assert board.agent.setpoints.current_w(board.agent.clock()) == 4.5
    bad = as_json(line.command("setpoint lots --json"))
    assert bad["ok"] is False and "expected a number from 0 to 15 W" in bad["reason"]
    assert "holding 4.5 W" in line.command("mode hold")
    assert "SAFE requested" in line.command("mode safe")
    assert as_json(line.command("mode auto --json"))["data"]["mode"] == "auto"
    assert board.agent.setpoints.current_w(board.agent.clock()) == 3.0  # the fallback again
    assert "GPIO 27" in line.command("identify 1")
    led = board.simulated.board.pin_factory.pin(27)
    deadline = time.monotonic() + 3
    while len(led.states) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(state.state for state in led.states), "the status LED never lit"
    assert as_json(line.command("identify 1 --json"))["data"] == {"gpio": 27, "seconds": 1.0}


def test_calibrate_flow_over_the_line(console):
    board, line = console
    board.simulated.board.plant.water_flow_l_per_min = 12.0
    time.sleep(5.5)  # one meter window of steady flow
    assert "counting water_flow pulses" in line.command("calibrate flow start")
    started_s = board.agent.clock()
    time.sleep(3.0)
    litres = 12.0 / 60.0 * (board.agent.clock() - started_s)
    reply = as_json(line.command(f"calibrate flow {litres:.3f} --json"))
    assert reply["ok"], reply
    # The simulated meter gives 450 pulses per litre, as configured.
    assert 400 < reply["data"]["pulses_per_litre"] < 500, reply
    assert "no calibration is running" in line.command("calibrate flow 1")


def test_destructive_commands_ask_first(console):
    board, line = console
    question = line.command("reset")
    assert "reset clears the latched faults" in question and "Type yes" in question
    assert "cancelled: nothing was changed" in line.command("no")
    line.command("reset")
    assert "nothing is latched" in line.command("yes")
    reply = as_json(line.command("shutdown --json"))
    assert reply["ok"] is False and "powers the board off" in reply["confirm"]
    assert "cancelled" in line.command("shutdown")  # an empty answer is not a yes
    assert not board.agent.supervisor.shutdown.started
    assert "Type yes" in line.command("tune")
    assert "cancelled" in line.command("nope")
    assert board.service.processor.tune is None
    assert "Type yes" in line.command("reboot")
    assert "SAFE now; reboot requested" in line.command("yes")
    assert board.simulated.poweroff_commands == [["systemctl", "reboot"]]
    assert "shutdown powers the board off" in line.command("shutdown")
    assert "shutting down" in line.command("y")
    assert board.agent.supervisor.shutdown.started


def test_tune_starts_on_the_live_loop_and_stops(console):
    board, line = console
    line.command("tune soc")
    assert "tuning the soc loop" in line.command("yes")
    assert board.service.processor.tune is not None
    assert "being tuned already" in line.command("tune --yes")
    assert "tune stopped" in line.command("tune stop --yes")
    deadline = time.monotonic() + 3
    while board.service.processor.tune is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.service.processor.tune is None
    assert "console:tune_done" in line.command("events 3")


def test_every_command_is_covered_here():
    typed = {t.split(" --")[0] for t, *_ in READ_ONLY}
    exercised = typed | {"setpoint", "mode", "identify", "calibrate flow", "reset", "shutdown",
                         "tune", "reboot"}
    names = {command.name for command in COMMANDS}
    assert {name for name in names if not any(t == name or t.startswith(name + " ")
                                              for t in exercised)} == set()


def test_line_discipline_on_the_wire(console):
    board, line = console
    line.send("statx\x7fus\rhelp\x08\x08\x08\x08faults\n")
    first = line.read_until()
    assert b"board b07" in first
    second = line.read_until()
    assert b"no faults" in second
    line.send("status\r\n")
    assert b"board b07" in line.read_until()
    line.send("\x1b[Astatus\r")  # an arrow key's escape sequence is not noise
    assert b"board b07" in line.read_until()
    line.send("x" * 300 + "\r")
    assert b"line too long (300 characters, at most 256): discarded" in line.read_until()
    line.send("sta\x03")
    assert line.read_until().endswith(b"^C\r\nhearth b07 NORMAL> ")
    line.send("stat\x15status\r")
    assert b"board b07" in line.read_until()


ON_ITS_OWN_TERMINAL = """
import os, sys
terminal = os.open(sys.argv[1], os.O_RDWR)  # a new session's first tty: its controlling one
for fd in (0, 1, 2):
    os.dup2(terminal, fd)
os.execv(sys.executable, [sys.executable, "-m", "agent", "term", *sys.argv[2:]])
"""


@pytest.fixture
def term(sim_dir, tmp_path):
    """`hearth term` on a technician's terminal (a pty whose line discipline turns Ctrl-C into
    SIGINT, as a laptop's does), the board at the other end of a null-modem cable: the
    terminal's screen, the term process, and the board."""
    import subprocess
    import sys
    import threading

    from test_console_support import bridge

    board_master, board_slave, board_path = open_pty()
    laptop_master, laptop_slave, laptop_path = open_pty()
    terminal_master, terminal_slave = os.openpty()
    stop = threading.Event()
    cable = bridge(board_master, laptop_master, stop)
    board = Board(sim_dir, board_path).start()
    process = subprocess.Popen(
        [sys.executable, "-c", ON_ITS_OWN_TERMINAL, os.ttyname(terminal_slave), laptop_path,
         "--history", str(tmp_path / "history")],
        start_new_session=True, env={**os.environ, "TERM": "dumb"})
    screen = Line(terminal_master)
    try:
        banner = screen.read_until(timeout_s=20).decode()
        yield screen, process, board, banner
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        board.stop()
        stop.set()
        cable.join(timeout=2)
        for fd in (board_master, board_slave, laptop_master, laptop_slave, terminal_master,
                   terminal_slave):
            os.close(fd)


def test_term_sends_ctrl_c_to_the_console_and_says_how_to_quit(term):
    """Ctrl-C cancels on the board (here a pending confirmation) instead of ending the
    session; Ctrl-D ends it."""
    screen, process, board, banner = term
    assert "Ctrl-C cancels the line on the board" in banner, banner
    assert "Ctrl-D (on an empty line) quits" in banner, banner
    screen.send("reset\r")
    assert b"Type yes" in screen.read_until()
    screen.send("\x03")
    assert b"^C" in screen.read_until()
    assert process.poll() is None, "Ctrl-C ended hearth term"
    screen.send("yes\r")
    answer = screen.read_until().decode()
    assert "unknown command 'yes'" in answer and "nothing is latched" not in answer, answer
    screen.send("stat\x03")  # a half-typed line is dropped, on the laptop and the board
    assert b"^C" in screen.read_until()
    screen.send("status\r")
    assert b"board b07" in screen.read_until()
    screen.send("\x04")
    assert process.wait(timeout=10) == 0


def test_ctrl_c_while_term_is_still_taking_in_a_paste_cancels_it(term):
    """A Ctrl-C that reaches hearth term while it is busy echoing typed characters (a paste,
    or a fast typist on a loaded laptop) is acted on at once, not when the next key comes;
    and the line it cancelled neither runs nor lingers on the board or in the history."""
    screen, process, board, _ = term
    for attempt in range(10):
        screen.send("reset" + " " * 1000)
        screen.read_until(re.compile(b".", re.DOTALL), timeout_s=5)  # being echoed
        screen.send("\x03")
        shown = screen.read_until(timeout_s=5)
        assert b"^C" in shown, (attempt, shown[-300:])
        assert process.poll() is None, "Ctrl-C ended hearth term"
    assert b"Type yes" not in shown
    screen.send("status\r")
    assert b"board b07" in screen.read_until()
    screen.send("\x1b[A\r")  # the previous line in the history is status, not a cancelled one
    assert b"board b07" in screen.read_until()
    screen.send("\x04")
    assert process.wait(timeout=10) == 0
