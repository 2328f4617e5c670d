"""The site role's state files: read once at start, failing closed; written atomically.

Why a module of its own: the site keeps two files (its control state, its energy totals) with
the same rules: a missing file is a first start; a damaged one is kept aside for a technician,
named in an operator log line with what was wrong and what the site does instead, and never
stops the role; a failed write is logged and the role carries on with what it holds.
"""

import logging
from typing import Any, Callable, TypeVar

from agent.persist import StateStore

VERSION = 1
Parsed = TypeVar("Parsed")


class SiteMemory:
    def __init__(self, store: StateStore, wall_clock: Callable[[], float],
                 log: logging.Logger):
        self.store = store
        self.wall_clock = wall_clock
        self.log = log

    def read(self, name: str, parse: Callable[[dict[str, Any]], Parsed],
             instead: str) -> Parsed | None:
        """`parse(payload)` of the file `name`, or None (first start, or damaged: logged with
        `instead`, what the site does without it). `parse` raises ValueError for a payload
        it cannot use."""
        read = self.store.read(name, VERSION, {})
        path = self.store.path(name)
        if read.ok:
            try:
                return parse(read.payload)
            except ValueError as error:
                problem = f"state file {path}: {error}"
        else:
            problem = read.problem
        if not path.exists():
            return None
        try:
            kept = f"kept as {self.store.keep_aside(name, self.wall_clock()).name}"
        except OSError as error:
            kept = f"could not be kept aside ({error})"
        self.log.warning("%s; %s; %s", problem, kept, instead)
        return None

    def write(self, name: str, payload: dict[str, Any]) -> bool:
        """Write `payload` atomically; False (and a log line) when the disk refused."""
        try:
            self.store.write(name, VERSION, payload)
        except (OSError, ValueError) as error:
            self.log.warning("site state not saved to %s: %s; check the state directory and "
                             "the SD card", self.store.path(name), error)
            return False
        return True
