"""The `hearth` command: one entry point, one subcommand per role or tool."""

import argparse
import sys

from agent import __version__
from agent.commands import agent_cmd, broker_config, config, failsafe, sensors, sim, sim_board, tune
from agent.commands import console, ctl, term
from agent.commands import leader, site
from agent.errors import HearthError

COMMAND_MODULES: list = [agent_cmd, broker_config, config, failsafe, sensors, sim, sim_board, tune,
                          console, ctl, term, leader, site]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearth", description="Hearth: Raspberry Pi boards that heat buildings.")
    parser.add_argument("--version", action="version", version=f"hearth {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Each subcommand's parser sets `run`, which returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except HearthError as error:
        print(f"hearth {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
