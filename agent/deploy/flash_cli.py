"""Flashes a Hearth image to a removable SD card or eMMC, verifies it, writes the identity file.

Usage: scripts/flash IMAGE TARGET [--identity SITE/MODULE/BOARD | --identity-file FILE]
[--to-file] [--sys-root DIR]. See docs/deployment.md."""

import argparse
import stat
import sys
import tomllib
from pathlib import Path

from agent.deploy.disk import DiskImageError
from agent.deploy.flash import (FlashRefused, check_device, identity_text, read_back_digest,
                                write_identity, write_image)
from agent.identity import Identity, identity_from_mapping


def parse_identity(args) -> Identity | None:
    if args.identity:
        parts = args.identity.split("/")
        if len(parts) != 3:
            raise FlashRefused(f"--identity {args.identity!r} is not SITE/MODULE/BOARD, e.g. "
                               "maple-school/m1/b07")
        return identity_from_mapping(dict(zip(("site", "module", "board"), parts)), "--identity")
    if args.identity_file:
        with args.identity_file.open("rb") as handle:
            return identity_from_mapping(tomllib.load(handle).get("identity"),
                                         f"{args.identity_file} [identity]")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flash", description=__doc__.split("\n")[0])
    parser.add_argument("image", type=Path, help="the image from scripts/build-image")
    parser.add_argument("target", type=Path, help="the whole device, e.g. /dev/sdb")
    parser.add_argument("--identity",
                        help="SITE/MODULE/BOARD to write to partition 1 (kept by updates)")
    parser.add_argument("--identity-file", type=Path,
                        help="an identity file from scripts/provision (boards/*.toml)")
    parser.add_argument("--to-file", action="store_true",
                        help="the target is an image file, not a device")
    parser.add_argument("--sys-root", type=Path, default=Path("/"),
                        help="where /sys and /proc are (tests use a fake tree)")
    args = parser.parse_args(argv)
    try:
        identity = parse_identity(args)
        if not args.image.is_file():
            raise FlashRefused(f"image {args.image} does not exist; build it with "
                               "scripts/build-image")
        if args.to_file:
            if args.target.exists() and not stat.S_ISREG(args.target.stat().st_mode):
                raise FlashRefused(f"--to-file given but {args.target} is not a regular file")
            label = f"file {args.target}"
        else:
            if args.target.exists() and stat.S_ISREG(args.target.stat().st_mode) \
                    and args.sys_root == Path("/"):
                raise FlashRefused(f"{args.target} is a regular file, not a device; pass "
                                   "--to-file to write an image file")
            label = f"/dev/{check_device(args.target, args.sys_root)}"
        print(f"flash: writing {args.image} to {label}", file=sys.stderr)
        written = write_image(args.image, args.target)
        read_back = read_back_digest(args.target, args.image.stat().st_size)
        if read_back != written:
            print(f"flash: read-back sha256 {read_back} differs from the image's {written}; "
                  "the card is faulty or was removed. Do not use it", file=sys.stderr)
            return 1
        print(f"flash: verified by read-back, sha256 {written}", file=sys.stderr)
        if identity is not None:
            write_identity(args.target, identity_text(identity.site, identity.module,
                                                      identity.board))
            print(f"flash: identity {identity} written to partition 1 (hearth-identity.toml)",
                  file=sys.stderr)
        else:
            print("flash: no identity written; the board will use its slot straps or serial "
                  "number", file=sys.stderr)
    except (FlashRefused, DiskImageError, ValueError, OSError) as error:
        print(f"flash: refused: {error}" if isinstance(error, FlashRefused)
              else f"flash: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
