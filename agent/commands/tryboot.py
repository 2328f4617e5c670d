"""`hearth tryboot-backend`: RAUC's custom bootloader backend (system.conf's
bootloader-custom-backend, through a one-line wrapper script, since RAUC runs a program path).

RAUC runs it as `... get-primary`, `set-primary <bootname>`, `get-state <bootname>`, `set-state
<bootname> good|bad` or `get-current`; answers go to stdout, one line, exit 0; any failure is a
sentence on stderr and exit 1, which RAUC reports and acts on (an install stops).
"""

import argparse
import sys
import tomllib
from pathlib import Path

from agent.errors import HearthError
from agent.persist import StateStore
from agent.update.tryboot_backend import (DEFAULT_AUTOBOOT_FILE, DEFAULT_BOOTLOADER_DIR,
                                          DEFAULT_STATE_DIR, BackendError, TrybootBackend,
                                          read_boot_facts)

DEFAULT_SETTINGS_FILE = Path("/etc/hearth/update.toml")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tryboot-backend", help="RAUC's bootloader backend for the Raspberry Pi's tryboot",
        description="Answer RAUC's custom bootloader backend calls on autoboot.txt: "
        "get-primary, set-primary BOOTNAME, get-state BOOTNAME, set-state BOOTNAME good|bad, "
        "get-current.")
    parser.add_argument("request", nargs="+", metavar="REQUEST",
                        help="what RAUC asks, e.g. set-state B good")
    parser.add_argument("--autoboot", type=Path, default=DEFAULT_AUTOBOOT_FILE, metavar="FILE",
                        help=f"autoboot.txt on partition 1 (default {DEFAULT_AUTOBOOT_FILE})")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"the slots' states, on the data partition (default "
                        f"{DEFAULT_STATE_DIR})")
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS_FILE, metavar="FILE",
                        help="its bootloader_dir names where the firmware's boot facts are "
                        f"(absent: {DEFAULT_BOOTLOADER_DIR})")
    parser.set_defaults(run=run)


def bootloader_dir(settings: Path) -> Path:
    """update.toml's bootloader_dir (the VM's tmpfs), absent file or key: the device tree's.
    The file's other keys are the updater's, which checks them."""
    try:
        data = tomllib.loads(settings.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DEFAULT_BOOTLOADER_DIR
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BackendError(f"{settings}: cannot be read as TOML ({error}); fix or remove it")
    value = data.get("bootloader_dir", str(DEFAULT_BOOTLOADER_DIR))
    if not isinstance(value, str) or not value.startswith("/"):
        raise BackendError(f"{settings}: bootloader_dir = {value!r}; expected an absolute "
                           "directory path")
    return Path(value)


def run(args: argparse.Namespace) -> int:
    try:
        directory = bootloader_dir(args.settings)
        backend = TrybootBackend(args.autoboot, lambda: read_boot_facts(directory),
                                 StateStore(args.state_dir))
        answer = backend.answer(args.request)
    except (HearthError, OSError) as error:
        print(f"hearth tryboot-backend {' '.join(args.request)}: {error}", file=sys.stderr)
        return 1
    if answer is not None:
        print(answer)
    return 0
