"""`hearth config`: check a config file, show the effective config, print the config reference."""

import argparse
import json
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_docs import effective_toml, reference_markdown
from agent.errors import ConfigError
from agent.tables import toml_value


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
    check.add_argument("--json", action="store_true",
                       help="print one JSON object: ok, or each problem with file, key, value "
                       "(as TOML writes it), expected and hint")
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


def problems_as_json(error: ConfigError, path: Path) -> list[dict]:
    """Each finding as a tool reads it; an error without findings is one about the file."""
    if not error.problems:
        return [{"file": str(path), "key": "", "value": None, "missing": False,
                 "expected": str(error), "hint": ""}]
    return [{"file": problem.file, "key": problem.key,
             "value": None if problem.missing else toml_value(problem.value, hex=problem.hex),
             "missing": problem.missing, "expected": problem.expected, "hint": problem.hint}
            for problem in error.problems]


def run_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as error:
        if args.json:
            print(json.dumps({"ok": False, "problems": problems_as_json(error, path)}, indent=2))
            return 1
        return _print_problems(error)
    identity = config.identity
    if args.json:
        print(json.dumps({"ok": True, "file": str(config.path), "board_type": config.board_type,
                          "sensors": len(config.sensors),
                          "identity": None if identity is None else {  # None: learned at boot
                              "site": identity.site, "module": identity.module,
                              "board": identity.board}}, indent=2))
        return 0
    learned = ("identity " + "/".join((identity.site, identity.module, identity.board))
               if identity else "identity learned at boot")
    print(f"{config.path}: OK: board type {config.board_type}, {len(config.sensors)} sensors, "
          f"{learned}")
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
