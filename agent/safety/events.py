"""Safety events: kept in a RAM ring for the console and MQTT, and written to the journal.

The journal line carries a syslog priority prefix (`<3>` error, `<4>` warning, `<6>` info),
which systemd-journald reads from a service's stdout (SyslogLevelPrefix= defaults to yes).
"""

import collections
import dataclasses
import sys
from typing import Callable, TextIO

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6}


@dataclasses.dataclass(frozen=True)
class Event:
    time: float
    cause: str
    value: float | str | None
    message: str
    mode: str
    severity: str = "warning"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class EventLog:
    """The last `capacity` events, plus a journal line and listeners for each new one."""

    def __init__(self, capacity: int = 256, journal: TextIO | None = sys.stdout):
        self.events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self.journal = journal
        self.listeners: list[Callable[[Event], None]] = []

    def record(self, event: Event) -> None:
        self.events.append(event)
        if self.journal is not None:
            print(f"<{PRIORITY[event.severity]}>{event.cause}: {event.message}",
                  file=self.journal, flush=True)
        for listener in self.listeners:
            listener(event)

    def latest(self, count: int) -> list[Event]:
        return list(self.events)[-count:]

    def causes(self) -> list[str]:
        return [event.cause for event in self.events]
