"""Line discipline and the interactive session of a serial console.

A serial line carries whatever the cable picks up: a technician's keystrokes with CR, LF or
CRLF and backspaces, terminal escape sequences from arrow keys, and, with a wrong baud rate
or a loose ground, binary noise. Only a line made entirely of text is ever executed; a line
with any noise in it is dropped whole, so noise cannot assemble a command by chance. Lines
are rate-limited, and nothing here can raise into the transport's thread.
"""

import time
from typing import Callable, Protocol

from agent.console.spec import MAX_LINE, Result

RATE_PER_S = 5.0
BURST = 20
NOTICE_EVERY_S = 5.0
BS, DEL, CTRL_C, CTRL_U, ESC, CR, LF, TAB = 0x08, 0x7F, 0x03, 0x15, 0x1B, 0x0D, 0x0A, 0x09


class Executor(Protocol):
    """What a session runs lines on: a CommandProcessor, or the agent behind a socket."""

    def execute_line(self, line: str, source: str,
                     confirmed: bool = False) -> tuple[Result, bool]: ...

    def prompt(self) -> str: ...


class RateLimit:
    """A token bucket: `burst` lines at once, then `rate_per_s`."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class LineDiscipline:
    """Bytes in; complete text lines, and what to echo, out.

    Events from feed(): ("line", text), ("too_long", length), ("noise", bytes_dropped),
    ("cancel", "").
    """

    def __init__(self, max_line: int = MAX_LINE, echo: bool = True):
        self.max_line = max_line
        self.echo = echo
        self._chars: list[str] = []
        self._length = 0
        self._noise = 0
        self._after_cr = False
        self._escape = 0
        """0: none; 1: after ESC; 2: inside a CSI sequence (ESC [ ... final byte)."""

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[str, object]]]:
        echo = bytearray()
        events: list[tuple[str, object]] = []
        for byte in data:
            after_cr, self._after_cr = self._after_cr, False
            if self._escape and 0x20 <= byte <= 0x7E:
                # ESC x, or ESC [ parameters final-byte: a terminal's key, not text.
                if self._escape == 1:
                    self._escape = 2 if byte == ord("[") else 0
                elif 0x40 <= byte <= 0x7E:
                    self._escape = 0
                continue
            self._escape = 0  # a control byte ends any escape and counts as itself
            if byte in (CR, LF):
                if byte == LF and after_cr:
                    continue
                self._after_cr = byte == CR
                events.append(self._finish())
                if self.echo:
                    echo += b"\r\n"
            elif byte in (BS, DEL):
                if self._chars:
                    self._chars.pop()
                    if self.echo:
                        echo += b"\b \b"
                self._length = max(0, self._length - 1)
            elif byte == CTRL_C:
                self._reset()
                events.append(("cancel", ""))
                if self.echo:
                    echo += b"^C\r\n"
            elif byte == CTRL_U:
                if self.echo:
                    echo += b"\b \b" * len(self._chars)
                self._reset()
            elif byte == ESC:
                self._escape = 1
            elif byte == TAB:
                continue
            elif 0x20 <= byte <= 0x7E:
                self._length += 1
                if self._length <= self.max_line:
                    self._chars.append(chr(byte))
                    if self.echo:
                        echo.append(byte)
            else:
                self._noise += 1
        return bytes(echo), events

    def _finish(self) -> tuple[str, object]:
        text, length, noise = "".join(self._chars), self._length, self._noise
        self._reset()
        if noise:
            return ("noise", noise)
        if length > self.max_line:
            return ("too_long", length)
        return ("line", text)

    def _reset(self) -> None:
        self._chars = []
        self._length = 0
        self._noise = 0


class Session:
    """One technician's conversation on a line: prompt, commands, confirmations, notices."""

    def __init__(self, executor: Executor, source: str, write: Callable[[bytes], None],
                 clock: Callable[[], float] = time.monotonic, echo: bool = True,
                 max_line: int = MAX_LINE, rate_per_s: float = RATE_PER_S, burst: int = BURST):
        self.executor = executor
        self.source = source
        self.write = write
        self.clock = clock
        self.discipline = LineDiscipline(max_line, echo)
        self.rate = RateLimit(rate_per_s, burst, clock)
        self.pending: str | None = None
        """A destructive command's line, waiting for `yes`."""
        self._noticed: dict[str, float] = {}
        self.dropped_lines = 0

    def start(self) -> None:
        self._say("Hearth technician console. Type help for the commands.")
        self._prompt()

    def feed(self, data: bytes) -> None:
        echo, events = self.discipline.feed(data)
        if echo:
            self.write(echo)
        for kind, value in events:
            if kind == "cancel":
                self.pending = None
                self._prompt()
                continue
            if not self.rate.allow():
                self.dropped_lines += 1
                self._notice("rate", f"too many lines: dropping them (at most {RATE_PER_S:g} "
                             "per second); wait a moment, then type again")
                continue
            if kind == "noise":
                self._notice("noise", f"line noise ignored ({value} bytes that are not text); "
                             "if this persists, check the baud rate (115200 8N1) and the "
                             "ground wire")
                self._prompt()
            elif kind == "too_long":
                self._say(f"line too long ({value} characters, at most "
                          f"{self.discipline.max_line}): discarded")
                self._prompt()
            else:
                self._line(str(value))

    def _line(self, line: str) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if line.strip().lower() in ("yes", "y"):
                self._reply(*self.executor.execute_line(pending, self.source, confirmed=True))
            else:
                self._say("cancelled: nothing was changed")
            self._prompt()
            return
        if line.strip():
            result, as_json = self.executor.execute_line(line, self.source)
            if result.confirm:
                self.pending = line
            self._reply(result, as_json)
        self._prompt()

    def _reply(self, result: Result, as_json: bool) -> None:
        self._say(result.render(as_json))

    def _notice(self, key: str, message: str) -> None:
        now = self.clock()
        if now - self._noticed.get(key, -NOTICE_EVERY_S) >= NOTICE_EVERY_S:
            self._noticed[key] = now
            self._say(message)

    def _say(self, text: str) -> None:
        self.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
                   + b"\r\n")

    def _prompt(self) -> None:
        self.write(self.executor.prompt().encode("utf-8", "replace"))
