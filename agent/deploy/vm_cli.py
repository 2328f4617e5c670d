"""Builds the golden image from Debian's packages, boots it under systemd in QEMU and runs the
checks there, in one command (scripts/vm-test; docs/vm-test.md). With --updates, then the update
scenarios of issue 18 on a second pair of images. Exit status 0 only when every check passed.

Usage: scripts/vm-test [--cache DIR] [--keep DIR] [--updates [NAME,...]] [--no-checks]"""

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
from agent.deploy.vm_updates import SCENARIOS, ScenarioError, run_updates

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
    parser.add_argument("--updates", nargs="?", const=",".join(SCENARIOS), metavar="NAME,...",
                        help="then the update scenarios (all when no names are given): "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--no-checks", action="store_true",
                        help="skip the golden image's own checks (with --updates)")
    args = parser.parse_args(argv)
    names = tuple(args.updates.split(",")) if args.updates else ()
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        print(f"vm-test: no update scenario {unknown[0]!r}; the scenarios are "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if args.no_checks and not names:
        print("vm-test: --no-checks leaves nothing to run without --updates", file=sys.stderr)
        return 2
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
    results: list[bool] = []

    def report(name: str, passed: bool, value: str) -> None:
        results.append(passed)
        print_flush(f"vm-test: {name} {value} {'PASS' if passed else 'FAIL'}")

    with tempfile.TemporaryDirectory(prefix="hearth-vm-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        try:
            if not args.no_checks:
                results += checks(args.cache, work / "checks")
            if names:
                run_updates(args.cache, work / "updates", print_flush, report, names)
        except (VmTestError, BuildError, DiskImageError, ScenarioError) as error:
            print(f"vm-test: {error}", file=sys.stderr)
            return 2
    passed, failed = sum(results), len(results) - sum(results)
    print_flush(f"vm-test: {passed} checks passed, {failed} failed, "
                f"{time.monotonic() - started:.0f} s in all")
    return 0 if failed == 0 and passed else 1


def checks(cache: Path, work: Path) -> list[bool]:
    """The golden image's own checks under systemd, then its extension on an aarch64 CPU:
    each check's verdict (their lines are printed as they arrive)."""
    started = time.monotonic()
    work.mkdir()
    golden = build_golden(cache, work, print_flush)
    print_flush(f"vm-test: booting the golden image under systemd "
                f"({time.monotonic() - started:.0f} s so far)")
    outcome = boot(golden, work, BOOT_TIMEOUT_S, print_flush)
    (work / "console.log").write_text("\n".join(outcome.lines) + "\n")
    print_flush("vm-test: loading the image's extension on an aarch64 CPU")
    arm64 = boot_arm64(golden, cache, work, ARM64_TIMEOUT_S, print_flush)
    return [True] * outcome.passed + [False] * outcome.failed + [ok for _, ok in arm64] + (
        [] if arm64 else [False])


def print_flush(line: str) -> None:
    """One write per line: the update rig's threads print at the same time, and print()
    writes the line and its newline separately."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
