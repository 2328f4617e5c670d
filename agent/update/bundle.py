"""RAUC bundles of a Hearth release: built from a golden image's slot A partitions, signed with
the site's update key, and checked as a board will check them (docs/updates.md).

Why a hook rides in the bundle: a boot partition's cmdline.txt names its own slot's root
(`root=PARTUUID=<disk id>-05` for A, `-06` for B) but the bundle carries one boot image, slot
A's, written to whichever slot is not running. So after RAUC writes the boot slot (and mounts
it for the hook), the bundle's hook points its cmdline.txt at the root of the same slot, with
the disk id the board booted with (a golden image built later may have another).
"""

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

from agent.errors import HearthError
from agent.update.rauc_system import COMPATIBLE, partuuid_devices, system_conf

BOOT_IMAGE = "boot.vfat"
ROOT_IMAGE = "rootfs.ext4"
HOOK = "hook.sh"
HOOK_SCRIPT = """#!/bin/sh
# Hearth bundle hook, run by RAUC after it wrote and mounted a boot slot: point the slot's
# cmdline.txt at its own root partition (A: <disk>-05, B: <disk>-06) on the disk this board
# booted from. Anything unexpected stops the install before the slot is made primary.
set -eu
[ "$1" = slot-post-install ] || exit 0
[ "$RAUC_SLOT_CLASS" = boot ] || exit 0
case "$RAUC_SLOT_BOOTNAME" in
  A) root=05 ;;
  B) root=06 ;;
  *) echo "hearth bundle hook: boot slot $RAUC_SLOT_NAME has bootname '$RAUC_SLOT_BOOTNAME'," \\
       "expected A or B; check /etc/rauc/system.conf" >&2; exit 1 ;;
esac
proc_cmdline="${HEARTH_PROC_CMDLINE:-/proc/cmdline}"  # another file only in tests
disk=$(tr ' ' '\\n' < "$proc_cmdline" |
  sed -n 's/^root=PARTUUID=\\([0-9a-f]\\{8\\}\\)-0[56]$/\\1/p')
if [ -z "$disk" ]; then
  echo "hearth bundle hook: $proc_cmdline has no root=PARTUUID=<disk id>-05 or -06, so the" \\
    "new slot's root cannot be named; this board was not booted from a Hearth A/B image" >&2
  exit 1
fi
cmdline="$RAUC_SLOT_MOUNT_POINT/cmdline.txt"
sed "s/root=PARTUUID=[^ ]*/root=PARTUUID=$disk-$root/" "$cmdline" > "$cmdline.new"
if ! grep -q "root=PARTUUID=$disk-$root" "$cmdline.new"; then
  rm -f "$cmdline.new"
  echo "hearth bundle hook: $RAUC_SLOT_NAME's cmdline.txt has no root= to point at" \\
    "$disk-$root; rebuild the golden image" >&2
  exit 1
fi
sync "$cmdline.new"
mv "$cmdline.new" "$cmdline"
sync "$RAUC_SLOT_MOUNT_POINT"
"""


class BundleError(HearthError, RuntimeError):
    """A bundle could not be built, or a board would refuse it; the message says why and
    what to do."""


def manifest_text(version: str) -> str:
    """manifest.raucm: a verity bundle (RAUC streams only those) with slot A's boot and root
    partitions as images for the boot and rootfs slot classes."""
    return (f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n\n"
            "[bundle]\nformat=verity\n\n"
            f"[hooks]\nfilename={HOOK}\n\n"
            f"[image.boot]\nfilename={BOOT_IMAGE}\nhooks=post-install\n\n"
            f"[image.rootfs]\nfilename={ROOT_IMAGE}\n")


def _rauc(arguments: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["rauc", *arguments], capture_output=True, text=True,
                                timeout=3600)
    except FileNotFoundError:
        raise BundleError("rauc is not installed; install Debian's rauc package") from None
    if result.returncode != 0:
        reason = " ".join(line for line in result.stderr.splitlines()
                          if not line.startswith("rauc-Message:")).strip()
        raise BundleError(f"{what}: {reason or 'rauc exited ' + str(result.returncode)}")
    return result


def write_content(directory: Path, version: str) -> tuple[Path, Path]:
    """The manifest and the hook in `directory`; returns where the boot and root partition
    images go (the caller copies them there), before `sign`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.raucm").write_text(manifest_text(version))
    (directory / HOOK).write_text(HOOK_SCRIPT)
    (directory / HOOK).chmod(0o755)
    return directory / BOOT_IMAGE, directory / ROOT_IMAGE


def sign(directory: Path, cert: Path, key: Path, out: Path) -> Path:
    """`rauc bundle`: the directory's content as a signed verity bundle at `out` (replaced)."""
    out.unlink(missing_ok=True)
    _rauc(["bundle", f"--cert={cert}", f"--key={key}", str(directory), str(out)],
          f"rauc could not build {out}")
    return out


@dataclasses.dataclass(frozen=True)
class BundleInfo:
    """What `rauc info` read from a bundle whose signature the keyring verified."""

    compatible: str
    version: str
    images: tuple[str, ...]


def check(bundle: Path, keyring: Path) -> BundleInfo:
    """Verify `bundle` as a board does: the same system.conf (verity only, a code-signing
    certificate under the keyring's CA), then the compatible and both images."""
    with tempfile.TemporaryDirectory(prefix="hearth-bundle-check-") as work:
        conf = Path(work) / "system.conf"
        conf.write_text(system_conf(partuuid_devices("00000000"), keyring=str(keyring),
                                    status_file=str(Path(work) / "status.raucs")))
        try:
            result = _rauc([f"--conf={conf}", "info", "--output-format=json", str(bundle)],
                           f"{bundle} is refused")
        except BundleError as error:
            raise BundleError(f"{error}; {_hint(str(error), keyring)}") from None
    try:
        data = json.loads(result.stdout)
        info = BundleInfo(data["compatible"], data["version"],
                          tuple(sorted(name for image in data["images"] for name in image)))
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"rauc info gave output this check cannot read ({error!r}); check "
                          "that RAUC is 1.8 or later") from None
    if info.compatible != COMPATIBLE:
        raise BundleError(f"{bundle} is for {info.compatible!r}, boards take {COMPATIBLE!r}; "
                          "build it with `hearth bundle build`")
    if info.images != ("boot", "rootfs"):
        raise BundleError(f"{bundle} holds images for {list(info.images)}, expected boot and "
                          "rootfs; build it with `hearth bundle build`")
    return info


def _hint(reason: str, keyring: Path) -> str:
    if "Signature size is 0" in reason:
        return "the bundle is not signed; sign it with `hearth bundle build --cert --key`"
    if "signature verification failed" in reason:
        return (f"it is not signed by a code-signing certificate of the CA in {keyring}; "
                "build it with the signing key `hearth bundle keygen` made for this site")
    if "format" in reason:
        return "boards take verity bundles only; build it with `hearth bundle build`"
    return "check the file is a complete bundle (its size and sha256 against the built one)"

