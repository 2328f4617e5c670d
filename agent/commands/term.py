"""`hearth term`: a technician's laptop terminal for a board's serial console.

Line editing happens on the laptop (readline: history across sessions, tab completion of the
command names from the same definitions the board uses); the board sees whole lines, so a
slow or noisy cable costs nothing while typing.

Ctrl-C never ends the session: at the prompt it is a key like the others (CPython's readline
notices a SIGINT only when it interrupts its wait for a key, so one that lands while it is
still echoing earlier keys would wait for the next key, and the terminal has already thrown
the keys after it away); while an answer is awaited it is a SIGINT that is counted, never
raised, so no byte already read from the port is lost.
"""

import argparse
import contextlib
import os
import re
import signal
import sys
import termios
import time
from pathlib import Path

from agent.console.commands import COMMANDS
from agent.console.transports import DEFAULT_BAUD

PROMPT = re.compile(rb"hearth \S+ \S+> $")
ANY_PROMPT = re.compile(rb"hearth \S+ \S+> ")
CTRL_C = b"\x03"
CTRL_C_SHOWN = "^C"  # by readline and the board's echo alike
CTRL_C_ENDS_THE_LINE = r'"\C-c": "\C-e\C-v\C-c\C-m"'  # a visible ^C at its end, then Enter
HISTORY = Path("~/.hearth_history")
ANSWER_S = 20.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "term", help="open a board's serial console from a laptop (history, tab completion)",
        description="Open a board's technician console on a serial port with line editing, "
        "history and tab completion of command names. Ctrl-C goes to the board's console, "
        "which cancels the line (or a question it asked); Ctrl-D on an empty line quits.")
    parser.add_argument("port", help="serial port, e.g. /dev/ttyUSB0")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"baud rate (default {DEFAULT_BAUD}, 8N1)")
    parser.add_argument("--history", type=Path, default=HISTORY, metavar="FILE",
                        help=f"history file (default {HISTORY})")
    parser.set_defaults(run=run)


def completions(before: str) -> list[str]:
    """Words that may come next after `before` (the line up to the cursor's word)."""
    words = before.split()
    if before and not before.endswith(" "):
        typed, words = words[-1], words[:-1]
    else:
        typed = ""
    candidates: set[str] = set()
    for command in COMMANDS:
        name = command.name.split()
        if words[:len(name)] == name and len(words) >= len(name):
            position = len(words) - len(name)
            positional = [arg for arg in command.args if not arg.keyword]
            if position < len(positional):
                candidates.update(positional[position].choices)
        elif name[:len(words)] == words and len(words) < len(name):
            candidates.add(name[len(words)])
    if typed.startswith("-") or (not words and not typed):
        candidates.update(("--json",) if words else ())
    return sorted(c for c in candidates if c.startswith(typed))


class CtrlCPresses:
    """SIGINT handler that counts presses. The handler only adds and the reader only takes
    what it has not seen yet, so a press landing while the reader takes is never lost."""

    def __init__(self):
        self.pressed = 0
        self.seen = 0

    def __call__(self, signum: int, frame) -> None:
        self.pressed += 1

    def take(self) -> int:
        new = self.pressed - self.seen
        self.seen += new
        return new


@contextlib.contextmanager
def ctrl_c_as_a_key(terminal_fd: int):
    """The terminal sends Ctrl-C to the program as a key instead of a SIGINT, meanwhile."""
    if not os.isatty(terminal_fd):
        yield
        return
    saved = termios.tcgetattr(terminal_fd)
    keyed = termios.tcgetattr(terminal_fd)
    keyed[6][termios.VINTR] = os.fpathconf(terminal_fd, "PC_VDISABLE")
    termios.tcsetattr(terminal_fd, termios.TCSANOW, keyed)
    try:
        yield
    finally:
        termios.tcsetattr(terminal_fd, termios.TCSANOW, saved)


def read_reply(port, deadline_s: float, presses: CtrlCPresses) -> bytes:
    """Everything the board sends up to and including its next prompt. Ctrl-C meanwhile goes
    to the board too, and the prompt the console answers it with is waited for as well."""
    data = b""
    cancels = 0
    while time.monotonic() < deadline_s:
        for _ in range(presses.take()):
            port.write(CTRL_C)
            cancels += 1
        data += port.read(max(1, port.in_waiting))
        if PROMPT.search(data) and len(ANY_PROMPT.findall(data)) > cancels:
            return data
    return data


def strip_echo(reply: bytes, line: str) -> bytes:
    """Without the board's echo of what readline has shown already."""
    echo = line.encode() + b"\r\n"
    return reply[len(echo):] if reply.startswith(echo) else reply


def run(args: argparse.Namespace) -> int:
    import readline

    import serial

    history = args.history.expanduser()
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_completer_delims(" ")
    readline.set_completer(lambda text, state: (
        completions(readline.get_line_buffer()[:readline.get_endidx()]) + [None])[state])
    readline.parse_and_bind("tab: complete")
    readline.parse_and_bind(CTRL_C_ENDS_THE_LINE)
    readline.set_auto_history(False)
    try:
        port = serial.Serial(args.port, args.baud, timeout=0.1)
    except serial.SerialException as error:
        print(f"hearth term: {args.port} could not be opened ({error}); check the cable and "
              "that you are in group dialout", file=sys.stderr)
        return 2
    print(f"hearth term: {args.port} at {args.baud} 8N1. Ctrl-C cancels the line on the board; "
          "Ctrl-D (on an empty line) quits.", flush=True)
    presses = CtrlCPresses()
    interrupt_handler = signal.signal(signal.SIGINT, presses)
    try:
        port.write(b"\r")
        reply = read_reply(port, time.monotonic() + ANSWER_S, presses)
        while True:
            text = reply.decode("utf-8", "replace")
            match = PROMPT.search(reply)
            if match is None:
                sys.stdout.write(text)
                print(f"\nthe board did not answer within {ANSWER_S:g} s; check the port, the "
                      f"baud rate ({args.baud}) and the cable", file=sys.stderr)
                return 1
            body = text[:match.start()].replace("\r\n", "\n")
            if body.strip():
                sys.stdout.write(body if body.endswith("\n") else body + "\n")
            try:
                with ctrl_c_as_a_key(sys.stdin.fileno()):
                    # Ctrl-C pressed as the answer came in counts as pressed at the prompt.
                    line = CTRL_C.decode() if presses.take() else input(match.group().decode())
            except EOFError:
                print()
                return 0
            if CTRL_C.decode() in line:  # the console's, as on its own serial line
                port.write(CTRL_C)
                line = CTRL_C_SHOWN
            else:
                if line.strip():
                    readline.add_history(line)
                port.write(line.encode("ascii", "replace") + b"\r")
            reply = strip_echo(read_reply(port, time.monotonic() + ANSWER_S, presses), line)
    finally:
        signal.signal(signal.SIGINT, interrupt_handler)
        port.close()
        try:
            readline.write_history_file(history)
        except OSError:
            pass
