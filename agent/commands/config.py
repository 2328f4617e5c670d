"""`hearth config`: check a config file, show the effective config, print the config reference."""

import argparse
import json
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_docs import effective_toml, reference_markdown
from agent.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check, show or document the configuration",
                                   description="Check, show or document the configuration.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="report every problem in a config file; exit 1 if there is any",
        description="Check a config file and its board definition; print every problem "
        "(file, key, value, what was expected) and exit 1, or one OK line and exit 0.")
    show = actions.add_parser(
        "show", help="print the effective config (board definition and site merged)",
        description="Print the effective config: board definition and site config merged, "
        "defaults filled.")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    for action, run in ((check, run_check), (show, run_show)):
        # `--config F` like every other command, or the file as a plain argument.
        source = action.add_mutually_exclusive_group()
        source.add_argument("file", nargs="?", type=Path, metavar="FILE",
                            help=f"config file (default {DEFAULT_CONFIG_PATH})")
        source.add_argument("--config", type=Path, metavar="FILE", help="the same as FILE")
        action.set_defaults(run=run)
    docs = actions.add_parser(
        "docs", help="print the Markdown config reference generated from the schemas",
        description="Print the config reference (docs/config.md) generated from the schemas.")
    docs.set_defaults(run=run_docs)


def _config_path(args: argparse.Namespace) -> Path:
    return args.file or args.config or DEFAULT_CONFIG_PATH


def _print_problems(error: ConfigError) -> int:
    print(error, file=sys.stderr)
    return 1


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(_config_path(args))
    except ConfigError as error:
        return _print_problems(error)
    identity = ("identity " + "/".join((config.identity.site, config.identity.module,
                                        config.identity.board))
                if config.identity else "identity learned at boot")
    print(f"{config.path}: OK: board type {config.board_type}, {len(config.sensors)} sensors, "
          f"{identity}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.drivers.registry import SENSOR_CLASSES

    try:
        config = load_config(_config_path(args), sensor_classes=SENSOR_CLASSES)
    except ConfigError as error:
        return _print_problems(error)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
    else:
        print(effective_toml(config, SENSOR_CLASSES), end="")
    return 0


def run_docs(args: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0
