"""Debian packages that the golden image installs offline at its first boot
(hearth-install-debs.service): which ones the image lacks, read from its own dpkg status, and
those fetched with whatever of their dependencies it lacks too. apt resolves them against the
image's own package sources, installed packages and architecture, not the build machine's, so
what is fetched is what `apt-get install` on the board would have installed."""

import dataclasses
import re
import subprocess
from pathlib import Path

from agent.deploy.disk import DiskImageError, Ext4Partition, run

DPKG_STATUS = "/var/lib/dpkg/status"
RAUC_PACKAGES = ("rauc", "rauc-service")
"""RAUC and its D-Bus service (`rauc install` talks to the service), which Raspberry Pi OS
Lite does not ship."""


class DebsError(RuntimeError):
    """The packages cannot be had as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Deb:
    path: Path
    package: str
    version: str
    architecture: str


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z][\w-]*):[ \t]*(.*)$", block, re.MULTILINE))
        if fields:
            stanzas.append(fields)
    return stanzas


def installed(root: Ext4Partition) -> dict[str, str]:
    """Package -> architecture of what the image's dpkg has installed (none if no status)."""
    if not root.exists(DPKG_STATUS):
        return {}
    return {fields["Package"]: fields.get("Architecture", "")
            for fields in _stanzas(root.read(DPKG_STATUS).decode(errors="replace"))
            if "Package" in fields and fields.get("Status", "").endswith(" installed")}


def architecture(packages: dict[str, str]) -> str:
    """The image's dpkg architecture: that of its dpkg package (Raspberry Pi OS: arm64)."""
    return packages.get("dpkg") or "arm64"


def read_deb(path: Path) -> Deb:
    try:
        fields = run(["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"],
                     text=True).stdout
    except DiskImageError as error:
        raise DebsError(f"{path} is not a Debian package: {error}") from None
    values = dict(re.findall(r"^(\w+): (.*)$", fields, re.MULTILINE))
    return Deb(path, values.get("Package", ""), values.get("Version", ""),
               values.get("Architecture", ""))


def check_debs(directory: Path, wanted: list[str], arch: str) -> list[Deb]:
    """The .debs of `directory`, refused unless every wanted package is there and every
    package is for `arch` (or all)."""
    debs = [read_deb(path) for path in sorted(directory.glob("*.deb"))]
    wrong = [f"{deb.path.name} ({deb.architecture})" for deb in debs
             if deb.architecture not in (arch, "all")]
    if wrong:
        raise DebsError(f"{directory}: {', '.join(wrong)} not for the image's architecture "
                        f"{arch}; fetch the packages of the image's release for {arch}")
    missing = sorted(set(wanted) - {deb.package for deb in debs})
    if missing:
        raise DebsError(f"{directory} has no package {', '.join(missing)} (it holds "
                        f"{', '.join(deb.package for deb in debs) or 'no .deb'}); add it for "
                        f"{arch} and the image's release")
    return debs


def _apt_tree(root: Ext4Partition, apt_root: Path) -> None:
    """The image's apt sources, keyrings and dpkg status under `apt_root`, the sources' keyring
    paths pointed into it."""
    for path in ("/etc/apt", "/usr/share/keyrings"):
        if root.exists(path):
            (apt_root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            root.rdump(path, apt_root / Path(path.lstrip("/")).parent)
    status = apt_root / DPKG_STATUS.lstrip("/")
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_bytes(root.read(DPKG_STATUS) if root.exists(DPKG_STATUS) else b"")
    for sources in [*(apt_root / "etc/apt").glob("sources.list"),
                    *(apt_root / "etc/apt/sources.list.d").glob("*")]:
        text = sources.read_text()
        sources.write_text(re.sub(r"(?<=[=\s])(/(?:usr/share/keyrings|etc/apt)/)",
                                  lambda match: f"{apt_root}{match.group(1)}", text))


def fetch(root: Ext4Partition, packages: list[str], arch: str, work: Path) -> Path:
    """Download `packages` and their dependencies the image lacks into a directory; apt reads
    the image's sources and dpkg status (under a private apt root in `work`)."""
    apt_root = work / "apt"
    _apt_tree(root, apt_root)
    if not any((apt_root / "etc/apt").rglob("*.list")) and \
            not any((apt_root / "etc/apt").rglob("*.sources")):
        raise DebsError(f"the image has no apt sources in /etc/apt; pass the {arch} .debs of "
                        f"{', '.join(packages)} with --rauc-debs DIR")
    out = work / "debs"
    out.mkdir(parents=True)
    (apt_root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    apt = ["apt-get", "-q", "-o", f"Dir={apt_root}", "-o", f"Dir::State::status="
           f"{apt_root / DPKG_STATUS.lstrip('/')}", "-o", f"APT::Architecture={arch}",
           "-o", f"APT::Architectures::={arch}", "-o", "Debug::NoLocking=1",
           "-o", "APT::Sandbox::User=root"]
    _apt(apt + ["update"], arch, packages, out)
    plan = _apt(apt + ["install", "--simulate", "--no-install-recommends", *packages], arch,
                packages, out)
    wanted = [f"{name}={version}" for name, version in
              re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", plan, re.MULTILINE)]
    _apt(apt + ["download", *wanted], arch, packages, out)
    return out


def _apt(command: list[str], arch: str, packages: list[str], cwd: Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        verb = next(word for word in ("update", "install", "download") if word in command)
        raise DebsError(f"apt-get {verb} for the image ({arch}) failed: "
                        f"{result.stderr.strip()[-600:]}. On a machine that reaches the "
                        f"image's package sources run `apt-get download` for "
                        f"{' '.join(packages)} and the dependencies the image lacks, and pass "
                        "the directory as --rauc-debs")
    return result.stdout
