"""Notices a config file changed on disk while the agent runs, and says what to do.

The agent never reloads silently: a half-edited file must not change a running board. It
keeps the config it started with and leaves an event telling the operator to restart it,
with the new file's problems if it has any.
"""

from pathlib import Path

from agent.config import load_config
from agent.errors import ConfigError
from agent.safety.events import Event, EventLog

CHECK_EVERY_S = 5.0


class ConfigWatch:
    def __init__(self, path: Path, events: EventLog, now: float):
        self.path = path
        self.events = events
        self._signature = self._stat()
        self._next_check_s = now + CHECK_EVERY_S

    def _stat(self) -> tuple[int, int] | None:
        try:
            status = self.path.stat()
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size

    def poll(self, now: float, mode: str) -> None:
        if now < self._next_check_s:
            return
        self._next_check_s = now + CHECK_EVERY_S
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            load_config(self.path)
            verdict = "it is valid; restart the agent (systemctl restart hearth-agent) to apply it"
        except (ConfigError, OSError) as error:
            verdict = (f"it does NOT load ({error}); fix it before the next restart, the agent "
                       "keeps running on the config it started with")
        self.events.record(Event(now, "config_changed", str(self.path),
                                 f"{self.path} changed on disk: {verdict}", mode, "warning"))
