"""RAUC on a Hearth board: its system.conf, the scripts its handlers name, and the pre-install
check that refuses a downgrade or an image larger than its slot (docs/updates.md).

Why generated: the slots are named by PARTUUID (`/dev/disk/by-partuuid/<disk id>-05`), which
is the same on a Pi's SD card (mmcblk0p5) and a VM's virtio disk (vda5) and which the kernel's
`root=PARTUUID=` already uses, so RAUC finds the booted slot from /proc/cmdline; the disk id is
the image's, known when the image is built. RAUC runs a handler as a program path without
arguments of our choosing, so each handler is a two-line script that hands over to `hearth`.
"""

import configparser
import dataclasses
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.errors import HearthError
from agent.update.slots import parse_version

COMPATIBLE = "hearth-rpi"
KEYRING = "/etc/rauc/keyring.pem"
STATUS_FILE = "/data/rauc/status.raucs"
RELEASE_FILE = Path("/etc/hearth-release")
HEARTH = "/opt/hearth/bin/hearth"
HANDLER_DIR = "/opt/hearth/bin"
BACKEND_SCRIPT = "hearth-tryboot-backend"
PRE_INSTALL_SCRIPT = "hearth-rauc-pre-install"
ALLOW_DOWNGRADE_FLAG = Path("/run/hearth-update/allow-downgrade")
"""Present only while the updater runs an install sent with force (docs/updates.md)."""
SLOTS = (("rootfs.0", "boot.0", "A", 5, 2), ("rootfs.1", "boot.1", "B", 6, 3))
"""(root slot, its boot slot, bootname, root partition, boot partition): the disk layout."""


class RefusedBundle(HearthError, ValueError):
    """The pre-install check refuses this bundle; the message is RAUC's reason."""


def partuuid_devices(disk_id: str) -> dict[str, str]:
    """Each slot's device by PARTUUID: `disk_id` as in root=PARTUUID=<disk id>-05."""
    if len(disk_id) != 8 or any(c not in "0123456789abcdef" for c in disk_id):
        raise ValueError(f"disk id {disk_id!r}: expected 8 lower-case hex digits, as sfdisk "
                         "prints an MBR disk identifier without 0x")
    return {name: f"/dev/disk/by-partuuid/{disk_id}-{number:02d}"
            for root, boot, _, root_number, boot_number in SLOTS
            for name, number in ((root, root_number), (boot, boot_number))}


def system_conf(devices: Mapping[str, str], *, keyring: str = KEYRING,
                status_file: str = STATUS_FILE, handler_dir: str = HANDLER_DIR) -> str:
    """/etc/rauc/system.conf: verity bundles only (streamed over HTTP), signed by a
    certificate meant for code signing under the site's update CA, the tryboot backend, the
    downgrade check, and two root slots each with its boot partition as a child."""
    slots = "".join(
        f"\n[slot.{root}]\ndevice={devices[root]}\ntype=ext4\nbootname={bootname}\n"
        f"\n[slot.{boot}]\ndevice={devices[boot]}\ntype=vfat\nparent={root}\n"
        for root, boot, bootname, _, _ in SLOTS)
    return (f"# RAUC's configuration for a Hearth board (docs/updates.md); written with the "
            f"image.\n[system]\ncompatible={COMPATIBLE}\nbootloader=custom\n"
            f"statusfile={status_file}\nbundle-formats=verity\n"
            f"\n[keyring]\npath={keyring}\ncheck-purpose=codesign\n"
            f"\n[handlers]\nbootloader-custom-backend={handler_dir}/{BACKEND_SCRIPT}\n"
            f"pre-install={handler_dir}/{PRE_INSTALL_SCRIPT}\n" + slots)


def handler_scripts(hearth: Sequence[str] = (HEARTH,),
                    backend_options: Sequence[str] = (),
                    pre_install_options: Sequence[str] = ()) -> dict[str, str]:
    """Script name -> text, for system.conf's handler directory (mode 0755)."""

    def script(why: str, words: Sequence[str], arguments: str) -> str:
        return f"#!/bin/sh\n# {why}\nexec {shlex.join(words)}{arguments}\n"

    return {BACKEND_SCRIPT: script("RAUC's bootloader backend: hearth answers it.",
                                   [*hearth, "tryboot-backend", *backend_options], ' "$@"'),
            PRE_INSTALL_SCRIPT: script("RAUC's pre-install handler: refuses a downgrade. RAUC "
                                       "passes its handler arguments (none here), not kept.",
                                       [*hearth, "rauc-handler", "pre-install",
                                        *pre_install_options], "")}


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What the pre-install check reads from the bundle's manifest.raucm (RAUC itself
    checks its compatible)."""

    version: str


def read_manifest(path: Path) -> Manifest:
    """manifest.raucm (a GLib key file) as the bundle carries it; RAUC has checked its
    signature already, so anything unreadable here is a bundle built wrong."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), str(path))
        version = parser["update"]["version"]
    except (OSError, UnicodeDecodeError, configparser.Error, KeyError) as error:
        raise RefusedBundle(f"{path}: no [update] version= ({error}); build "
                            "the bundle with `hearth bundle build`") from None
    return Manifest(version)


def downgrade_refusal(bundle_version: str, installed_version: str, forced: bool) -> str | None:
    """Why a bundle must not be installed over this release, or None."""
    try:
        bundle, installed = parse_version(bundle_version), parse_version(installed_version)
    except ValueError as error:
        return f"cannot compare the bundle's version with the installed one: {error}"
    if bundle < installed and not forced:
        return (f"bundle version {bundle_version} is older than the installed "
                f"{installed_version}; a downgrade needs the update sent with force "
                f"(which creates {ALLOW_DOWNGRADE_FLAG} for the install)")
    return None


def device_size(path: Path) -> int:
    """Bytes of a block device (its end, as lseek finds it) or of a regular file."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(descriptor, 0, os.SEEK_END)
    finally:
        os.close(descriptor)


def oversized_images(bundle_mount: Path, environ: Mapping[str, str]) -> list[str]:
    """Each image the bundle would write into a target slot smaller than it, from the
    variables RAUC gives its handlers (RAUC_TARGET_SLOTS, RAUC_IMAGE_NAME_<n>,
    RAUC_SLOT_DEVICE_<n>). RAUC 1.8 (Debian bookworm's) writes an oversized image until the
    slot ends, and later releases check only as they reach that image, after writing the
    images before it, so the check is made here, before any slot is written."""
    problems = []
    for number in environ.get("RAUC_TARGET_SLOTS", "").split():
        image = environ.get(f"RAUC_IMAGE_NAME_{number}")
        if not image:
            continue
        slot = environ.get(f"RAUC_SLOT_NAME_{number}", f"slot {number}")
        device = Path(environ.get(f"RAUC_SLOT_DEVICE_{number}", ""))
        try:
            image_bytes = (bundle_mount / image).stat().st_size
            slot_bytes = device_size(device)
        except OSError as error:
            problems.append(f"cannot compare image {image} with slot {slot} ({device}): {error}")
            continue
        if image_bytes > slot_bytes:
            problems.append(f"image {image} is {image_bytes} bytes, larger than slot {slot} "
                            f"({device}, {slot_bytes} bytes)")
    return problems


def pre_install(bundle_mount: Path, release_file: Path = RELEASE_FILE,
                allow_downgrade_flag: Path = ALLOW_DOWNGRADE_FLAG,
                environ: Mapping[str, str] | None = None) -> Manifest:
    """The check RAUC runs before writing any slot; raises RefusedBundle with the reason.
    `environ` holds RAUC's handler variables (None: none, so no slot sizes are checked)."""
    manifest = read_manifest(bundle_mount / "manifest.raucm")
    try:
        installed = release_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise RefusedBundle(f"cannot read the installed version from {release_file} "
                            f"({error}); the image writes it, check the root slot") from None
    reason = downgrade_refusal(manifest.version, installed, allow_downgrade_flag.exists())
    if reason is not None:
        raise RefusedBundle(reason)
    oversized = oversized_images(bundle_mount, environ or {})
    if oversized:
        raise RefusedBundle(f"{'; '.join(oversized)}. This board's root slots are smaller than "
                            "the release: build its golden image with the --slot-size the "
                            "board was flashed with, then the bundle from it")
    return manifest
