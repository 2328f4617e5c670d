"""scripts/build-image on a small synthetic image laid out like Raspberry Pi OS Lite (DOS
partition table, FAT boot, ext4 root with the account files), run twice, then read back without
mounting: the A/B layout (autoboot.txt, two boot and root slots, the data partition), config
lines once, units enabled, package importable, extension an aarch64 ELF, owners and modes, and
the build's own verification able to catch a broken image."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.deploy import image as image_module
from agent.deploy.debs import DebsError
from agent.deploy.disk import Ext4Partition, FatPartition, raspberry_pi_layout, slot_layout

REPO = Path(__file__).resolve().parent.parent

MIB = 1 << 20
SITE_PACKAGES = "/opt/hearth/lib/python3.13/site-packages"
STOCK_CONFIG = """# For more options and information see
# http://rptl.io/configtxt
#dtparam=i2c_arm=on
#dtparam=spi=on
dtparam=audio=on
camera_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
"""
STOCK_CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
                 "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot "
                 "cfg80211.ieee80211_regdom=GB\n")
ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
              "systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n",
    "group": "root:x:0:\ndaemon:x:1:\ndialout:x:20:\nshadow:x:42:\nsystemd-network:x:998:\n"
             "gpio:x:997:\ni2c:x:994:\n",
    "shadow": "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
              "systemd-network:!*:19000::::::\n",
    "gshadow": "root:*::\ndaemon:*::\ndialout:*::\nshadow:*::\nsystemd-network:!::\ngpio:!::\n"
               "i2c:!::\n",
}


def sh(*command, **kwargs):
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, **kwargs)


STOCK_INSTALLED = {"dpkg": ("1.21.22", "arm64"), "libc6": ("2.36-9+rpt2+deb12u9", "arm64"),
                   "dbus": ("1.14.10-1~deb12u1", "arm64")}
"""What the stand-in image's dpkg says is installed (Raspberry Pi OS Lite has no RAUC)."""
REPOSITORY = {  # package: (version, architecture, depends)
    "rauc": ("1.8-2", "arm64", "libc6, libjson-glib-1.0-0 (>= 1.5.2)"),
    "rauc-service": ("1.8-2", "all", "rauc (= 1.8-2), dbus"),
    "libjson-glib-1.0-0": ("1.6.6-1", "arm64", "libc6"),
    "libc6": ("2.36-9+rpt2+deb12u9", "arm64", ""),
}
"""A local package source standing in for the image's release (bookworm arm64)."""


def make_deb(directory: Path, package: str, version: str, architecture: str,
             depends: str = "") -> Path:
    tree = directory / f"{package}_{version}_{architecture}.tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {architecture}\n"
        + (f"Depends: {depends}\n" if depends else "")
        + "Maintainer: test <test@example.org>\nDescription: stand-in for the real package\n")
    deb = directory / f"{package}_{version}_{architecture}.deb"
    sh("dpkg-deb", "--build", "--root-owner-group", tree, deb)
    return deb


def make_package_source(directory: Path) -> Path:
    """A flat apt repository (file:) with REPOSITORY's packages."""
    repository = directory / "repository"
    repository.mkdir()
    for package, (version, architecture, depends) in REPOSITORY.items():
        make_deb(repository, package, version, architecture, depends)
    index = sh("dpkg-scanpackages", "--multiversion", ".", cwd=repository).stdout
    (repository / "Packages").write_bytes(index)
    return repository


def make_raspberry_pi_os_image(directory: Path) -> Path:
    """64 MiB laid out as Raspberry Pi OS does it: FAT boot at 1 MiB, ext4 root after it. The
    boot partition is FAT16 (type e) because FAT32 needs at least 32 MiB; both boot on a Pi."""
    boot = directory / "boot.fat"
    sh("mkfs.vfat", "-F", "16", "-n", "BOOTFS", "-C", boot, 16 * 1024)
    for name, text in (("config.txt", STOCK_CONFIG), ("cmdline.txt", STOCK_CMDLINE)):
        (directory / name).write_text(text)
        sh("mcopy", "-i", boot, directory / name, f"::{name}")
    tree = directory / "rootfs"
    for folder in ("etc/systemd/system", "usr/lib/python3.13", "usr/bin", "var/lib/dpkg", "dev",
                   "boot/firmware", "etc/apt/sources.list.d"):
        (tree / folder).mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text("\n".join(
        f"Package: {name}\nStatus: install ok installed\nVersion: {version}\n"
        f"Architecture: {architecture}\n" for name, (version, architecture) in
        STOCK_INSTALLED.items()))
    (tree / "etc/apt/sources.list.d/raspi.list").write_text(
        f"deb [trusted=yes] file:{make_package_source(directory)} ./\n")
    for name, text in ACCOUNTS.items():
        (tree / "etc" / name).write_text(text)
    (tree / "usr/lib/python3.13/os.py").write_text("# stand-in for the target's stdlib\n")
    (tree / "usr/bin/python3.13").write_text("")
    root = directory / "root.ext4"
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", tree, root, "46M")
    sh("debugfs", "-w", "-R", "sif /etc/shadow mode 0100640", root)
    sh("debugfs", "-w", "-R", "sif /etc/shadow gid 42", root)
    disk = directory / "raspios-lite-arm64.img"
    with disk.open("wb") as handle:
        handle.truncate(64 * MIB)
    sh("sfdisk", "--quiet", disk, input=b"label: dos\nlabel-id: 0x4e639091\n"
                                         b"start=2048, size=32768, type=e\nstart=34816, type=83\n")
    for part, offset in ((boot, 1), (root, 17)):
        sh("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={offset}", "conv=notrunc",
           "status=none")
    return disk


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """The real aarch64 wheels for CPython 3.13, fetched from PyPI once per test session."""
    requirements = [r for r in image_module.install_requires()
                    if image_module.normalize(image_module.requirement_name(r))
                    not in image_module.FROM_DISTRIBUTION]
    return image_module.fetch_wheels(requirements, (3, 13), tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, wheelhouse):
    """A stock image as Raspberry Pi publishes it (.img.xz), built once into first.img, then
    first.img built again into second.img."""
    directory = tmp_path_factory.mktemp("image")
    stock = make_raspberry_pi_os_image(directory)
    sh("xz", "-k", "-1", stock)
    stock = stock.with_name(stock.name + ".xz")
    first, second = directory / "first.img", directory / "second.img"
    keyring = directory / "update-ca.pem"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", directory / "update-ca.key", "-out", keyring, "-days", "30",
       "-subj", "/CN=test site update CA")
    identity_table = directory / "identity-table.toml"
    identity_table.write_text('site = "maple-school"\n')
    runs = []
    for source, output in ((stock, first), (first, second)):
        result = subprocess.run([REPO / "scripts/build-image", source, output,
                                 "--wheelhouse", wheelhouse, "--release", "1.4.0",
                                 "--update-keyring", keyring, "--identity-table",
                                 identity_table], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        runs.append(result)
    return {"stock": stock, "first": first, "second": second, "runs": runs,
            "keyring": keyring, "identity_table": identity_table}


def partitions(image: Path) -> tuple[FatPartition, Ext4Partition]:
    boot, root = raspberry_pi_layout(image)
    return FatPartition(image, boot), Ext4Partition(image, root)


def partition_bytes(image: Path, number: int) -> bytes:
    table = json.loads(sh("sfdisk", "--json", image).stdout)["partitiontable"]
    part = next(p for p in table["partitions"] if p["node"].endswith(str(number)))
    with image.open("rb") as handle:
        handle.seek(part["start"] * 512)
        return handle.read(part["size"] * 512)


def fat_names(image: Path, offset: int) -> list[str]:
    listing = sh("mdir", "-b", "-i", f"{image}@@{offset}", "::",
                 env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout.decode()
    return sorted(line.removeprefix("::/").strip() for line in listing.splitlines())


def test_the_image_has_an_autoboot_partition_two_slots_and_a_data_partition(built):
    table = json.loads(sh("sfdisk", "--json", built["second"]).stdout)["partitiontable"]
    stock = json.loads(sh("sfdisk", "--json", built["first"].with_name(
        "raspios-lite-arm64.img")).stdout)["partitiontable"]["partitions"]
    assert table["id"] == "0x4e639091"                      # PARTUUIDs keep the card's id
    parts = {int(p["node"][-1]): p for p in table["partitions"]}
    assert {n: p["type"] for n, p in parts.items()} == {
        1: "e", 2: "e", 3: "e", 4: "5", 5: "83", 6: "83", 7: "83"}
    assert parts[2]["size"] == parts[3]["size"] == stock[0]["size"]
    slot = image_module.default_slot_mib(stock[1]["size"] * 512) * MIB // 512
    assert parts[5]["size"] == parts[6]["size"] == slot > stock[1]["size"] * 1.5
    extended = range(parts[4]["start"], parts[4]["start"] + parts[4]["size"])
    for number in (5, 6, 7):
        assert parts[number]["start"] in extended
        assert parts[number]["start"] + parts[number]["size"] - 1 in extended
    ends = sorted((p["start"], p["start"] + p["size"]) for n, p in parts.items() if n != 4)
    assert all(end <= start for (_, end), (start, _) in zip(ends, ends[1:])), ends
    layout = slot_layout(built["second"])
    assert (layout.boot_a.number, layout.root_a.number, layout.data.number) == (2, 5, 7)
    assert raspberry_pi_layout(built["second"]) == (layout.boot_a, layout.root_a)


def test_root_slots_have_headroom_filled_by_the_root_file_system(built):
    """The stock root is 47 MiB: each slot is 47 x 1.5 rounded up to 64 MiB = 128 MiB, the root
    file system grown to fill it, and a rebuild from a Hearth image keeps its slots' size."""
    for name in ("first", "second"):
        layout = slot_layout(built[name])
        assert layout.root_a.size == layout.root_b.size == 128 * MIB, name
        root = Ext4Partition(built[name], layout.root_a)
        assert root.size() == 128 * MIB
        root.check()
        assert root.read("/etc/hearth-release") == b"1.4.0\n"


def test_a_slot_size_is_taken_and_one_smaller_than_the_root_is_refused(tmp_path):
    stock = make_raspberry_pi_os_image(tmp_path)
    output = tmp_path / "slots.img"
    layout = image_module.lay_out_slots(stock, output, 8, tmp_path, slot_mib=192)
    assert layout.root_a.size == 192 * MIB and layout.data.offset > layout.root_b.offset
    root = Ext4Partition(output, layout.root_a)
    assert root.size() == 192 * MIB and root.read("/etc/passwd") == ACCOUNTS["passwd"].encode()
    root.check()
    refused = tmp_path / "refused.img"
    result = subprocess.run([REPO / "scripts/build-image", stock, refused, "--wheelhouse",
                             tmp_path, "--slot-size", "40"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "build-image: --slot-size 40 MiB is smaller than the source's root file system " \
        "(46 MiB); give at least that, or leave it out for the default (128 MiB)" in \
        result.stderr
    assert not refused.exists()


def test_partition_1_holds_only_autoboot_txt_as_raspberry_pi_documents_it(built):
    layout = slot_layout(built["second"])
    assert fat_names(built["second"], layout.autoboot.offset) == ["autoboot.txt"]
    text = FatPartition(built["second"], layout.autoboot).read("autoboot.txt")
    assert text == b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    assert len(text) < 512


def test_each_boot_partition_names_its_own_root_slot(built):
    layout = slot_layout(built["second"])
    boot_a = FatPartition(built["second"], layout.boot_a)
    boot_b = FatPartition(built["second"], layout.boot_b)
    cmdline_a = boot_a.read("cmdline.txt").decode().split()
    cmdline_b = boot_b.read("cmdline.txt").decode().split()
    assert "root=PARTUUID=4e639091-05" in cmdline_a and "root=PARTUUID=4e639091-06" in cmdline_b
    assert [a for a in cmdline_a if not a.startswith("root=")] == \
        [b for b in cmdline_b if not b.startswith("root=")]
    assert fat_names(built["second"], layout.boot_a.offset) == \
        fat_names(built["second"], layout.boot_b.offset)
    assert boot_a.read("config.txt") == boot_b.read("config.txt")


def test_slot_b_starts_as_a_byte_copy_of_slot_a(built):
    digest_a = hashlib.sha256(partition_bytes(built["second"], 5)).digest()
    assert hashlib.sha256(partition_bytes(built["second"], 6)).digest() == digest_a
    root_b = Ext4Partition(built["second"], slot_layout(built["second"]).root_b)
    assert root_b.read("/etc/hearth-release") == b"1.4.0\n"


def test_the_data_partition_holds_what_an_update_must_keep(built):
    layout = slot_layout(built["second"])
    data = Ext4Partition(built["second"], layout.data)
    stats = sh("debugfs", "-R", "stats", data.device).stdout.decode()
    assert "Filesystem volume name:   hearth-data" in stats
    hearth = next(line.split(":") for line in Ext4Partition(
        built["second"], layout.root_a).read("/etc/passwd").decode().splitlines()
        if line.startswith("hearth:"))
    expected = {"/etc/hearth": (0o755, 0, 0), "/var/lib/hearth": (
        0o750, int(hearth[2]), int(hearth[3])), "/rauc": (0o755, 0, 0),
        "/hearth-update": (0o700, 0, 0)}
    for path, (mode, uid, gid) in expected.items():
        inode = data.stat(path)
        assert (inode.kind, inode.mode & 0o7777, inode.uid, inode.gid) == ("dir", mode, uid,
                                                                             gid), path
    assert data.read("/etc/hearth/identity-table.toml") == built["identity_table"].read_bytes()
    root = Ext4Partition(built["second"], layout.root_a)
    assert root.stat("/etc/hearth/identity-table.toml") is None
    mounts = [line.split() for line in root.read("/etc/fstab").decode().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ["LABEL=hearth-data", "/data", "ext4"] == mounts[0][:3]
    assert [m[:4] for m in mounts[1:]] == [
        ["/data/etc/hearth", "/etc/hearth", "none", "bind,x-systemd.requires-mounts-for=/data"],
        ["/data/var/lib/hearth", "/var/lib/hearth", "none",
         "bind,x-systemd.requires-mounts-for=/data"]]
    for mount_point in ("/data", "/etc/hearth", "/var/lib/hearth"):
        assert root.stat(mount_point).kind == "dir"


def test_rauc_knows_the_slots_and_the_site_keyring(built):
    root = Ext4Partition(built["second"], slot_layout(built["second"]).root_a)
    assert root.read("/etc/rauc/keyring.pem") == built["keyring"].read_bytes()
    system = root.read("/etc/rauc/system.conf").decode()
    assert "compatible=hearth-rpi" in system and "bootloader=custom" in system
    assert "statusfile=/data/rauc/status.raucs" in system
    for slot, number in (("rootfs.0", 5), ("rootfs.1", 6), ("boot.0", 2), ("boot.1", 3)):
        assert f"[slot.{slot}]" in system and f"-0{number}" in system
    assert "bundle-formats=verity" in system
    for name in ("hearth-tryboot-backend", "hearth-rauc-pre-install"):
        assert f"/opt/hearth/bin/{name}" in system
        script = root.stat(f"/opt/hearth/bin/{name}")
        assert (script.kind, script.mode & 0o7777, script.uid) == ("file", 0o755, 0)
        assert root.read(f"/opt/hearth/bin/{name}").startswith(b"#!/bin/sh\n")
    assert b'__version__ = "1.4.0"' in root.read(f"{SITE_PACKAGES}/agent/__init__.py")


def test_the_generator_mounts_the_booted_slots_boot_partition_and_autoboot(built, tmp_path):
    """Run as systemd runs a generator, with the kernel command line of a slot B boot."""
    root = Ext4Partition(built["second"], slot_layout(built["second"]).root_a)
    generator = root.stat("/etc/systemd/system-generators/hearth-boot-partition")
    assert (generator.kind, generator.mode & 0o7777) == ("file", 0o755)
    script = root.read("/etc/systemd/system-generators/hearth-boot-partition").decode()
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 root=PARTUUID=4e639091-06 rw rootwait\n")
    (tmp_path / "gen").write_text(script.replace("/proc/cmdline", str(cmdline)))
    out = tmp_path / "units"
    out.mkdir()
    sh("sh", tmp_path / "gen", out)
    units = {path.name: path.read_text() for path in out.glob("*.mount")}
    assert "What=/dev/disk/by-partuuid/4e639091-03\nWhere=/boot/firmware\n" in units[
        "boot-firmware.mount"]
    assert "What=/dev/disk/by-partuuid/4e639091-01\nWhere=/boot/autoboot\n" in units[
        "boot-autoboot.mount"]
    assert sorted(p.name for p in (out / "local-fs.target.wants").iterdir()) == [
        "boot-autoboot.mount", "boot-firmware.mount"]


def fragment_lines() -> list[str]:
    return [line for line in (REPO / "hardware/config.txt").read_text().splitlines()
            if line and not line.startswith("#")]


def test_config_txt_lines_are_present_exactly_once_after_two_runs(built):
    boot, _ = partitions(built["second"])
    lines = boot.read("config.txt").decode().splitlines()
    for line in fragment_lines():
        assert lines.count(line) == (2 if line == "[all]" else 1), line
    assert "otg_mode=1" in lines and "#dtparam=i2c_arm=on" in lines
    assert lines.index("dtparam=watchdog=on") > lines.index("otg_mode=1")


def test_second_run_changes_nothing_on_the_boot_partition_or_accounts(built):
    (boot1, root1), (boot2, root2) = partitions(built["first"]), partitions(built["second"])
    for name in ("config.txt", "cmdline.txt"):
        assert boot1.read(name) == boot2.read(name)
    for name in ACCOUNTS:
        assert root1.read(f"/etc/{name}") == root2.read(f"/etc/{name}")


def test_cmdline_has_one_serial_console_and_keeps_the_rest(built):
    boot, _ = partitions(built["second"])
    text = boot.read("cmdline.txt").decode()
    arguments = text.split()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert arguments[0] == "console=serial0,115200"
    assert [a for a in arguments if a.startswith("console=")] == [
        "console=serial0,115200", "console=tty1"]
    assert "root=PARTUUID=4e639091-05" in arguments and "rootwait" in arguments
    assert "init=/usr/lib/raspberrypi-sys-mods/firstboot" in arguments


def test_units_are_installed_and_enabled_like_systemctl_enable(built):
    _, root = partitions(built["second"])
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert sorted(root.listdir(wants)) == ["hearth-agent.service", "hearth-console.service",
                                           "hearth-install-debs.service",
                                           "hearth-updater.service"]
    for unit in ("hearth-agent.service", "hearth-console.service", "hearth-updater.service"):
        assert root.readlink(f"{wants}/{unit}") == f"/etc/systemd/system/{unit}"
        installed = root.read(f"/etc/systemd/system/{unit}")
        assert installed == (REPO / "systemd" / unit).read_bytes()
    for getty in ("serial-getty@ttyAMA0.service", "serial-getty@ttyS0.service"):
        assert root.readlink(f"/etc/systemd/system/{getty}") == "/dev/null"
    for path in ("/etc/systemd/journald.conf.d/60-hearth-persistent.conf",
                 "/etc/systemd/system.conf.d/60-hearth-watchdog.conf",
                 "/etc/tmpfiles.d/hearth.conf", "/etc/systemd/system/hearth-leader.service"):
        inode = root.stat(path)
        assert (inode.kind, inode.mode & 0o7777, inode.uid, inode.gid) == ("file", 0o644, 0, 0)


RAUC_DEBS = ["libjson-glib-1.0-0_1.6.6-1_arm64.deb", "rauc-service_1.8-2_all.deb",
             "rauc_1.8-2_arm64.deb"]


def test_rauc_is_fetched_for_the_images_release_and_installed_at_first_boot(built):
    """The stock image has no RAUC: apt, reading the image's own sources and dpkg status,
    fetched rauc, rauc-service and the one dependency the image lacks (not libc6 or dbus,
    installed), for hearth-install-debs.service to install before the updater starts."""
    root = Ext4Partition(built["second"], slot_layout(built["second"]).root_a)
    assert sorted(root.listdir("/var/lib/hearth-install/debs")) == RAUC_DEBS
    repository = built["first"].parent / "repository"
    for name in RAUC_DEBS:
        assert root.read(f"/var/lib/hearth-install/debs/{name}") == \
            (repository / name).read_bytes()
    unit = root.read("/etc/systemd/system/hearth-install-debs.service").decode()
    assert "Before=hearth-updater.service" in unit
    assert "dpkg -i /var/lib/hearth-install/debs/*.deb" in unit
    assert "build-image: 3 arm64 package(s) for the first boot to install: " \
        "libjson-glib-1.0-0 1.6.6-1, rauc-service 1.8-2, rauc 1.8-2" in built["runs"][0].stdout


def test_rauc_debs_given_are_checked_and_an_image_with_rauc_needs_none(tmp_path):
    stock = make_raspberry_pi_os_image(tmp_path)
    root = Ext4Partition(stock, raspberry_pi_layout(stock)[1])
    given = tmp_path / "given"
    given.mkdir()
    make_deb(given, "rauc", "1.8-2", "amd64")
    with pytest.raises(DebsError, match=r"rauc_1.8-2_amd64.deb \(amd64\) not for the "
                                        r"image's architecture arm64"):
        image_module.first_boot_rauc(root, given, tmp_path, print)
    (given / "rauc_1.8-2_amd64.deb").unlink()
    make_deb(given, "rauc", "1.8-2", "arm64")
    with pytest.raises(DebsError, match=f"{given} has no package rauc-service"):
        image_module.first_boot_rauc(root, given, tmp_path, print)
    make_deb(given, "rauc-service", "1.8-2", "all")
    assert [path.name for path in image_module.first_boot_rauc(root, given, tmp_path, print)] \
        == ["rauc-service_1.8-2_all.deb", "rauc_1.8-2_arm64.deb"]
    status = root.read("/var/lib/dpkg/status").decode() + "".join(
        f"\nPackage: {name}\nStatus: install ok installed\nVersion: 1.13-1\n"
        for name in ("rauc", "rauc-service"))
    image_module.replace_root_file(root, "/var/lib/dpkg/status", status.encode(), tmp_path)
    assert image_module.first_boot_rauc(root, None, tmp_path, print) == ()


def test_hearth_user_exists_once_in_the_right_groups_and_shadow_keeps_its_mode(built):
    _, root = partitions(built["second"])
    passwd = root.read("/etc/passwd").decode().splitlines()
    hearth = [line.split(":") for line in passwd if line.startswith("hearth:")]
    assert len(hearth) == 1
    uid, gid, home, shell = hearth[0][2], hearth[0][3], hearth[0][5], hearth[0][6]
    assert 100 <= int(uid) <= 999 and int(uid) != 998 and shell == "/usr/sbin/nologin"
    groups = {line.split(":")[0]: line.split(":") for line in
              root.read("/etc/group").decode().splitlines()}
    assert groups["hearth"][2] == gid
    for name in ("gpio", "i2c", "dialout"):
        assert groups[name][3].split(",") == ["hearth"]
    assert [line for line in root.read("/etc/shadow").decode().splitlines()
            if line.startswith("hearth:")][0].startswith("hearth:!*:")
    shadow = root.stat("/etc/shadow")
    assert (shadow.mode & 0o7777, shadow.uid, shadow.gid) == (0o640, 0, 42)


def test_the_extension_is_an_aarch64_elf(built):
    _, root = partitions(built["second"])
    extension = root.read(f"{SITE_PACKAGES}/agent/control/_cpid.abi3.so")
    assert extension[:4] == b"\x7fELF" and extension[4] == 2          # ELF64
    assert int.from_bytes(extension[18:20], "little") == 0xB7         # e_machine EM_AARCH64
    assert b"PyInit__cpid" in extension


def test_installed_tree_has_owners_modes_and_the_entry_point(built):
    _, root = partitions(built["second"])
    script = root.stat("/opt/hearth/bin/hearth")
    assert (script.kind, script.mode & 0o7777, script.uid, script.gid) == ("file", 0o755, 0, 0)
    assert root.read("/opt/hearth/bin/hearth").startswith(b"#!/opt/hearth/bin/python3\n")
    assert root.readlink("/opt/hearth/bin/python3") == "/usr/bin/python3.13"
    assert b"include-system-site-packages = true" in root.read("/opt/hearth/pyvenv.cfg")
    module = root.stat(f"{SITE_PACKAGES}/agent/identity.py")
    assert (module.mode & 0o7777, module.uid, module.gid) == (0o644, 0, 0)
    assert root.stat(f"{SITE_PACKAGES}/agent/boards/oil-carrier.toml") is not None


def test_the_installed_package_and_pure_python_dependencies_import(built, tmp_path):
    """The layout is importable: dump site-packages and import from it with this Python (the
    compiled parts are aarch64, so psutil and _cpid are checked as ELF files instead)."""
    _, root = partitions(built["second"])
    root.rdump(SITE_PACKAGES, tmp_path)
    site = tmp_path / "site-packages"
    names = set(os.listdir(site))
    assert {"agent", "paho", "serial", "smbus2", "psutil"} <= names
    assert any(name.startswith("psutil-") and name.endswith(".dist-info") for name in names)
    for shared in site.glob("psutil/*.so"):
        assert int.from_bytes(shared.read_bytes()[18:20], "little") == 0xB7, shared
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import agent.cli, agent.identity, "
            "paho.mqtt.client, serial, smbus2; print(agent.cli.__file__)")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(site)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site))


def test_the_build_verifies_its_result_and_catches_a_damaged_image(built, tmp_path):
    assert "verified" in built["runs"][1].stdout
    damaged = tmp_path / "damaged.img"
    shutil.copyfile(built["second"], damaged)
    _, root = partitions(damaged)
    root.run_script(['rm "/etc/systemd/system/hearth-agent.service"',
                     'sif "/opt/hearth/bin/hearth" mode 0100644'])
    boot, _ = partitions(damaged)
    boot.write("config.txt", boot.read("config.txt") + b"dtparam=watchdog=on\n")
    options = image_module.Options(built["first"], damaged)
    files = image_module.staged_files(options, (3, 13), _stage_like_the_build(tmp_path))
    problems = "\n".join(image_module.verify(damaged, options, files))
    assert "/etc/systemd/system/hearth-agent.service: missing" in problems
    assert "/opt/hearth/bin/hearth: file 644" in problems
    assert "'dtparam=watchdog=on' appears 2 times" in problems


def _stage_like_the_build(tmp_path: Path) -> Path:
    """A staging tree with the entry point only: enough for staged_files() to list the units."""
    stage = tmp_path / "stage"
    (stage / "opt/hearth/bin").mkdir(parents=True)
    (stage / "opt/hearth/bin/hearth").write_text(
        image_module.HEARTH_SCRIPT.format(install=image_module.INSTALL_DIR))
    return stage


def test_a_source_that_is_not_a_raspberry_pi_os_image_is_refused(tmp_path):
    bogus = tmp_path / "bogus.img"
    bogus.write_bytes(b"\0" * MIB)
    result = subprocess.run([REPO / "scripts/build-image", bogus, tmp_path / "out.img",
                             "--wheelhouse", tmp_path], capture_output=True, text=True)
    assert result.returncode == 2 and "build-image:" in result.stderr


def test_hardware_config_matches_the_board_definition():
    board = tomllib.loads((REPO / "hardware/boards/oil-carrier.toml").read_text())
    lines = fragment_lines()
    assert f"dtoverlay=w1-gpio,gpiopin={board['pins']['one_wire_gpio']}" in lines
    assert {"dtparam=i2c_arm=on", "enable_uart=1", "dtparam=watchdog=on"} <= set(lines)
    assert {sensor.get("bus") for sensor in board["sensor"] if "bus" in sensor} == {1}


def test_the_broker_image_carries_mosquitto_and_the_leader_image_its_devices(tmp_path,
                                                                             wheelhouse):
    """The site broker's box gets Mosquitto and the generated config; a leader board runs
    `hearth leader` with its device drop-in and no broker."""
    inventory = tmp_path / "site.toml"
    inventory.write_text('site = "maple-school"\nbroker = "hearth-broker.local"\n'
                         '[[module]]\nname = "m1"\n'
                         '[[board]]\nmodule = "m1"\nname = "b01"\nserial = "10000000a1b2c3d4"\n'
                         '[[leader]]\nmodule = "m1"\nboard = "b01"\n')
    out = tmp_path / "provisioned"
    sh(REPO / "scripts/provision", inventory, out)
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        "Package: mosquitto\nVersion: 2.0.21-1\nArchitecture: arm64\n"
        "Maintainer: test <test@example.org>\nDescription: stand-in for the real arm64 package\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    sh("dpkg-deb", "--build", "--root-owner-group", package, debs / "mosquitto_2.0.21-1_arm64.deb")
    stock = make_raspberry_pi_os_image(tmp_path)
    broker = tmp_path / "broker.img"
    result = subprocess.run([REPO / "scripts/build-image", stock, broker, "--wheelhouse",
                             wheelhouse, "--broker", "--mosquitto-debs", debs, "--broker-dir",
                             out / "broker", "--identity-table", out / "identity-table.toml"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    _, root = partitions(broker)
    assert sorted(root.listdir("/etc/systemd/system/multi-user.target.wants")) == [
        "hearth-agent.service", "hearth-console.service", "hearth-install-debs.service",
        "hearth-updater.service"]
    assert root.read("/var/lib/hearth-install/debs/mosquitto_2.0.21-1_arm64.deb") == \
        (debs / "mosquitto_2.0.21-1_arm64.deb").read_bytes()
    assert sorted(root.listdir("/var/lib/hearth-install/debs")) == sorted(
        RAUC_DEBS + ["mosquitto_2.0.21-1_arm64.deb"])
    assert b"password_file /etc/mosquitto/hearth/passwd" in root.read(
        "/etc/mosquitto/conf.d/hearth.conf")
    for path in ("/etc/mosquitto/hearth/passwd", "/etc/mosquitto/conf.d/hearth.conf"):
        status = root.stat(path)
        assert (status.mode & 0o7777, status.uid) == (0o640, 0), path
    data = Ext4Partition(broker, slot_layout(broker).data)
    assert data.read("/etc/hearth/identity-table.toml") == \
        (out / "identity-table.toml").read_bytes()

    devices = tmp_path / "devices.conf"
    devices.write_text("[Service]\nPrivateDevices=no\nDevicePolicy=closed\n"
                       "DeviceAllow=/dev/i2c-1 rw\nSupplementaryGroups=i2c\n")
    leader = tmp_path / "leader.img"
    result = subprocess.run([REPO / "scripts/build-image", stock, leader, "--wheelhouse",
                             wheelhouse, "--leader", "--leader-devices", devices],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    _, root = partitions(leader)
    assert sorted(root.listdir("/etc/systemd/system/multi-user.target.wants")) == [
        "hearth-agent.service", "hearth-console.service", "hearth-install-debs.service",
        "hearth-leader.service", "hearth-updater.service"]
    assert root.read("/etc/systemd/system/hearth-leader.service.d/devices.conf") == \
        devices.read_bytes()
    assert root.stat("/etc/mosquitto/conf.d/hearth.conf") is None
    assert sorted(root.listdir("/var/lib/hearth-install/debs")) == RAUC_DEBS


def test_a_broker_image_without_mosquitto_packages_is_refused(tmp_path):
    stock = tmp_path / "stock.img"
    stock.write_bytes(b"")
    result = subprocess.run([REPO / "scripts/build-image", stock, tmp_path / "broker.img",
                             "--broker"], capture_output=True, text=True)
    assert result.returncode == 2 and "--broker needs --mosquitto-debs" in result.stderr
    result = subprocess.run([REPO / "scripts/build-image", stock, tmp_path / "leader.img",
                             "--leader", "--broker-dir", tmp_path], capture_output=True, text=True)
    assert result.returncode == 2 and "--broker-dir is for the site broker's box" in result.stderr
