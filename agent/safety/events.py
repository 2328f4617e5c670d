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
    """The last `capacity` events, and for each new one a journal line and the subscribers' calls.

    Recording only keeps the event: the journal line and the subscribers (the MQTT link, a
    simulator's farm) run in `deliver()`, which the agent calls after it has written its
    actuators, so no I/O sits inside the supervise step and a slow subscriber cannot delay SAFE.
    """

    def __init__(self, capacity: int = 256, journal: TextIO | None = sys.stdout):
        self.events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self.journal = journal
        self._subscribers: list[tuple[object, Callable[[Event], None]]] = []
        self._pending: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)
        self._pending.append(event)

    def subscribe(self, owner: object, subscriber: Callable[[Event], None]) -> None:
        """Call `subscriber` with every event delivered from now on, until `unsubscribe(owner)`."""
        self._subscribers.append((owner, subscriber))

    def unsubscribe(self, owner: object) -> None:
        self._subscribers = [(o, s) for o, s in self._subscribers if o is not owner]

    def deliver(self) -> None:
        """Hand out what was recorded since the last call: a journal line each, then each
        subscriber in the order they subscribed."""
        pending, self._pending = self._pending, []
        for event in pending:
            if self.journal is not None:
                print(f"<{PRIORITY[event.severity]}>{event.cause}: {event.message}",
                      file=self.journal, flush=True)
            for owner, subscriber in self._subscribers:
                try:
                    subscriber(event)
                except Exception as error:  # a subscriber's bug must not reach the loop
                    print(f"<3>events: {owner!r} failed on {event.cause}: {error!r}",
                          file=sys.stderr, flush=True)

    def latest(self, count: int) -> list[Event]:
        return list(self.events)[-count:]

    def causes(self) -> list[str]:
        return [event.cause for event in self.events]
