"""`hearth console` as its own service (answers with the agent down) and `hearth term`'s tab
completion from the command definitions."""

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.commands.term import completions, strip_echo
from test_console_support import Board, Line, open_pty

REPO = Path(__file__).resolve().parent.parent


def test_console_service_answers_while_the_agent_is_down(tmp_path):
    master, slave, path = open_pty()
    console = subprocess.Popen(
        [sys.executable, "-m", "agent", "console", "--device", path, "--socket",
         str(tmp_path / "console.sock"), "--config", str(tmp_path / "hearth.toml")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = Line(master)
    try:
        assert line.read_until(timeout_s=20).endswith(b"NO-AGENT> ")
        status = line.command("status")
        assert "the agent is not running: nothing answers on" in status
        assert "usage: i2c scan" in line.command("help i2c scan")
        assert "hearth.toml" in line.command("config check")
    finally:
        console.terminate()
        console.wait(timeout=10)
        os.close(master)
        os.close(slave)


def test_term_completes_command_names_and_choices():
    assert completions("") == sorted({c.split()[0] for c in (
        "help", "status", "sensors", "limits", "faults", "events", "setpoint", "mode",
        "reset", "tune", "identify", "i2c", "w1", "config", "calibrate", "selftest",
        "reboot", "shutdown", "version", "update")})
    assert completions("se") == ["selftest", "sensors", "setpoint"]
    assert completions("config ") == ["check", "show"]
    assert completions("mode s") == ["safe"]
    assert completions("calibrate flow ") == ["cancel", "start"]
    assert completions("status --j") == ["--json"]
    assert strip_echo(b"status\r\nboard b07", "status") == b"board b07"


def ctl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "ctl", *argv], capture_output=True,
                          text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)


def test_ctl_takes_json_before_and_after_the_command(sim_dir):
    board = Board(sim_dir, None).start()
    try:
        for argv in (["--json", "status"], ["status", "--json"], ["--json", "status", "--json"]):
            done = ctl("--socket", str(board.socket_path), *argv)
            assert (done.returncode, done.stderr) == (0, ""), argv
            reply = json.loads(done.stdout)
            assert reply["ok"] is True and reply["command"] == "status", argv
            assert reply["data"]["mode"] == "NORMAL"
        refused = ctl("--socket", str(board.socket_path), "--json", "setpoint", "lots")
        assert refused.returncode == 1 and json.loads(refused.stdout)["ok"] is False
    finally:
        board.stop()


def test_ctl_exit_codes_keep_usage_errors_apart_from_a_silent_agent(tmp_path):
    """argparse's usage errors exit 2; the agent not answering has its own code, 3 (LSB's
    "program is not running"), so a script can tell a typo from a stopped agent."""
    socket_path = str(tmp_path / "console.sock")
    silent = ctl("--socket", socket_path, "--json", "status")
    assert silent.returncode == 3, silent.stderr
    reply = json.loads(silent.stdout)
    assert reply["ok"] is False and "the agent is not running" in reply["reason"]
    plain = ctl("--socket", socket_path, "status")
    assert plain.returncode == 3 and plain.stdout == ""
    assert plain.stderr.startswith("hearth ctl: the agent is not running")
    usage = ctl("--socket", socket_path, "--jsn", "status")
    assert usage.returncode == 2 and "usage:" in usage.stderr
