"""Turn a stock Raspberry Pi OS Lite image into a Hearth golden image, offline and without
mounting: laid out in two slots for tryboot A/B updates and a data partition (docs/updates.md),
the agent, its wheels and its aarch64 extension in /opt/hearth, the units enabled, the hearth
user, config.txt and cmdline.txt edited once, RAUC's slot configuration, and (the site broker's
box only) Mosquitto with the site's generated configuration."""

import dataclasses
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

from agent import __version__
from agent.deploy import debs as packages
from agent.deploy.disk import (DiskImageError, Ext4Partition, FatPartition, Partition,
                               SlotLayout, copy_partition, disk_id, raspberry_pi_layout, run,
                               slot_layout)
from agent.update.rauc_system import handler_scripts, partuuid_devices, system_conf

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = "/opt/hearth"
HEARTH_EXECUTABLE = f"{INSTALL_DIR}/bin/hearth"
# Provided by Raspberry Pi OS's own patched packages (python3-gpiozero, python3-lgpio), which the
# install sees through include-system-site-packages; everything else comes from wheels.
FROM_DISTRIBUTION = {"gpiozero"}
BLOCK_BEGIN = "# BEGIN hearth: managed by scripts/build-image, edit hardware/config.txt instead"
BLOCK_END = "# END hearth"
SERIAL_CONSOLES = re.compile(r"console=(serial\d|ttyAMA\d|ttyS\d)(,\S*)?$")
ELF_MACHINE_AARCH64 = 0xB7
DEBS_DIR = "/var/lib/hearth-install/debs"
MASKED_GETTYS = ("serial-getty@ttyAMA0.service", "serial-getty@ttyS0.service",
                 "serial-getty@serial0.service")
SECTOR = 512
MIB = 1 << 20
AUTOBOOT_MIB = 16
"""FAT16's smallest comfortable size; the partition holds one file under 512 bytes."""
AUTOBOOT_TXT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
"""Raspberry Pi's tryboot A/B: [all] is the committed slot's boot partition, [tryboot] the one
tried once after `reboot "0 tryboot"`; the updater's commit rewrites it in place."""
ROOT_PARTITION = {"A": 5, "B": 6}
SLOT_HEADROOM = 1.5
SLOT_ROUNDING_MIB = 64
"""A new image's root slots default to the source's root + 50 %, rounded up to 64 MiB: a slot
is sized once, when the card is flashed, and every later release must fit it, so it gets room
for a release half again as large as today's (Raspberry Pi OS Lite's ~2.2 GB root becomes two
3.3 GB slots, which with the data partition fit a 16 GB card; an 8 GB eMMC needs a smaller
--slot-size). 64 MiB keeps the size a round number an operator can repeat for every release."""
DATA_LABEL = "hearth-data"
DATA_MOUNT = "/data"
PERSISTENT_DIRS = ("/etc/hearth", "/var/lib/hearth")
"""Config and credentials, and the agent's state (energy counters, latches, outbox): kept on the
data partition at /data<path> and bind-mounted where the units look for them."""
FSTAB_BEGIN = "# BEGIN hearth: the data partition, managed by scripts/build-image"
FSTAB_END = "# END hearth"
SLOT_DEPENDENT_MOUNTS = ("/", "/boot", "/boot/firmware")
BOOT_GENERATOR = "/etc/systemd/system-generators/hearth-boot-partition"
BOOT_GENERATOR_SCRIPT = """#!/bin/sh
# Mounts the booted slot's boot partition at /boot/firmware and partition 1 (autoboot.txt) at
# /boot/autoboot. Both root slots hold the same files (an update writes a byte copy), so
# /etc/fstab cannot name them: root=PARTUUID=<disk>-05 (slot A) boots with <disk>-02, <disk>-06
# (slot B) with <disk>-03; the disk is the one booted from. Written by build-image.
set -eu
root=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=PARTUUID=*) root="${arg#root=PARTUUID=}" ;; esac
done
case "$root" in
  *-05) boot="${root%-05}-02" ;;
  *-06) boot="${root%-06}-03" ;;
  *) exit 0 ;;
esac
mkdir -p "$1/local-fs.target.wants"
mount_unit() {
  cat > "$1/$2.mount" <<EOF
[Unit]
Description=$4
Before=local-fs.target
[Mount]
What=/dev/disk/by-partuuid/$3
Where=/$(echo "$2" | tr - /)
Type=vfat
Options=defaults,noatime
EOF
  ln -sf "../$2.mount" "$1/local-fs.target.wants/$2.mount"
}
mount_unit "$1" boot-firmware "$boot" "The booted slot's boot partition"
mount_unit "$1" boot-autoboot "${root%-0[56]}-01" "autoboot.txt's partition (tryboot A/B)"
"""


class BuildError(RuntimeError):
    """The image cannot be built as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
    source: Path
    output: Path
    wheelhouse: Path | None = None
    leader: bool = False
    site: bool = False
    mosquitto_debs: Path | None = None
    broker_dir: Path | None = None
    python_include: Path | None = None
    identity_table: Path | None = None
    broker: bool = False
    leader_devices: Path | None = None
    release: str = __version__
    update_keyring: Path | None = None
    data_mib: int = 256
    slot_mib: int | None = None
    rauc_debs: Path | None = None


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """One thing to put into the root filesystem, with the owner and mode it must end up with."""

    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    source: Path | None = None          # regular file
    link_target: str | None = None      # symlink
    directory: bool = False


# ---------------------------------------------------------------- the project, read from runtime.toml

RUNTIME_FILE = Path(__file__).with_name("runtime.toml")


def runtime() -> dict:
    """The runtime's requirements and compiled modules, from the file setup.py also reads, so
    the image holds what `pip install` would."""
    with RUNTIME_FILE.open("rb") as handle:
        return tomllib.load(handle)


def install_requires() -> list[str]:
    return runtime()["requires"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclasses.dataclass(frozen=True)
class ExtensionSpec:
    name: str
    sources: list[str]
    macros: list[tuple[str, str]]
    compile_args: list[str]


def extensions() -> list[ExtensionSpec]:
    """The compiled modules as setup.py builds them, so the cross build uses the same module
    names, macros and flags as the native one (e.g. -ffp-contract=off for bit-exact PID)."""
    return [ExtensionSpec(spec["name"], spec["sources"],
                          [tuple(macro) for macro in spec["define_macros"]],
                          spec["extra_compile_args"])
            for spec in runtime()["extension"]]


# ---------------------------------------------------------------- the aarch64 extension

PYCONFIG_SHIM = """/* pyconfig.h for cross-compiling a limited-API (abi3) extension for aarch64 Linux with the
   build host's CPython headers. The host's pyconfig.h describes an LP64 little-endian glibc
   target, as aarch64 is; the asserts below prove every size it states for this compiler, and
   the x86-only inline-assembly switches are turned off. Generated by scripts/build-image. */
#include "{host_pyconfig}"
#undef HAVE_GCC_ASM_FOR_X64
#undef HAVE_GCC_ASM_FOR_X87
#ifndef __aarch64__
#error "this pyconfig.h is for aarch64 only"
#endif
#include <stddef.h>
#include <stdint.h>
#include <wchar.h>
#include <time.h>
#include <sys/types.h>
_Static_assert(sizeof(int) == SIZEOF_INT, "int");
_Static_assert(sizeof(long) == SIZEOF_LONG, "long");
_Static_assert(sizeof(long long) == SIZEOF_LONG_LONG, "long long");
_Static_assert(sizeof(void *) == SIZEOF_VOID_P, "void *");
_Static_assert(sizeof(size_t) == SIZEOF_SIZE_T, "size_t");
_Static_assert(sizeof(short) == SIZEOF_SHORT, "short");
_Static_assert(sizeof(float) == SIZEOF_FLOAT, "float");
_Static_assert(sizeof(double) == SIZEOF_DOUBLE, "double");
_Static_assert(sizeof(long double) == SIZEOF_LONG_DOUBLE, "long double");
_Static_assert(sizeof(wchar_t) == SIZEOF_WCHAR_T, "wchar_t");
_Static_assert(sizeof(time_t) == SIZEOF_TIME_T, "time_t");
_Static_assert(sizeof(off_t) == SIZEOF_OFF_T, "off_t");
_Static_assert(sizeof(pid_t) == SIZEOF_PID_T, "pid_t");
_Static_assert(sizeof(uintptr_t) == SIZEOF_UINTPTR_T, "uintptr_t");
"""


def python_headers(python_include: Path | None, work: Path) -> list[Path]:
    """Include directories for the cross build: the target's own headers when given, else the
    host's CPython headers with an aarch64 pyconfig.h shim in front of them."""
    if python_include is not None:
        if not (python_include / "Python.h").exists():
            raise BuildError(f"--python-include {python_include} has no Python.h; give the "
                             "directory of an aarch64 CPython >= 3.11 (e.g. from "
                             "libpython3.13-dev:arm64)")
        return [python_include]
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        raise BuildError(f"no CPython headers in {include}; install python3-dev "
                         "(scripts/setup-dev does)")
    multiarch = sysconfig.get_config_var("MULTIARCH")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    host_pyconfig = include.parent / multiarch / version / "pyconfig.h" if multiarch else None
    if host_pyconfig is None or not host_pyconfig.exists():
        host_pyconfig = include / "pyconfig.h"
    shadow = work / "include"
    shadow.mkdir(parents=True)
    for header in include.iterdir():
        if header.name != "pyconfig.h":
            (shadow / header.name).symlink_to(header)
    (shadow / "pyconfig.h").write_text(PYCONFIG_SHIM.format(host_pyconfig=host_pyconfig))
    return [shadow]


def cython_requirement() -> str:
    """The Cython that pyproject.toml's [build-system] names, so both builds use the same one."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        requires = tomllib.load(handle)["build-system"]["requires"]
    return next((r for r in requires if normalize(requirement_name(r)) == "cython"), "Cython>=3.0")


def cython_command(work: Path) -> tuple[list[str], dict[str, str]]:
    """Cython as PEP 518 build isolation would provide it: this Python's own if it is >= 3,
    else installed from PyPI into the work directory for this build only."""
    probe = subprocess.run([sys.executable, "-c", "import Cython, sys; "
                            "sys.exit(0 if int(Cython.__version__.split('.')[0]) >= 3 else 1)"],
                           capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "cython"], dict(os.environ)
    target = work / "cython"
    requirement = cython_requirement()
    try:
        run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(target), requirement])
    except DiskImageError as error:
        raise BuildError(f"Cython is not importable and could not be installed ({error}); "
                         f"install {requirement!r} into {sys.executable}'s environment") from None
    return [sys.executable, "-m", "cython"], {**os.environ, "PYTHONPATH": str(target)}


def build_extensions(options: Options, work: Path) -> list[tuple[str, Path]]:
    """Cross-compile each extension for aarch64 as an abi3 module; returns (package path, .so)."""
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    if compiler is None:
        raise BuildError("aarch64-linux-gnu-gcc is not installed; install gcc-aarch64-linux-gnu "
                         "(scripts/setup-dev does)")
    includes = python_headers(options.python_include, work)
    built = []
    for spec in extensions():
        macros = dict(spec.macros)
        if "Py_LIMITED_API" not in macros:
            raise BuildError(f"{RUNTIME_FILE} builds {spec.name} without Py_LIMITED_API; add "
                             "it there: the image needs an abi3 build that loads on the "
                             "target's Python")
        stem = spec.name.rsplit(".", 1)[1]
        c_file = work / f"{stem}.c"
        cython, environment = cython_command(work)
        run(cython + ["-3", "--module-name", spec.name, "-o", str(c_file),
                      str(REPO / spec.sources[0])], env=environment)
        shared = work / f"{stem}.abi3.so"
        command = [compiler, "-shared", "-fPIC", "-O2", "-fno-strict-aliasing",
                   "-Wno-unused-result", *spec.compile_args,
                   *[f"-D{name}={value}" for name, value in macros.items()],
                   *[f"-I{path}" for path in includes], str(c_file), "-o", str(shared)]
        run(command)
        built.append((spec.name.replace(".", "/").rsplit("/", 1)[0], shared))
    return built


def elf_machine(data: bytes) -> int:
    """e_machine of an ELF file (offset 18, in the file's byte order)."""
    if data[:4] != b"\x7fELF":
        raise BuildError("not an ELF file")
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


# ---------------------------------------------------------------- wheels

def wheel_tags(name: str) -> tuple[str, set[str], set[str], set[str]]:
    parts = name[:-4].split("-")
    python, abi, platform = parts[-3:]
    return normalize(parts[0]), set(python.split(".")), set(abi.split(".")), \
        set(platform.split("."))


def wheel_fits(name: str, target: tuple[int, int]) -> bool:
    _, pythons, abis, platforms = wheel_tags(name)
    cp = f"cp{target[0]}{target[1]}"
    python_ok = bool(pythons & {"py3", f"py{target[0]}{target[1]}", cp}) or any(
        tag.startswith("cp3") and "abi3" in abis and int(tag[3:]) <= target[1] for tag in pythons)
    abi_ok = bool(abis & {"none", "abi3", cp})
    platform_ok = "any" in platforms or any(
        re.fullmatch(r"(manylinux\w*|linux)_aarch64", tag) for tag in platforms)
    return python_ok and abi_ok and platform_ok


def fetch_wheels(requirements: list[str], target: tuple[int, int], work: Path) -> Path:
    wheelhouse = work / "wheelhouse"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp",
               "--python-version", f"{target[0]}.{target[1]}",
               "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
               "--platform", "linux_aarch64", "-d", str(wheelhouse), *requirements]
    try:
        run(command)
    except DiskImageError as error:
        raise BuildError(f"could not download the wheels for {target[0]}.{target[1]} aarch64: "
                         f"{error}. Fetch them once with this command on a connected machine "
                         "and pass the directory as --wheelhouse") from None
    return wheelhouse


def choose_wheels(wheelhouse: Path, requirements: list[str],
                  target: tuple[int, int]) -> list[Path]:
    fitting = [w for w in sorted(wheelhouse.glob("*.whl")) if wheel_fits(w.name, target)]
    by_name = {wheel_tags(w.name)[0]: w for w in fitting}
    missing = [r for r in requirements if normalize(requirement_name(r)) not in by_name]
    if missing:
        raise BuildError(f"{wheelhouse} has no wheel for {', '.join(missing)} that runs on "
                         f"CPython {target[0]}.{target[1]} aarch64; add them (pip download "
                         "--only-binary=:all: --platform manylinux2014_aarch64 --python-version "
                         f"{target[0]}.{target[1]} -d {wheelhouse} ...)")
    return list(by_name.values())


def unpack_wheel(wheel: Path, site_packages: Path) -> None:
    """Install a wheel by unpacking it (PEP 427): purelib and platlib go to site-packages;
    scripts and data of these dependencies are not needed on a board."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            parts = Path(member.filename).parts
            if parts[0].endswith(".data"):
                if parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = site_packages.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))


# ---------------------------------------------------------------- staging /opt/hearth

HEARTH_SCRIPT = """#!{install}/bin/python3
# hearth: the console entry point of the Hearth agent (what pip would generate for agent.cli:main).
import sys
from agent.cli import main
sys.exit(main())
"""


def stage_install(options: Options, target: tuple[int, int], wheels: list[Path],
                  built: list[tuple[str, Path]], stage: Path) -> None:
    version = f"python{target[0]}.{target[1]}"
    root = stage / INSTALL_DIR.lstrip("/")
    site_packages = root / "lib" / version / "site-packages"
    for source in sorted((REPO / "agent").rglob("*.py")):
        if "__pycache__" not in source.parts:
            destination = site_packages / source.relative_to(REPO)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    package = site_packages / "agent" / "__init__.py"
    package.write_text(with_version(package.read_text(), options.release))
    boards = site_packages / "agent" / "boards"     # setup.py: package_dir agent.boards
    boards.mkdir(parents=True, exist_ok=True)
    for source in sorted((REPO / "hardware" / "boards").iterdir()):
        if source.suffix in (".py", ".toml"):
            shutil.copyfile(source, boards / source.name)
    for package, shared in built:
        shutil.copyfile(shared, site_packages / package / shared.name)
    for wheel in wheels:
        unpack_wheel(wheel, site_packages)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "pyvenv.cfg").write_text(
        "home = /usr/bin\ninclude-system-site-packages = true\n"
        f"version = {target[0]}.{target[1]}\n")
    (root / "bin" / "hearth").write_text(HEARTH_SCRIPT.format(install=INSTALL_DIR))
    docs = root / "share" / "doc"
    docs.mkdir(parents=True, exist_ok=True)
    for doc in (REPO / "docs" / "deployment.md", REPO / "hardware" / "wiring.md"):
        if doc.exists():
            shutil.copyfile(doc, docs / doc.name)


def with_version(init_py: str, release: str) -> str:
    """agent/__init__.py saying `release`: the image's Hearth reports the version that
    /etc/hearth-release and bundles built from the image carry."""
    text, count = re.subn(r'^__version__ = ".*"$', f'__version__ = "{release}"', init_py,
                          flags=re.MULTILINE)
    if count != 1:
        raise BuildError("agent/__init__.py has no single __version__ line to set the release in")
    return text


def staged_files(options: Options, target: tuple[int, int], stage: Path,
                 first_boot_debs: tuple[Path, ...] = ()) -> list[StagedFile]:
    """Everything the root filesystem must hold, with owners and modes, in creation order;
    `first_boot_debs` (RAUC's, when the image lacks it) are installed at the first boot."""
    files: list[StagedFile] = []
    directories = set()

    def add_dir(path: str, mode: int = 0o755) -> None:
        if path not in directories:
            directories.add(path)
            files.append(StagedFile(path, mode, directory=True))

    for path in sorted(p for p in stage.rglob("*")):
        relative = "/" + str(path.relative_to(stage))
        if path.is_dir():
            add_dir(relative)
        else:
            executable = relative == HEARTH_EXECUTABLE
            files.append(StagedFile(relative, 0o755 if executable else 0o644, source=path))
    version = f"python{target[0]}.{target[1]}"
    files.append(StagedFile(f"{INSTALL_DIR}/bin/python3", 0o777,
                            link_target=f"/usr/bin/{version}"))
    files.append(StagedFile(f"{INSTALL_DIR}/bin/python", 0o777, link_target="python3"))

    units = sorted(p for p in (REPO / "systemd").iterdir() if p.suffix in (".service", ".slice"))
    enabled = ["hearth-agent.service", "hearth-console.service", "hearth-updater.service"]
    if options.leader:
        enabled.append("hearth-leader.service")
    debs = [*first_boot_debs, *(sorted(options.mosquitto_debs.glob("*.deb"))
                                if options.broker else [])]
    if debs:
        enabled.append("hearth-install-debs.service")
    if options.site:
        enabled.append("hearth-site.service")
    for unit in units:
        files.append(StagedFile(f"/etc/systemd/system/{unit.name}", 0o644, source=unit))
    add_dir("/etc/systemd/system/multi-user.target.wants")
    for name in enabled:
        files.append(StagedFile(f"/etc/systemd/system/multi-user.target.wants/{name}", 0o777,
                                link_target=f"/etc/systemd/system/{name}"))
    for getty in MASKED_GETTYS:
        files.append(StagedFile(f"/etc/systemd/system/{getty}", 0o777, link_target="/dev/null"))
    for dropin_dir, destination in (("journald.conf.d", "/etc/systemd/journald.conf.d"),
                                    ("system.conf.d", "/etc/systemd/system.conf.d"),
                                    ("tmpfiles.d", "/etc/tmpfiles.d")):
        add_dir(destination)
        for dropin in sorted((REPO / "systemd" / dropin_dir).iterdir()):
            files.append(StagedFile(f"{destination}/{dropin.name}", 0o644, source=dropin))
    if options.leader_devices is not None:
        add_dir("/etc/systemd/system/hearth-leader.service.d")
        files.append(StagedFile("/etc/systemd/system/hearth-leader.service.d/devices.conf",
                                0o644, source=options.leader_devices))
    if debs:
        add_dir("/var/lib/hearth-install")
        add_dir(DEBS_DIR)
        for deb in debs:
            files.append(StagedFile(f"{DEBS_DIR}/{deb.name}", 0o644, source=deb))
    if options.broker:
        if options.broker_dir is not None:
            add_dir("/etc/mosquitto")
            add_dir("/etc/mosquitto/conf.d")
            add_dir("/etc/mosquitto/hearth", 0o750)
            files.append(StagedFile("/etc/mosquitto/conf.d/hearth.conf", 0o640,
                                    source=options.broker_dir / "mosquitto.conf"))
            for path in sorted(options.broker_dir.rglob("*")):
                relative = path.relative_to(options.broker_dir)
                if path.name == "mosquitto.conf":
                    continue
                destination = f"/etc/mosquitto/hearth/{relative}"
                if path.is_dir():
                    add_dir(destination, 0o750)
                else:
                    private = path.name in ("passwd",) or path.suffix == ".key"
                    files.append(StagedFile(destination, 0o640 if private else 0o644,
                                            source=path))
    return files


# ---------------------------------------------------------------- the A/B layout

def _aligned(sector: int) -> int:
    return -(-sector // 2048) * 2048


def unpacked_source(source: Path, output: Path, work: Path) -> Path:
    """The source as a raw image (Raspberry Pi publishes .img.xz), unpacked into `work`."""
    if source.resolve() == output.resolve():
        raise BuildError(f"the output {output} is the source image; give a new file name")
    if source.suffix != ".xz":
        return source
    plain = work / "source.img"
    with lzma.open(source) as compressed, plain.open("wb") as handle:
        shutil.copyfileobj(compressed, handle, 4 << 20)
    return plain


def default_slot_mib(root_bytes: int) -> int:
    """The source's root + 50 %, rounded up to 64 MiB (SLOT_HEADROOM says why)."""
    return -(-int(root_bytes * SLOT_HEADROOM) // (SLOT_ROUNDING_MIB * MIB)) * SLOT_ROUNDING_MIB


def slot_bytes(source: Path, slot_mib: int | None) -> int:
    """The size of each root slot: `slot_mib`, else the source's own slots when it is a Hearth
    image already (a rebuild must fit the cards flashed from it), else default_slot_mib."""
    _, root = raspberry_pi_layout(source)
    previous = slot_layout(source)
    if slot_mib is None:
        return previous.root_a.size if previous else default_slot_mib(root.size) * MIB
    filesystem = Ext4Partition(source, root).size()
    if slot_mib * MIB < filesystem:
        raise BuildError(f"--slot-size {slot_mib} MiB is smaller than the source's root file "
                         f"system ({-(-filesystem // MIB)} MiB); give at least that, or leave "
                         f"it out for the default ({default_slot_mib(root.size)} MiB)")
    return slot_mib * MIB


def lay_out_slots(source: Path, output: Path, data_mib: int, work: Path,
                  slot_mib: int | None = None) -> SlotLayout:
    """Write `output` in the A/B layout: p1 autoboot.txt, the source's boot partition as p2 and
    its root as p5, grown to fill the slot (p3 and p6 are copied from them once slot A is
    built), p7 the data: the source's own when it has this layout already (a rebuild keeps it),
    else an empty one. The disk identifier is the source's, so PARTUUIDs stay what the card's
    cmdline.txt expects."""
    boot, root = raspberry_pi_layout(source)
    previous = slot_layout(source)
    slot = slot_bytes(source, slot_mib)
    sizes = {1: AUTOBOOT_MIB * MIB // SECTOR, 2: boot.size // SECTOR, 3: boot.size // SECTOR,
             5: slot // SECTOR, 6: slot // SECTOR,
             7: (previous.data.size if previous else data_mib * MIB) // SECTOR}
    starts, next_free = {}, 8192
    for number in (1, 2, 3, 4, 5, 6, 7):
        starts[number] = _aligned(next_free)
        # each logical partition (5-7) is preceded by its extended boot record's sector
        next_free = starts[number] + (1 if number == 4 else sizes[number] + (number >= 5))
    sizes[4] = next_free - 1 - starts[4]
    types = {1: "e", 2: boot.type, 3: boot.type, 4: "5", 5: "83", 6: "83", 7: "83"}
    table = f"label: dos\nlabel-id: 0x{disk_id(source)}\n" + "".join(
        f"start={starts[n]}, size={sizes[n]}, type={types[n]}\n" for n in range(1, 8))
    with output.open("wb") as handle:
        handle.truncate((starts[4] + sizes[4]) * SECTOR)
    run(["sfdisk", "--quiet", "--no-reread", str(output)], input=table.encode())
    autoboot = work / "autoboot.fat"
    run(["mkfs.vfat", "-C", "-F", "16", "-n", "AUTOBOOT", str(autoboot),
         str(AUTOBOOT_MIB * 1024)])
    (work / "autoboot.txt").write_text(AUTOBOOT_TXT)
    run(["mcopy", "-i", str(autoboot), str(work / "autoboot.txt"), "::autoboot.txt"])
    data = previous.data if previous else None
    if data is None:
        empty = work / "data.ext4"
        run(["mkfs.ext4", "-q", "-L", DATA_LABEL, str(empty), f"{data_mib}M"])
        copy_partition(empty, _whole(empty), output, starts[7] * SECTOR)
    else:
        copy_partition(source, data, output, starts[7] * SECTOR)
    copy_partition(autoboot, _whole(autoboot), output, starts[1] * SECTOR)
    copy_partition(source, boot, output, starts[2] * SECTOR)
    copy_partition(grown_root(source, root, slot, work), _whole_up_to(slot), output,
                   starts[5] * SECTOR)
    layout = slot_layout(output)
    if layout is None:
        raise BuildError(f"{output}: the new partition table is not the A/B layout; "
                         "this is a bug in build-image")
    return layout


def _whole(path: Path) -> Partition:
    """A file holding one file system, as a partition of itself."""
    return Partition(1, 0, path.stat().st_size, "")


def _whole_up_to(size: int) -> Partition:
    return Partition(1, 0, size, "")


def grown_root(source: Path, root: Partition, slot: int, work: Path) -> Path:
    """The source's root file system in a file of the slot's size, grown to fill it (e2fsck
    first, as resize2fs demands), so the board has the slot's room from its first boot."""
    grown = work / "root.ext4"
    copy_partition(source, root, grown, 0)
    with grown.open("r+b") as handle:
        handle.truncate(slot)
    checked = subprocess.run(["e2fsck", "-fy", str(grown)], capture_output=True, text=True)
    if checked.returncode not in (0, 1):       # 1: errors found and corrected
        raise BuildError(f"the source's root file system fails e2fsck ({checked.returncode}): "
                         f"{checked.stdout.strip()[-500:]}; check the source image")
    run(["resize2fs", str(grown), f"{slot // 1024}K"])
    return grown


def copy_slot_a_to_b(output: Path, layout: SlotLayout, disk: str) -> None:
    """Slot B starts as a byte copy of slot A, its cmdline.txt naming its own root: a tryboot
    before the first update boots the same system instead of an empty partition."""
    copy_partition(output, layout.boot_a, output, layout.boot_b.offset)
    copy_partition(output, layout.root_a, output, layout.root_b.offset)
    boot_b = FatPartition(output, layout.boot_b)
    boot_b.write("cmdline.txt", with_root(boot_b.read("cmdline.txt").decode(), disk,
                                          "B").encode())


def with_root(cmdline: str, disk: str, slot: str) -> str:
    """cmdline.txt naming the slot's root partition, mounted read-write by the kernel (the
    slot-independent /etc/fstab has no line for /)."""
    kept = [arg for arg in cmdline.split() if not arg.startswith("root=")]
    root = f"root=PARTUUID={disk}-{ROOT_PARTITION[slot]:02d}"
    rw = [] if {"rw", "ro"} & set(kept) else ["rw"]
    position = next((i for i, arg in enumerate(cmdline.split()) if arg.startswith("root=")),
                    len(kept))
    return " ".join(kept[:position] + [root] + rw + kept[position:]) + "\n"


def edit_fstab(text: str) -> str:
    """Drop the lines that name a slot's partitions (/ and the boot partition: the generator
    mounts the booted slot's) and put the data partition and its bind mounts in a managed
    block; re-running leaves the file unchanged."""
    lines, inside = [], False
    for line in text.splitlines():
        if line == FSTAB_BEGIN:
            inside = True
        elif inside:
            inside = line != FSTAB_END
        else:
            fields = line.split()
            if not (fields and not line.startswith("#") and len(fields) > 1
                    and fields[1] in SLOT_DEPENDENT_MOUNTS):
                lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    requires = f"x-systemd.requires-mounts-for={DATA_MOUNT}"
    block = [FSTAB_BEGIN, f"LABEL={DATA_LABEL} {DATA_MOUNT} ext4 defaults,noatime 0 2"] + [
        f"{DATA_MOUNT}{path} {path} none bind,{requires} 0 0" for path in PERSISTENT_DIRS]
    return "\n".join(lines + ([""] if lines else []) + block + [FSTAB_END]) + "\n"


def slot_files(options: Options, disk: str, work: Path) -> list[StagedFile]:
    """What the root needs for two slots: the release, the boot partition's generator, RAUC's
    configuration and the site's update keyring, and the data partition's mount points."""
    contents = {"/etc/hearth-release": (f"{options.release}\n", 0o644),
                BOOT_GENERATOR: (BOOT_GENERATOR_SCRIPT, 0o755),
                "/etc/rauc/system.conf": (system_conf(partuuid_devices(disk)), 0o644)}
    contents.update({f"{INSTALL_DIR}/bin/{name}": (text, 0o755)
                     for name, text in handler_scripts().items()})
    files = [StagedFile(path, 0o755, directory=True) for path in (
        DATA_MOUNT, "/etc/systemd/system-generators", "/etc/rauc", *PERSISTENT_DIRS)]
    for path, (text, mode) in contents.items():
        local = work / path.strip("/").replace("/", "_")
        local.write_text(text)
        files.append(StagedFile(path, mode, source=local))
    if options.update_keyring is not None:
        files.append(StagedFile("/etc/rauc/keyring.pem", 0o644, source=options.update_keyring))
    return files


def data_files(options: Options, hearth_uid: int, hearth_gid: int) -> list[StagedFile]:
    """The data partition's tree, paths from its own root (mounted at /data): config and
    credentials, the agent's state, RAUC's status and the updater's records."""
    files = [StagedFile(path, 0o755, directory=True) for path in (
        "/etc", "/etc/hearth", "/var", "/var/lib")]
    files.append(StagedFile("/var/lib/hearth", 0o750, hearth_uid, hearth_gid, directory=True))
    files.append(StagedFile("/rauc", 0o755, directory=True))
    files.append(StagedFile("/hearth-update", 0o700, directory=True))
    if options.identity_table is not None:
        files.append(StagedFile("/etc/hearth/identity-table.toml", 0o644,
                                source=options.identity_table))
    return files


# ---------------------------------------------------------------- users and groups

def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line.strip()]


def _dump(entries: list[list[str]]) -> bytes:
    return ("\n".join(":".join(entry) for entry in entries) + "\n").encode()


def free_system_id(used: set[int]) -> int:
    """Like useradd --system: the highest free id from 999 down to 100."""
    for candidate in range(999, 99, -1):
        if candidate not in used:
            return candidate
    raise BuildError("no free system uid/gid between 100 and 999 in the image")


def add_hearth_user(passwd: str, group: str, shadow: str, gshadow: str,
                    days_since_epoch: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Add the hearth system user and its group, and make sure gpio, i2c and dialout exist with
    hearth as a member; re-running changes nothing."""
    users, groups = _entries(passwd), _entries(group)
    shadows, gshadows = _entries(shadow), _entries(gshadow)
    group_by_name = {entry[0]: entry for entry in groups}
    used_gids = {int(entry[2]) for entry in groups}
    for name in ("gpio", "i2c", "dialout", "hearth"):
        if name not in group_by_name:
            gid = free_system_id(used_gids)
            used_gids.add(gid)
            entry = [name, "x", str(gid), ""]
            groups.append(entry)
            group_by_name[name] = entry
            gshadows.append([name, "!", "", ""])
    hearth_gid = group_by_name["hearth"][2]
    if not any(entry[0] == "hearth" for entry in users):
        used_uids = {int(entry[2]) for entry in users}
        uid = int(hearth_gid) if int(hearth_gid) not in used_uids else free_system_id(used_uids)
        users.append(["hearth", "x", str(uid), hearth_gid, "Hearth board agent",
                      "/var/lib/hearth", "/usr/sbin/nologin"])
    if not any(entry[0] == "hearth" for entry in shadows):
        shadows.append(["hearth", "!*", str(days_since_epoch), "", "", "", "", "", ""])
    gshadow_by_name = {entry[0]: entry for entry in gshadows}
    for name in ("gpio", "i2c", "dialout"):
        for table in (group_by_name[name], gshadow_by_name.setdefault(name, [name, "!", "", ""])):
            members = [m for m in table[3].split(",") if m]
            if "hearth" not in members:
                table[3] = ",".join(members + ["hearth"])
        if gshadow_by_name[name] not in gshadows:
            gshadows.append(gshadow_by_name[name])
    return _dump(users), _dump(groups), _dump(shadows), _dump(gshadows)


# ---------------------------------------------------------------- boot partition edits

def edit_config_txt(text: str, fragment: str) -> str:
    """Replace the managed block (or append it) so re-running leaves the file unchanged."""
    lines = text.splitlines()
    if BLOCK_BEGIN in lines:
        start = lines.index(BLOCK_BEGIN)
        if BLOCK_END not in lines[start:]:
            raise BuildError(f"config.txt has '{BLOCK_BEGIN}' without '{BLOCK_END}'; fix it by "
                             "hand (delete the partial block) and run build-image again")
        end = start + lines[start:].index(BLOCK_END)
        lines = lines[:start] + lines[end + 1:]
    while lines and not lines[-1].strip():
        lines.pop()
    block = [BLOCK_BEGIN] + [line for line in fragment.splitlines()[2:]] + [BLOCK_END]
    return "\n".join(lines + [""] + block) + "\n"


def edit_cmdline_txt(text: str, fragment: str) -> str:
    """cmdline.txt is one line: drop serial console= arguments, put ours first."""
    ours = [line.strip() for line in fragment.splitlines()
            if line.strip() and not line.startswith("#")]
    kept = [arg for arg in text.split() if not SERIAL_CONSOLES.match(arg) and arg not in ours]
    return " ".join(ours + kept) + "\n"


# ---------------------------------------------------------------- writing and verifying

def target_python(root: Ext4Partition) -> tuple[int, int]:
    versions = []
    for name in root.listdir("/usr/lib"):
        match = re.fullmatch(r"python3\.(\d+)", name)
        if match and root.exists(f"/usr/lib/{name}/os.py"):
            versions.append((3, int(match.group(1))))
    if not versions:
        raise BuildError("the root filesystem has no /usr/lib/python3.N/os.py; is this a "
                         "Raspberry Pi OS image?")
    target = max(versions)
    if target < (3, 11):
        raise BuildError(f"the image's Python is {target[0]}.{target[1]}; Hearth needs 3.11 or "
                         "newer (Raspberry Pi OS Bookworm or Trixie)")
    return target


def write_root(root: Ext4Partition, files: list[StagedFile]) -> None:
    """One debugfs run. Existing paths are looked up first: debugfs's mkdir of an existing
    directory leaves an orphaned inode behind (e2fsck then fails), so it is only asked for new
    ones; existing files and links are removed and written again."""
    existing = {path for path, (inode, _) in root.stat_many([f.path for f in files]).items()
                if inode is not None}
    commands = []
    for item in files:
        if item.directory:
            if item.path not in existing:
                commands.append(f'mkdir "{item.path}"')
        else:
            if item.path in existing:
                commands.append(f'rm "{item.path}"')
            if item.link_target is not None:
                commands.append(f'symlink "{item.path}" "{item.link_target}"')
                continue
            commands.append(f'write "{item.source}" "{item.path}"')
        kind = 0o040000 if item.directory else 0o100000
        commands += [f'sif "{item.path}" mode 0{kind | item.mode:o}',
                     f'sif "{item.path}" uid {item.uid}', f'sif "{item.path}" gid {item.gid}']
    root.run_script(commands)


def replace_root_file(root: Ext4Partition, path: str, data: bytes, work: Path) -> None:
    """Rewrite an existing file keeping its owner and mode (passwd, shadow, ...)."""
    inode = root.stat(path)
    if inode is None:
        raise BuildError(f"the root filesystem has no {path}")
    local = work / Path(path).name
    local.write_bytes(data)
    root.run_script([f'rm "{path}"', f'write "{local}" "{path}"',
                     f'sif "{path}" mode 0{inode.mode:o}', f'sif "{path}" uid {inode.uid}',
                     f'sif "{path}" gid {inode.gid}'])


def write_root_file(root: Ext4Partition, path: str, data: bytes, work: Path) -> None:
    """Rewrite a file keeping its owner and mode, or create it root's and 0644."""
    if root.exists(path):
        replace_root_file(root, path, data, work)
        return
    local = work / Path(path).name
    local.write_bytes(data)
    write_root(root, [StagedFile(path, 0o644, source=local)])


def first_boot_rauc(root: Ext4Partition, given: Path | None, work: Path,
                    log) -> tuple[Path, ...]:
    """RAUC's .debs for the first boot to install, when the image's dpkg lacks them: from
    `given` (--rauc-debs) or fetched for the image's architecture and release."""
    present = packages.installed(root)
    arch = packages.architecture(present)
    missing = [name for name in packages.RAUC_PACKAGES if name not in present]
    if not missing:
        log(f"build-image: the image has {' and '.join(packages.RAUC_PACKAGES)} installed")
        return ()
    directory = given if given is not None else packages.fetch(root, missing, arch,
                                                               work / "rauc")
    debs = packages.check_debs(directory, missing, arch)
    log(f"build-image: {len(debs)} {arch} package(s) for the first boot to install: "
        f"{', '.join(f'{deb.package} {deb.version}' for deb in debs)}")
    return tuple(deb.path for deb in debs)


def verify_slots(image: Path, disk: str, data_files_expected: list[StagedFile]) -> list[str]:
    """The A/B layout read back: autoboot.txt, each slot's cmdline.txt naming its own root,
    slot B a copy of slot A, the data partition's label and tree."""
    layout = slot_layout(image)
    if layout is None:
        return [f"{image}: not in the A/B layout (p1-p3 FAT, p4 extended, p5-p7 Linux)"]
    problems = []
    autoboot = FatPartition(image, layout.autoboot).read("autoboot.txt").decode()
    if autoboot != AUTOBOOT_TXT:
        problems.append(f"autoboot.txt is {autoboot!r}, expected {AUTOBOOT_TXT!r}")
    for slot, part in (("A", layout.boot_a), ("B", layout.boot_b)):
        arguments = FatPartition(image, part).read("cmdline.txt").decode().split()
        expected = f"root=PARTUUID={disk}-{ROOT_PARTITION[slot]:02d}"
        if [a for a in arguments if a.startswith("root=")] != [expected]:
            problems.append(f"slot {slot}'s cmdline.txt does not say {expected}: {arguments}")
    if layout.root_a.size != layout.root_b.size:
        problems.append(f"the root slots differ in size: A {layout.root_a.size} bytes, "
                        f"B {layout.root_b.size}")
    filesystem = Ext4Partition(image, layout.root_a).size()
    if filesystem != layout.root_a.size:
        problems.append(f"slot A's root file system is {filesystem} bytes, its slot "
                        f"{layout.root_a.size}: it was not grown to fill the slot")
    if partition_digest(image, layout.root_a) != partition_digest(image, layout.root_b):
        problems.append("root slot B is not a copy of root slot A")
    data = Ext4Partition(image, layout.data)
    if data.label() != DATA_LABEL:
        problems.append(f"the data partition's label is {data.label()!r}, not {DATA_LABEL}")
    inodes = data.stat_many([item.path for item in data_files_expected])
    for item in data_files_expected:
        inode, _ = inodes[item.path]
        if inode is None or (inode.mode & 0o7777, inode.uid, inode.gid) != (
                item.mode, item.uid, item.gid):
            problems.append(f"data partition {item.path}: {inode}, expected mode "
                            f"{item.mode:o} {item.uid}:{item.gid}")
    try:
        data.check()
    except DiskImageError as error:
        problems.append(str(error))
    return problems


def partition_digest(image: Path, part: Partition) -> str:
    """The sha256 of a partition's bytes, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with image.open("rb") as handle:
        handle.seek(part.offset)
        remaining = part.size
        while remaining:
            chunk = handle.read(min(remaining, 4 << 20))
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def verify(image: Path, options: Options, files: list[StagedFile]) -> list[str]:
    """Read the new image back and list every way it differs from what was asked."""
    problems = []
    boot_part, root_part = raspberry_pi_layout(image)
    boot, root = FatPartition(image, boot_part), Ext4Partition(image, root_part)
    config = boot.read("config.txt").decode().splitlines()
    if config.count(BLOCK_BEGIN) != 1:
        problems.append(f"config.txt: the managed block appears {config.count(BLOCK_BEGIN)} "
                        "times, expected once")
    for line in (REPO / "hardware" / "config.txt").read_text().splitlines():
        is_setting = line and not line.startswith(("#", "["))
        if is_setting and config.count(line) != 1:
            problems.append(f"config.txt: {line!r} appears {config.count(line)} times, "
                            "expected once")
    cmdline = boot.read("cmdline.txt").decode()
    if cmdline.count("\n") != 1 or cmdline.split().count("console=serial0,115200") != 1:
        problems.append(f"cmdline.txt is not one line with one console=serial0,115200: "
                        f"{cmdline!r}")
    with tempfile.TemporaryDirectory() as dump:
        root.rdump(INSTALL_DIR, Path(dump))
        dumped = Path(dump) / Path(INSTALL_DIR).name
        for item in files:
            if item.source is not None and item.path.startswith(INSTALL_DIR + "/"):
                copy = dumped / item.path[len(INSTALL_DIR) + 1:]
                if not copy.exists() or _digest(copy) != _digest(item.source):
                    problems.append(f"{item.path}: content differs from what was written")
    inodes = root.stat_many([item.path for item in files])
    for item in files:
        inode, fast_target = inodes[item.path]
        if inode is None:
            problems.append(f"{item.path}: missing")
            continue
        expected_kind = "dir" if item.directory else "symlink" if item.link_target else "file"
        if inode.kind != expected_kind or (inode.mode & 0o7777, inode.uid, inode.gid) != (
                item.mode & 0o7777 if expected_kind != "symlink" else 0o777, item.uid, item.gid):
            problems.append(f"{item.path}: {inode.kind} {inode.mode & 0o7777:o} "
                            f"{inode.uid}:{inode.gid}, expected {expected_kind} "
                            f"{item.mode:o} {item.uid}:{item.gid}")
        if item.link_target is not None and fast_target != item.link_target:
            problems.append(f"{item.path}: links to {fast_target!r}, "
                            f"expected {item.link_target!r}")
        if item.source is not None and item.path.endswith(".so"):
            if elf_machine(root.read(item.path)) != ELF_MACHINE_AARCH64:
                problems.append(f"{item.path}: not an aarch64 ELF")
    passwd = root.read("/etc/passwd").decode()
    if not re.search(r"^hearth:x:\d+:\d+:", passwd, re.MULTILINE):
        problems.append("/etc/passwd has no hearth user")
    for check in (root.check, boot.check):
        try:
            check()
        except DiskImageError as error:
            problems.append(str(error))
    return problems


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(options: Options, log=print) -> list[str]:
    """Build options.output from options.source; returns the verification problems (none: ok)."""
    if options.broker and options.mosquitto_debs is None:
        raise BuildError("--broker needs --mosquitto-debs DIR with Mosquitto's arm64 .debs "
                         "(apt-get download mosquitto libmosquitto1 libcjson1 libwebsockets... "
                         "on a Raspberry Pi OS board of the same release)")
    if options.mosquitto_debs is not None and not any(options.mosquitto_debs.glob("*.deb")):
        raise BuildError(f"--mosquitto-debs {options.mosquitto_debs} holds no .deb files")
    if options.broker_dir is not None and not options.broker:
        raise BuildError("--broker-dir is for the site broker's box: add --broker (no other box "
                         "runs a broker)")
    if options.broker_dir is not None and not (options.broker_dir / "mosquitto.conf").exists():
        raise BuildError(f"--broker-dir {options.broker_dir} has no mosquitto.conf; give the "
                         "site broker's directory from scripts/provision (out/broker or out/standby)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-image-") as work_name:
        work = Path(work_name)
        source = unpacked_source(options.source, options.output, work)
        layout = lay_out_slots(source, options.output, options.data_mib, work,
                               options.slot_mib)
        disk = disk_id(options.output)
        boot = FatPartition(options.output, layout.boot_a)
        root = Ext4Partition(options.output, layout.root_a)
        target = target_python(root)
        log(f"build-image: target CPython {target[0]}.{target[1]} aarch64")
        requirements = [r for r in install_requires()
                        if normalize(requirement_name(r)) not in FROM_DISTRIBUTION]
        wheelhouse = options.wheelhouse or fetch_wheels(requirements, target, work)
        wheels = choose_wheels(wheelhouse, requirements, target)
        built = build_extensions(options, work / "cext")
        stage = work / "stage"
        stage_install(options, target, wheels, built, stage)
        rauc_debs = first_boot_rauc(root, options.rauc_debs, work, log)
        files = staged_files(options, target, stage, rauc_debs) + slot_files(options, disk,
                                                                             work)
        write_root(root, files)
        days = int(time.time() // 86400)
        accounts = add_hearth_user(*(root.read(f"/etc/{name}").decode()
                                     for name in ("passwd", "group", "shadow", "gshadow")), days)
        for name, data in zip(("passwd", "group", "shadow", "gshadow"), accounts):
            if data != root.read(f"/etc/{name}"):
                replace_root_file(root, f"/etc/{name}", data, work)
        fstab = root.read("/etc/fstab").decode() if root.exists("/etc/fstab") else ""
        write_root_file(root, "/etc/fstab", edit_fstab(fstab).encode(), work)
        hearth = next(entry for entry in _entries(accounts[0].decode()) if entry[0] == "hearth")
        data = data_files(options, int(hearth[2]), int(hearth[3]))
        write_root(Ext4Partition(options.output, layout.data), data)
        config = edit_config_txt(boot.read("config.txt").decode(),
                                 (REPO / "hardware" / "config.txt").read_text())
        boot.write("config.txt", config.encode())
        cmdline = edit_cmdline_txt(boot.read("cmdline.txt").decode(),
                                   (REPO / "hardware" / "cmdline.txt").read_text())
        boot.write("cmdline.txt", with_root(cmdline, disk, "A").encode())
        copy_slot_a_to_b(options.output, layout, disk)
        problems = verify(options.output, options, files) + verify_slots(
            options.output, disk, data)
    log(f"build-image: wrote {options.output} in {time.monotonic() - started:.1f} s "
        f"({len(files)} paths, {len(wheels)} wheels, {len(built)} extension(s))")
    return problems
