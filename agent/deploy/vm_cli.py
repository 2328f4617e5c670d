"""Builds the golden image from Debian's packages, boots it under systemd in QEMU and runs the
checks there, in one command (scripts/vm-test; docs/vm-test.md). Exit status 0 only when every
check passed.

Usage: scripts/vm-test [--cache DIR] [--keep DIR]"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from agent.deploy.disk import DiskImageError
from agent.deploy.image import BuildError
from agent.deploy.vm import VmTestError, boot, build_golden
from agent.deploy.vm_arm64 import boot_arm64

BOOT_TIMEOUT_S = 420
ARM64_TIMEOUT_S = 180
REQUIRED_PROGRAMS = ("mmdebstrap", "qemu-system-x86_64", "qemu-system-aarch64", "mkfs.vfat",
                     "mcopy", "sfdisk", "mkfs.ext4", "debugfs")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hearth-vm"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-test", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="downloaded packages and built roots (default %(default)s)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build in DIR and keep the image, kernel and console log there")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vm-test: mmdebstrap needs root to build the Debian root and to keep its owners; "
              "run it as root (CI does)", file=sys.stderr)
        return 2
    missing = [p for p in REQUIRED_PROGRAMS if not any(
        (Path(d) / p).exists() for d in os.environ.get("PATH", "").split(os.pathsep))]
    if missing:
        print(f"vm-test: {', '.join(missing)} not installed; run scripts/setup-dev",
              file=sys.stderr)
        return 2
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        print(f"vm-test: --keep {args.keep} is not empty; give a new directory",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-vm-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        try:
            golden = build_golden(args.cache, work, print_flush)
            print_flush(f"vm-test: booting the golden image under systemd "
                        f"({time.monotonic() - started:.0f} s so far)")
            outcome = boot(golden, work, BOOT_TIMEOUT_S, print_flush)
            print_flush("vm-test: loading the image's extension on an aarch64 CPU")
            arm64 = boot_arm64(golden, args.cache, work, ARM64_TIMEOUT_S, print_flush)
        except (VmTestError, BuildError, DiskImageError) as error:
            print(f"vm-test: {error}", file=sys.stderr)
            return 2
        if args.keep:
            (work / "console.log").write_text("\n".join(outcome.lines) + "\n")
    passed = outcome.passed + sum(ok for _, ok in arm64)
    failed = outcome.failed + sum(not ok for _, ok in arm64) + (not arm64)
    print_flush(f"vm-test: {passed} checks passed, {failed} failed, "
                f"{time.monotonic() - started:.0f} s in all")
    return 0 if failed == 0 else 1


def print_flush(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
