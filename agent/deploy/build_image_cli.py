"""Builds the Hearth golden SD image from stock Raspberry Pi OS Lite (arm64), without mounting,
in the two-slot layout that updates need.

Usage: scripts/build-image SOURCE.img[.xz] OUTPUT.img [--wheelhouse DIR] [--identity-table
FILE] [--leader [--leader-devices FILE]] [--broker --mosquitto-debs DIR [--broker-dir DIR]]
[--site] [--release VERSION] [--update-keyring PEM] [--data-mib N] [--slot-size MIB]
[--rauc-debs DIR]. See docs/deployment.md and docs/updates.md."""

import argparse
import sys
from pathlib import Path

from agent.deploy.debs import DebsError
from agent.deploy.disk import DiskImageError
from agent import __version__
from agent.deploy.image import BuildError, Options, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-image", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="Raspberry Pi OS Lite arm64 .img or .img.xz")
    parser.add_argument("output", type=Path, help="the new image to write")
    parser.add_argument("--wheelhouse", type=Path,
                        help="aarch64 wheels of the dependencies (default: pip download them)")
    parser.add_argument("--python-include", type=Path,
                        help="aarch64 CPython headers (default: the host's, with a pyconfig shim)")
    parser.add_argument("--leader", action="store_true",
                        help="a module leader image: hearth-leader enabled")
    parser.add_argument("--leader-devices", type=Path, metavar="FILE",
                        help="units/<module>/hearth-leader.service.d/devices.conf from "
                        "scripts/provision: the devices of the leader's module sensors")
    parser.add_argument("--broker", action="store_true",
                        help="the site broker's (or the standby's) box: Mosquitto installed at "
                        "first boot")
    parser.add_argument("--mosquitto-debs", type=Path,
                        help="arm64 .debs of Mosquitto and its libraries (with --broker)")
    parser.add_argument("--broker-dir", type=Path,
                        help="out/broker or out/standby from scripts/provision")
    parser.add_argument("--site", action="store_true", help="enable hearth-site.service too")
    parser.add_argument("--identity-table", type=Path,
                        help="identity-table.toml from scripts/provision (serials and slots)")
    parser.add_argument("--release", default=__version__,
                        help="the version in /etc/hearth-release, which bundles built from this "
                        "image carry (default: Hearth's, %(default)s)")
    parser.add_argument("--update-keyring", type=Path, metavar="PEM",
                        help="the site's update CA certificate (hearth bundle keygen): RAUC "
                        "installs only bundles it signed; without it every bundle is refused")
    parser.add_argument("--data-mib", type=int, default=256,
                        help="size of the data partition for a new image (default %(default)s)")
    parser.add_argument("--slot-size", type=int, metavar="MIB",
                        help="size of each root slot; every later release must fit it, so keep "
                        "one size for a site's boards (default: the source's root + 50 %%, "
                        "rounded up to 64 MiB; a Hearth image's own slots when rebuilding one)")
    parser.add_argument("--rauc-debs", type=Path, metavar="DIR",
                        help="the image's architecture's .debs of rauc and rauc-service and the "
                        "dependencies the image lacks, installed at first boot (default: "
                        "fetched with apt from the image's own package sources; not needed "
                        "when the image has RAUC)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"build-image: source image {args.source} does not exist; download Raspberry Pi "
              "OS Lite (arm64) and give its path", file=sys.stderr)
        return 2
    options = Options(args.source, args.output, args.wheelhouse, args.leader, args.site,
                      args.mosquitto_debs, args.broker_dir, args.python_include,
                      args.identity_table, args.broker, args.leader_devices, args.release,
                      args.update_keyring, args.data_mib, args.slot_size,
                      args.rauc_debs)
    try:
        problems = build(options)
    except (BuildError, DiskImageError, DebsError) as error:
        print(f"build-image: {error}", file=sys.stderr)
        return 2
    if problems:
        print(f"build-image: {args.output} failed its own verification; do not flash it:",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"build-image: {args.output} verified (slots, autoboot.txt, config.txt, cmdline.txt, "
          "files, owners, modes, aarch64 extension, file systems)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
