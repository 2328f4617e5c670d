"""`hearth rauc-handler pre-install`: RAUC's pre-install handler on a board (system.conf's
pre-install=, through a wrapper script). It runs after the bundle's signature was checked and
before any slot is written; exit 1 stops the install, so a refusal changes nothing.

RAUC gives it the mounted bundle in RAUC_BUNDLE_MOUNT_POINT and the target slots' devices and
images in RAUC_TARGET_SLOTS, RAUC_SLOT_DEVICE_<n> and RAUC_IMAGE_NAME_<n>. Its output reaches
RAUC's log: a `<< error <reason>` line is RAUC's own way for a handler to report why it stopped.
"""

import argparse
import os
import sys
from pathlib import Path

from agent.update.rauc_system import (ALLOW_DOWNGRADE_FLAG, RELEASE_FILE, RefusedBundle,
                                      pre_install)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rauc-handler", help="RAUC's pre-install check on a board: refuse a downgrade or "
        "an image larger than its slot",
        description="Run by RAUC before it writes a slot: refuse a bundle older than "
        "the installed release unless the update was sent with force.")
    parser.add_argument("handler", choices=["pre-install"])
    parser.add_argument("--release", type=Path, default=RELEASE_FILE, metavar="FILE",
                        help=f"the installed version (default {RELEASE_FILE})")
    parser.add_argument("--allow-downgrade-flag", type=Path, default=ALLOW_DOWNGRADE_FLAG,
                        metavar="FILE", help="present: a downgrade is allowed (default "
                        f"{ALLOW_DOWNGRADE_FLAG}, which the updater makes for a forced update)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    mount = os.environ.get("RAUC_BUNDLE_MOUNT_POINT")
    try:
        if not mount:
            raise RefusedBundle("RAUC_BUNDLE_MOUNT_POINT is not set; RAUC runs this handler "
                                "during an install, not by hand")
        manifest = pre_install(Path(mount), args.release, args.allow_downgrade_flag,
                               os.environ)
    except RefusedBundle as error:
        print(f"<< error {error}", flush=True)
        print(f"hearth rauc-handler pre-install: refused: {error}", file=sys.stderr)
        return 1
    print(f"hearth rauc-handler pre-install: bundle {manifest.version} accepted")
    return 0
