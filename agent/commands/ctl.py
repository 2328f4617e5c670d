"""`hearth ctl`: run one console command on the local agent through its socket."""

import argparse
import sys
from pathlib import Path

from agent.console.spec import Result
from agent.console.transports import DEFAULT_SOCKET, SocketClient


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ctl", help="run a console command on this board's agent (hearth ctl help)",
        description="Send one technician console command to the running agent over its local "
        "socket and print the answer; exit 0 when done, 1 when refused, 2 when the agent "
        "does not answer. `hearth ctl help` lists the commands; add --json for JSON.")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the agent's console socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="confirm a destructive command without asking")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the command and its arguments, as typed on the console")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    line = " ".join(args.words) or "help"
    client = SocketClient(args.socket)
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
    output = result.render(bool(reply.get("json")))
    print(output, file=sys.stdout if result.ok or reply.get("json") else sys.stderr)
    return 0 if result.ok else 1
