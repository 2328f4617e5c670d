"""The `hearth` command: one entry point, one subcommand per role or tool.

A command's module is imported only when that command runs: `hearth failsafe` (systemd's
ExecStopPost=, on a board in trouble) must not wait for the simulator and paho to load, and a
broken optional dependency must not take every other command down with it. So the list of
commands with their one-line help is kept here, and each module adds its own options.
"""

import argparse
import importlib
import os
import sys
from typing import NamedTuple

from agent import __version__
from agent.errors import HearthError
from agent.journal_log import ERROR_PRIORITY, with_priority, writes_to_journal


class Command(NamedTuple):
    name: str
    module: str
    """Has `add_parser(subparsers)`, which adds `name` with this help and sets `run`."""
    help: str


COMMANDS = (
    Command("agent", "agent.commands.agent_cmd",
            "run the board agent (one per board, under systemd)"),
    Command("broker-config", "agent.commands.broker_config",
            "write Mosquitto configs (accounts, ACLs, TLS, bridge) for a site"),
    Command("config", "agent.commands.config", "check, show or document the configuration"),
    Command("failsafe", "agent.commands.failsafe",
            "cap the CPU to its lowest frequency and freeze the workload"),
    Command("sensors", "agent.commands.sensors", "sample every configured sensor once"),
    Command("sim", "agent.commands.sim",
            "run a simulated site (site role, leaders, boards) over MQTT"),
    Command("sim-board", "agent.commands.sim_board",
            "run simulated boards, without MQTT, through a board scenario"),
    Command("tune", "agent.commands.tune",
            "relay-autotune the power and SoC loops and store the gains"),
    Command("console", "agent.commands.console",
            "serve the technician console on the serial port"),
    Command("ctl", "agent.commands.ctl",
            "run a console command on this board's agent (hearth ctl help)"),
    Command("term", "agent.commands.term",
            "open a board's serial console from a laptop (history, tab completion)"),
    Command("leader", "agent.commands.leader",
            "run the module leader (one per module, on one of its boards)"),
    Command("site", "agent.commands.site",
            "run the site role: building demand into module budgets"),
    Command("report", "agent.commands.report",
            "record the site's energy ledger, or write a month's public statement"),
    Command("uplink", "agent.commands.uplink",
            "carry the site's telemetry, events and ledgers to the fleet's hub (NATS)"),
    Command("update-board", "agent.commands.update_board",
            "the board's updater: take cmd/update, install, try, commit (root)"),
    Command("update", "agent.commands.update",
            "roll a signed update bundle out to the site's boards, module by module"),
    Command("fleet", "agent.commands.fleet",
            "the centre: the fleet ledger, billing CSV and metrics from every site's hub stream"),
    Command("tryboot-backend", "agent.commands.tryboot",
            "RAUC's bootloader backend for the Raspberry Pi's tryboot"),
    Command("rauc-handler", "agent.commands.rauc_handler",
            "RAUC's pre-install check on a board: refuse a downgrade or an image larger than "
            "its slot"),
    Command("bundle", "agent.commands.bundle",
            "make update keys, build and sign RAUC bundles, check a bundle"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed with its help; only `command`'s module imported, for its options."""
    parser = argparse.ArgumentParser(
        prog="hearth", description="Hearth: Raspberry Pi boards that heat buildings.")
    parser.add_argument("--version", action="version", version=f"hearth {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for row in COMMANDS:
        if row.name == command:
            importlib.import_module(row.module).add_parser(subparsers)
        else:
            subparsers.add_parser(row.name, help=row.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Each subcommand's parser sets `run`, which returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    # No top-level option takes a value, so the first word that is not an option names the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.run(args)
    except HearthError as error:
        message = f"hearth {args.command}: {error}"
        if writes_to_journal(sys.stderr, os.environ):  # a unit that refused to start: an error
            message = with_priority(message, ERROR_PRIORITY)
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
