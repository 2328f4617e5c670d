"""Python logging of the roles systemd runs carries syslog priority prefixes, so
`journalctl -p warning` finds their warnings (the agent's safety events already had them)."""

import logging
import os
import subprocess
import sys

import pytest

from agent.journal_log import JournalFormatter, syslog_priority


def formatted(level: int, message: str, exc_info=None) -> str:
    record = logging.LogRecord("agent.site.role", level, __file__, 1, message, (), exc_info)
    return JournalFormatter("%(name)s: %(message)s").format(record)


def test_each_level_gets_its_syslog_priority():
    assert formatted(logging.WARNING, "site target 'x' rejected") == (
        "<4>agent.site.role: site target 'x' rejected")
    assert formatted(logging.ERROR, "e").startswith("<3>")
    assert formatted(logging.CRITICAL, "c").startswith("<2>")
    assert formatted(logging.INFO, "i").startswith("<6>")
    assert formatted(logging.DEBUG, "d").startswith("<7>")
    assert syslog_priority(logging.WARNING + 5) == 4


def test_every_line_of_a_traceback_carries_the_prefix():
    try:
        raise ValueError("broken")
    except ValueError:
        text = formatted(logging.ERROR, "on_message failed\nsecond line", sys.exc_info())
    lines = text.splitlines()
    assert len(lines) > 3 and any("ValueError: broken" in line for line in lines)
    assert all(line.startswith("<3>") for line in lines), text


SET_UP_BY_THE_COMMAND = """
import logging, sys
from agent.cli import main
status = main(sys.argv[1:])
logging.getLogger("agent.test").warning("after the command: %s", status)
"""


@pytest.mark.parametrize("command", [["leader"], ["site"], ["agent", "--state-dir", "{tmp}"]])
def test_roles_log_with_priorities(command, tmp_path):
    """Each role sets up logging before it reads its config, so even a config it refuses leaves
    the journal's setup in place; a warning logged afterwards goes out as `<4>`."""
    argv = [word.format(tmp=tmp_path) for word in command]
    result = subprocess.run(
        [sys.executable, "-c", SET_UP_BY_THE_COMMAND, *argv,
         "--config", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = result.stderr.splitlines()
    assert "<4>agent.test: after the command: 2" in lines, result.stderr



def test_a_refused_start_is_an_error_in_the_journal_and_plain_in_a_terminal(tmp_path):
    """systemd names the journal's stream in JOURNAL_STREAM (device:inode); `hearth` prefixes
    its one-line refusal with `<3>` only there."""
    journal = tmp_path / "journal"
    command = [sys.executable, "-m", "agent", "site", "--config", str(tmp_path / "missing.toml")]
    with journal.open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        subprocess.run(command, stderr=stream, stdout=subprocess.DEVNULL, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    lines = journal.read_text().splitlines()
    assert lines[0].startswith("<3>hearth site: 1 problem in the configuration")
    assert len(lines) > 1 and all(line.startswith("<3>") for line in lines), lines
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert plain.returncode == 2 and plain.stderr.startswith("hearth site: 1 problem")
