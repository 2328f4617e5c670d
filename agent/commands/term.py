"""`hearth term`: a technician's laptop terminal for a board's serial console.

Line editing happens on the laptop (readline: history across sessions, tab completion of the
command names from the same definitions the board uses); the board sees whole lines, so a
slow or noisy cable costs nothing while typing.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

from agent.console.commands import COMMANDS
from agent.console.transports import DEFAULT_BAUD

PROMPT = re.compile(rb"hearth \S+ \S+> $")
ANY_PROMPT = re.compile(rb"hearth \S+ \S+> ")
CTRL_C = b"\x03"
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


def read_reply(port, deadline_s: float) -> bytes:
    """Everything the board sends up to and including its next prompt. Ctrl-C meanwhile goes
    to the board too, and the prompt the console answers it with is waited for as well."""
    data = b""
    cancels = 0
    while time.monotonic() < deadline_s:
        try:
            data += port.read(max(1, port.in_waiting))
        except KeyboardInterrupt:
            port.write(CTRL_C)
            cancels += 1
        if PROMPT.search(data) and len(ANY_PROMPT.findall(data)) > cancels:
            return data
    return data


def strip_echo(reply: bytes, line: str) -> bytes:
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
    try:
        port = serial.Serial(args.port, args.baud, timeout=0.1)
    except serial.SerialException as error:
        print(f"hearth term: {args.port} could not be opened ({error}); check the cable and "
              "that you are in group dialout", file=sys.stderr)
        return 2
    print(f"hearth term: {args.port} at {args.baud} 8N1. Ctrl-C cancels the line on the board; "
          "Ctrl-D (on an empty line) quits.", flush=True)
    try:
        port.write(b"\r")
        reply = read_reply(port, time.monotonic() + ANSWER_S)
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
                line = input(match.group().decode())
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:  # the console's, as on its own serial line
                port.write(CTRL_C)
                reply = read_reply(port, time.monotonic() + ANSWER_S)
                continue
            port.write(line.encode("ascii", "replace") + b"\r")
            reply = strip_echo(read_reply(port, time.monotonic() + ANSWER_S), line)
    finally:
        port.close()
        try:
            readline.write_history_file(history)
        except OSError:
            pass
