"""`hearth bundle` (keygen, build, check): a site's update keys, signed RAUC bundles from a golden
image, and the check a board makes of a bundle (docs/updates.md, "Building and signing a
bundle").

keygen makes the site's update CA (its certificate is the boards' keyring) and a signing
certificate under it, with openssl as `hearth broker-config` makes the site's TLS; build reads
slot A's boot and root partitions out of the golden image without mounting it.
"""

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from agent.deploy.broker_config import openssl, sign_certificate
from agent.deploy.disk import (DiskImageError, Ext4Partition, Partition, copy_partition,
                               raspberry_pi_layout)
from agent.errors import HearthError
from agent.update import bundle

RELEASE_FILE = "/etc/hearth-release"
SIGNING_EXTENSIONS = "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n"
"""RAUC's `check-purpose=codesign` (system.conf) takes only certificates meant for code
signing, so a TLS certificate of the same CA could not sign a bundle."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle", help="make update keys, build and sign RAUC bundles, check a bundle",
        description="Signed RAUC update bundles for Hearth boards (docs/updates.md).")
    commands = parser.add_subparsers(dest="bundle_command", metavar="COMMAND", required=True)
    keygen = commands.add_parser(
        "keygen", help="the site's update CA and a signing certificate under it",
        description="Make DIR/ca/ca.crt and ca.key (the update CA: ca.crt is the boards' "
        "keyring, keep ca.key offline) and DIR/signing/signing.crt and signing.key (to sign "
        "bundles). Existing keys are kept.")
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR")
    keygen.add_argument("--site", default="site", help="named in the certificates")
    keygen.set_defaults(run=run_keygen)
    build = commands.add_parser(
        "build", help="a signed bundle from a golden image",
        description="Read slot A's boot and root partitions out of a golden image (or "
        "partitions 1 and 2 of a single-root one) and sign them as a verity bundle.")
    build.add_argument("--image", type=Path, required=True, metavar="FILE",
                       help="the golden image scripts/build-image wrote")
    build.add_argument("--cert", type=Path, required=True, metavar="FILE",
                       help="the signing certificate (keygen's signing/signing.crt)")
    build.add_argument("--key", type=Path, required=True, metavar="FILE",
                       help="its key (keygen's signing/signing.key)")
    build.add_argument("--version", metavar="VERSION",
                       help=f"the bundle's version (default: the image's {RELEASE_FILE}, "
                       "which it must equal)")
    build.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="the bundle to write (.raucb)")
    build.set_defaults(run=run_build)
    check = commands.add_parser(
        "check", help="verify a bundle as a board will",
        description="Verify a bundle's signature against the site's keyring with the "
        "boards' RAUC settings, and show its version; exit 1 with the reason if a board "
        "would refuse it.")
    check.add_argument("bundle", type=Path, metavar="BUNDLE")
    check.add_argument("--keyring", type=Path, required=True, metavar="FILE",
                       help="the update CA's certificate (keygen's ca/ca.crt)")
    check.set_defaults(run=run_check)


def run_keygen(args: argparse.Namespace) -> int:
    ca = args.out / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    if not (ca / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.crt"),
                "-days", "3650", "-subj", f"/CN=Hearth {args.site} update CA")
        (ca / "ca.key").chmod(0o600)
    sign_certificate(args.out / "signing", "signing", f"/CN=Hearth {args.site} update signing",
                     SIGNING_EXTENSIONS, ca)
    print(f"keyring for the boards' image: {ca / 'ca.crt'}\n"
          f"sign bundles with --cert {args.out / 'signing/signing.crt'} --key "
          f"{args.out / 'signing/signing.key'}\n"
          f"keep {ca / 'ca.key'} offline: it makes signing certificates")
    return 0


def image_release(image: Path, root: Partition) -> str | None:
    """The release the root partition holds, None when it has no release file."""
    partition = Ext4Partition(image, root)
    if not partition.exists(RELEASE_FILE):
        return None
    return partition.read(RELEASE_FILE).decode().strip()


def run_build(args: argparse.Namespace) -> int:
    try:
        boot, root = raspberry_pi_layout(args.image)
        release = image_release(args.image, root)
        version = args.version or release
        if version is None:
            raise bundle.BundleError(f"{args.image} has no {RELEASE_FILE} in its root; give "
                                     "--version, or build the image with scripts/build-image")
        if release is not None and version != release:
            raise bundle.BundleError(f"--version {version} but {args.image}'s {RELEASE_FILE} "
                                     f"says {release}; a board would report the wrong version. "
                                     "Leave --version out, or rebuild the image")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".bundle-", dir=args.out.parent) as work:
            boot_image, root_image = bundle.write_content(Path(work), version)
            copy_partition(args.image, boot, boot_image, 0)
            copy_partition(args.image, root, root_image, 0)
            bundle.sign(Path(work), args.cert, args.key, args.out)
    except (HearthError, DiskImageError, OSError) as error:
        print(f"hearth bundle build: {error}", file=sys.stderr)
        return 1
    digest = hashlib.sha256()
    with args.out.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    print(f"{args.out}: version {version}, {args.out.stat().st_size} bytes, "
          f"sha256 {digest.hexdigest()}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    try:
        info = bundle.check(args.bundle, args.keyring)
    except HearthError as error:
        print(f"hearth bundle check: {error}", file=sys.stderr)
        return 1
    print(f"{args.bundle}: version {info.version} for {info.compatible}, signed under "
          f"{args.keyring}; a board will take it")
    return 0
