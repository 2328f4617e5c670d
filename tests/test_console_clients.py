"""`hearth console` as its own service (answers with the agent down) and `hearth term`'s tab
completion from the command definitions."""

import os
import subprocess
import sys
from pathlib import Path

from agent.commands.term import completions, strip_echo
from test_console_support import Line, open_pty

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
        "reboot", "shutdown")})
    assert completions("se") == ["selftest", "sensors", "setpoint"]
    assert completions("config ") == ["check", "show"]
    assert completions("mode s") == ["safe"]
    assert completions("calibrate flow ") == ["cancel", "start"]
    assert completions("status --j") == ["--json"]
    assert strip_echo(b"status\r\nboard b07", "status") == b"board b07"
