"""Python logging for the journal: every line starts with its syslog priority (`<4>` warning).

systemd-journald reads that prefix from a service's stdout and stderr (SyslogLevelPrefix=
defaults to yes), so `journalctl -p warning` finds a role's warnings as it finds the agent's
safety events (agent/safety/events.py). Without it every line is stored as info.
"""

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

FORMAT = "%(name)s: %(message)s"

ERROR_PRIORITY = 3
DEBUG_PRIORITY = 7
# (lowest logging level, syslog priority), highest first, as syslog(3) numbers them.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, ERROR_PRIORITY), (logging.WARNING, 4),
              (logging.INFO, 6))


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level (a custom level takes the one just below it)."""
    return next((priority for lowest, priority in PRIORITIES if level >= lowest), DEBUG_PRIORITY)


class JournalFormatter(logging.Formatter):
    """Prefixes each line of a record, a traceback's too: the journal stores every line as an
    entry of its own, and an unprefixed one would be info."""

    def format(self, record: logging.LogRecord) -> str:
        return with_priority(super().format(record), syslog_priority(record.levelno))


def log_to_journal(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Set up Python logging for a role run by systemd (`hearth agent`, `leader`, `site`).

    Like logging.basicConfig, it leaves a logging setup that already has handlers alone.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JournalFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def writes_to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is connected to the journal: systemd puts that stream's device:inode in
    JOURNAL_STREAM, so a command typed in a terminal keeps its plain lines."""
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO) or a closed one
        return False
    return environ.get("JOURNAL_STREAM") == f"{status.st_dev}:{status.st_ino}"


def with_priority(text: str, priority: int) -> str:
    """Each line of `text` with the syslog priority prefix."""
    return "\n".join(f"<{priority}>{line}" for line in text.splitlines())
