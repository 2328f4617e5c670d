"""`hearth ctl`: run one console command on the local agent through its socket."""

import argparse
import json
import sys
from pathlib import Path

from agent.console.spec import FLAG_JSON, Result
from agent.console.transports import DEFAULT_SOCKET, AgentNotRunning, SocketClient

AGENT_NOT_ANSWERING = 3
"""LSB's "program is not running"; 2 stays argparse's, for a command line it could not read."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ctl", help="run a console command on this board's agent (hearth ctl help)",
        description="Send one technician console command to the running agent over its local "
        "socket and print the answer; exit 0 when done, 1 when refused, 2 for a command line "
        f"it cannot read, {AGENT_NOT_ANSWERING} when the agent does not answer. `hearth ctl "
        "help` lists the commands; --json (before or after the command) prints JSON.")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the agent's console socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="confirm a destructive command without asking")
    parser.add_argument(FLAG_JSON, action="store_true",
                        help="print the answer as one JSON object (the same as after the "
                        "command)")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the command and its arguments, as typed on the console")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    words = args.words or ["help"]
    if args.json and FLAG_JSON not in words:
        words = [*words, FLAG_JSON]
    as_json = FLAG_JSON in words
    line = " ".join(words)
    client = SocketClient(args.socket)
    try:
        reply = client.request({"line": line, "confirmed": args.yes})
        result = Result.from_dict(reply.get("result") or {})
        if result.confirm and sys.stdin.isatty():
            answer = input(f"{result.confirm} ").strip().lower()
            if answer not in ("yes", "y"):
                print("cancelled: nothing was changed", file=sys.stderr)
                return 1
            reply = client.request({"line": line, "confirmed": True})
            result = Result.from_dict(reply.get("result") or {})
        elif result.confirm:
            print(f"{result.confirm.split(' Type yes')[0]} Not done: add --yes to confirm.",
                  file=sys.stderr)
            return 1
    except AgentNotRunning as error:
        if as_json:  # nobody parsed the line, so there is no command name to give
            print(json.dumps({"ok": False, "command": None, "reason": str(error)}))
        else:
            print(f"hearth ctl: {error}", file=sys.stderr)
        return AGENT_NOT_ANSWERING
    output = result.render(bool(reply.get("json")))
    print(output, file=sys.stdout if result.ok or reply.get("json") else sys.stderr)
    return 0 if result.ok else 1
