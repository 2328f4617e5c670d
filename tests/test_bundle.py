"""Update bundles and RAUC's configuration (docs/updates.md), with the real rauc 1.8 and openssl:
keys made by `hearth bundle keygen`, a bundle built from a small disk image and verified as a
board verifies it, bundles a board must refuse (unsigned, another CA, a certificate not meant
for code signing, a downgrade), the bundle's hook on a boot slot, and RAUC's service driving
the tryboot backend through the generated system.conf and handler scripts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.deploy.broker_config import sign_certificate
from agent.update import autoboot, rauc_system
from agent.update.bundle import HOOK_SCRIPT, BundleError, check
from agent.update.tryboot_backend import STATE_FILE

MIB = 1 << 20
HEARTH = [sys.executable, "-m", "agent"]
CMDLINE = "console=serial0,115200 root=PARTUUID=4e639091-05 rw rootwait\n"
AUTOBOOT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


def sh(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, **kwargs)


def hearth(*words, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*HEARTH, *map(str, words)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def golden_image(directory: Path, release: str | None) -> Path:
    """A small single-root image as Raspberry Pi OS lays it out: FAT boot, ext4 root holding
    /etc/hearth-release (when given) and some incompressible bytes, as a real root has."""
    directory.mkdir(parents=True, exist_ok=True)
    boot = directory / "boot.fat"
    sh("mkfs.vfat", "-F", "16", "-C", boot, 16 * 1024)
    (directory / "cmdline.txt").write_text(CMDLINE)
    sh("mcopy", "-i", boot, directory / "cmdline.txt", "::cmdline.txt")
    tree = directory / "tree"
    (tree / "etc").mkdir(parents=True)
    if release is not None:
        (tree / "etc/hearth-release").write_text(release + "\n")
    (tree / "etc/blob").write_bytes(os.urandom(64 * 1024))
    root = directory / "root.ext4"
    sh("mkfs.ext4", "-q", "-F", "-d", tree, root, "8M")
    disk = directory / "golden.img"
    with disk.open("wb") as handle:
        handle.truncate(32 * MIB)
    sh("sfdisk", "--quiet", disk, input=b"label: dos\nlabel-id: 0x4e639091\n"
                                         b"start=2048, size=32768, type=e\n"
                                         b"start=34816, size=16384, type=83\n")
    for part, offset_mib in ((boot, 1), (root, 17)):
        sh("dd", f"if={part}", f"of={disk}", "bs=1M", f"seek={offset_mib}", "conv=notrunc",
           "status=none")
    return disk


def ab_image(directory: Path, single_root: Path) -> Path:
    """The A/B layout (docs/updates.md): slot B's partitions filled with other bytes than slot
    A's, so a bundle that took the wrong ones shows it."""
    boot_a, root_a = single_root.parent / "boot.fat", single_root.parent / "root.ext4"
    directory.mkdir(parents=True, exist_ok=True)
    other = directory / "other"
    other.write_bytes(os.urandom(16 * MIB))
    disk = directory / "golden-ab.img"
    with disk.open("wb") as handle:
        handle.truncate(100 * MIB)
    sh("sfdisk", "--quiet", disk, input=b"label: dos\nlabel-id: 0x4e639091\n"
                                         b"start=2048, size=2048, type=c\n"
                                         b"start=4096, size=32768, type=e\n"
                                         b"start=36864, size=32768, type=e\n"
                                         b"start=69632, type=5\n"
                                         b"start=71680, size=16384, type=83\n"
                                         b"start=90112, size=16384, type=83\n"
                                         b"start=108544, type=83\n")
    for part, sector, count_mib in ((boot_a, 4096, 16), (other, 36864, 16), (root_a, 71680, 8),
                                    (other, 90112, 8)):
        sh("dd", f"if={part}", f"of={disk}", "bs=512", f"seek={sector}",
           f"count={count_mib * 2048}", "conv=notrunc", "status=none")
    return disk


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site's keys and a bundle of release 1.2.0 built from a golden image."""
    work = tmp_path_factory.mktemp("bundle")
    keys = work / "keys"
    made = hearth("bundle", "keygen", "--out", keys, "--site", "test")
    assert made.returncode == 0, made.stderr
    image = golden_image(work / "image", "1.2.0")
    out = work / "hearth-1.2.0.raucb"
    built = hearth("bundle", "build", "--image", image, "--cert", keys / "signing/signing.crt",
                   "--key", keys / "signing/signing.key", "--out", out)
    assert built.returncode == 0, built.stderr
    conf = work / "system.conf"
    conf.write_text(rauc_system.system_conf(rauc_system.partuuid_devices("4e639091"),
                                            keyring=str(keys / "ca/ca.crt"),
                                            status_file=str(work / "status.raucs")))
    return {"work": work, "keys": keys, "image": image, "bundle": out, "built": built.stdout,
            "rauc": ["rauc", f"--conf={conf}"]}


def test_a_bundle_built_from_the_golden_image_is_verified_with_the_sites_keyring(site):
    keyring = site["keys"] / "ca/ca.crt"
    checked = hearth("bundle", "check", site["bundle"], "--keyring", keyring)
    assert checked.returncode == 0, checked.stderr
    assert "version 1.2.0 for hearth-rpi" in checked.stdout
    assert f"{site['bundle']}: version 1.2.0" in site["built"]
    info = json.loads(sh(*site["rauc"], "info", "--output-format=json", site["bundle"],
                         text=True).stdout)
    images = {name: image for entry in info["images"] for name, image in entry.items()}
    assert images["boot"]["hooks"] == ["post-install"]
    assert images["boot"]["size"] == 16 * MIB and images["rootfs"]["size"] == 8 * MIB
    extracted = site["work"] / "extracted"
    sh(*site["rauc"], "extract", site["bundle"], extracted)
    disk = site["image"].read_bytes()
    assert (extracted / "boot.vfat").read_bytes() == disk[MIB:17 * MIB]
    assert (extracted / "rootfs.ext4").read_bytes() == disk[17 * MIB:25 * MIB]
    text = sh(*site["rauc"], "info", site["bundle"], text=True).stdout
    assert "Bundle Format: \tverity" in text


def test_a_bundle_of_an_ab_golden_image_holds_slot_as_boot_and_root(site, tmp_path):
    image = ab_image(tmp_path / "ab", site["image"])
    out = tmp_path / "ab.raucb"
    built = hearth("bundle", "build", "--image", image, "--cert",
                   site["keys"] / "signing/signing.crt", "--key",
                   site["keys"] / "signing/signing.key", "--out", out)
    assert built.returncode == 0, built.stderr
    sh(*site["rauc"], "extract", out, tmp_path / "extracted")
    disk = image.read_bytes()
    assert (tmp_path / "extracted/boot.vfat").read_bytes() == disk[4096 * 512:36864 * 512]
    assert (tmp_path / "extracted/rootfs.ext4").read_bytes() == disk[71680 * 512:
                                                                    (71680 + 16384) * 512]


def test_keygen_keeps_the_keys_it_made(site):
    before = {path: path.read_bytes() for path in site["keys"].rglob("*") if path.is_file()}
    again = hearth("bundle", "keygen", "--out", site["keys"], "--site", "test")
    assert again.returncode == 0, again.stderr
    assert {path: path.read_bytes() for path in site["keys"].rglob("*")
            if path.is_file()} == before


def test_an_unsigned_bundle_is_refused_with_the_reason(site, tmp_path):
    unsigned = tmp_path / "unsigned.raucb"
    sh(*site["rauc"], "extract", site["bundle"], tmp_path / "content")
    sh("mksquashfs", tmp_path / "content", unsigned, "-quiet", "-no-progress")
    checked = hearth("bundle", "check", unsigned, "--keyring", site["keys"] / "ca/ca.crt")
    assert checked.returncode == 1
    assert "Signature size is 0" in checked.stderr and "the bundle is not signed" in \
        checked.stderr


def test_a_bundle_signed_under_another_ca_is_refused_with_the_reason(site, tmp_path):
    other = tmp_path / "other-site"
    assert hearth("bundle", "keygen", "--out", other, "--site", "other").returncode == 0
    out = tmp_path / "other.raucb"
    built = hearth("bundle", "build", "--image", site["image"], "--cert",
                   other / "signing/signing.crt", "--key", other / "signing/signing.key",
                   "--out", out)
    assert built.returncode == 0, built.stderr
    checked = hearth("bundle", "check", out, "--keyring", site["keys"] / "ca/ca.crt")
    assert checked.returncode == 1
    assert "signature verification failed" in checked.stderr
    assert "not signed by a code-signing certificate of the CA in" in checked.stderr
    assert hearth("bundle", "check", out, "--keyring", other / "ca/ca.crt").returncode == 0


def test_a_certificate_of_the_same_ca_not_meant_for_code_signing_cannot_sign(site, tmp_path):
    """A TLS client certificate under the update CA: system.conf's check-purpose=codesign."""
    sign_certificate(tmp_path / "tls", "client", "/CN=board", "extendedKeyUsage=clientAuth\n",
                     site["keys"] / "ca")
    out = tmp_path / "tls-signed.raucb"
    assert hearth("bundle", "build", "--image", site["image"], "--cert",
                  tmp_path / "tls/client.crt", "--key", tmp_path / "tls/client.key", "--out",
                  out).returncode == 0
    with pytest.raises(BundleError, match="unsuitable certificate purpose"):
        check(out, site["keys"] / "ca/ca.crt")


def test_build_refuses_a_version_the_image_does_not_hold(site, tmp_path):
    built = hearth("bundle", "build", "--image", site["image"], "--cert",
                   site["keys"] / "signing/signing.crt", "--key",
                   site["keys"] / "signing/signing.key", "--version", "1.3.0",
                   "--out", tmp_path / "x.raucb")
    assert built.returncode == 1
    assert "--version 1.3.0 but" in built.stderr and "says 1.2.0" in built.stderr
    assert not (tmp_path / "x.raucb").exists()
    bare = golden_image(tmp_path / "bare", None)
    built = hearth("bundle", "build", "--image", bare, "--cert",
                   site["keys"] / "signing/signing.crt", "--key",
                   site["keys"] / "signing/signing.key", "--out", tmp_path / "y.raucb")
    assert built.returncode == 1 and "has no /etc/hearth-release" in built.stderr


def pre_install_script(directory: Path, release: Path, flag: Path) -> Path:
    scripts = rauc_system.handler_scripts(
        HEARTH, pre_install_options=["--release", str(release),
                                     "--allow-downgrade-flag", str(flag)])
    path = directory / rauc_system.PRE_INSTALL_SCRIPT
    path.write_text(scripts[rauc_system.PRE_INSTALL_SCRIPT])
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("installed, forced, refused", [
    ("1.3.0", False, True), ("1.3.0", True, False), ("1.2.0", False, False),
    ("1.1.9", False, False), ("1.10.0", False, True)])
def test_the_pre_install_handler_refuses_a_downgrade_unless_forced(
        site, tmp_path, installed, forced, refused):
    """Run as RAUC runs it: the handler script, RAUC_BUNDLE_MOUNT_POINT at the bundle's
    content (here extracted by rauc after its signature was checked)."""
    content = tmp_path / "bundle"
    sh(*site["rauc"], "extract", site["bundle"], content)
    release = tmp_path / "hearth-release"
    release.write_text(installed + "\n")
    flag = tmp_path / "allow-downgrade"
    if forced:
        flag.touch()
    # RAUC runs the handler with its handler arguments as one word, empty by default
    result = subprocess.run([pre_install_script(tmp_path, release, flag), ""], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "RAUC_BUNDLE_MOUNT_POINT": str(content)})
    if refused:
        assert result.returncode == 1
        assert result.stdout.startswith(f"<< error bundle version 1.2.0 is older than the "
                                        f"installed {installed}; a downgrade needs the update "
                                        "sent with force")
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "bundle 1.2.0 accepted" in result.stdout


def test_the_pre_install_handler_refuses_when_it_cannot_tell(tmp_path):
    script = pre_install_script(tmp_path, tmp_path / "missing-release", tmp_path / "flag")
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle/manifest.raucm").write_text("[update]\ncompatible=hearth-rpi\n"
                                                    "version=1.2.0\n")
    env = {**os.environ, "RAUC_BUNDLE_MOUNT_POINT": str(tmp_path / "bundle")}
    result = subprocess.run([script, ""], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "cannot read the installed version from" in result.stdout
    (tmp_path / "missing-release").write_text("1.2.0-rc1\n")
    result = subprocess.run([script, ""], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "is not dotted numbers" in result.stdout


def test_the_pre_install_handler_refuses_a_root_image_larger_than_its_slot(site, tmp_path):
    """Run as RAUC 1.8 runs it on a board booted from slot A, with RAUC's handler variables:
    the bundle's 8 MiB root image into a 6 MiB slot B is refused before anything is written
    (RAUC 1.8 itself would write until the slot ends); into an 8 MiB slot it is accepted."""
    content = tmp_path / "bundle"
    sh(*site["rauc"], "extract", site["bundle"], content)
    release = tmp_path / "hearth-release"
    release.write_text("1.2.0\n")
    script = pre_install_script(tmp_path, release, tmp_path / "allow-downgrade")
    devices = {name: tmp_path / name for name in ("rootfs.0", "boot.0", "rootfs.1", "boot.1")}
    sizes = {"rootfs.0": 8 * MIB, "boot.0": 16 * MIB, "rootfs.1": 6 * MIB, "boot.1": 16 * MIB}
    for name, device in devices.items():
        device.write_bytes(b"\xa5" * sizes[name])
    env = {**os.environ, "RAUC_BUNDLE_MOUNT_POINT": str(content), "RAUC_TARGET_SLOTS": "3 4",
           "RAUC_SLOTS": "1 2 3 4", "RAUC_CURRENT_BOOTNAME": "A"}
    for number, name in enumerate(devices, start=1):
        env[f"RAUC_SLOT_NAME_{number}"] = name
        env[f"RAUC_SLOT_DEVICE_{number}"] = str(devices[name])
    env.update({"RAUC_IMAGE_NAME_3": "rootfs.ext4", "RAUC_IMAGE_NAME_4": "boot.vfat"})
    result = subprocess.run([script, ""], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith(
        f"<< error image rootfs.ext4 is {8 * MIB} bytes, larger than slot rootfs.1 "
        f"({devices['rootfs.1']}, {6 * MIB} bytes). This board's root slots are smaller than "
        "the release: build its golden image with the --slot-size")
    assert all(device.read_bytes() == b"\xa5" * sizes[name] for name, device in devices.items())
    with devices["rootfs.1"].open("ab") as handle:
        handle.write(b"\xa5" * 2 * MIB)
    result = subprocess.run([script, ""], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bundle 1.2.0 accepted" in result.stdout


def run_hook(tmp_path: Path, bootname: str, proc_cmdline: str) -> subprocess.CompletedProcess:
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK_SCRIPT)
    hook.chmod(0o755)
    (tmp_path / "proc-cmdline").write_text(proc_cmdline)
    env = {**os.environ, "RAUC_SLOT_CLASS": "boot", "RAUC_SLOT_NAME": "boot.1",
           "RAUC_SLOT_BOOTNAME": bootname, "RAUC_SLOT_MOUNT_POINT": str(tmp_path / "slot"),
           "HEARTH_PROC_CMDLINE": str(tmp_path / "proc-cmdline")}
    return subprocess.run([hook, "slot-post-install"], capture_output=True, text=True, env=env,
                          timeout=60)


def test_the_bundle_hook_points_a_written_boot_slot_at_its_own_root(tmp_path):
    """Slot A's cmdline.txt written to slot B on a board whose disk id differs from the
    golden image's: it must name the board's disk, partition 6."""
    (tmp_path / "slot").mkdir()
    (tmp_path / "slot/cmdline.txt").write_text(CMDLINE)
    result = run_hook(tmp_path, "B", "console=ttyS0 root=PARTUUID=0badcafe-05 rw quiet\n")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "slot/cmdline.txt").read_text() == CMDLINE.replace(
        "4e639091-05", "0badcafe-06")
    assert sorted(path.name for path in (tmp_path / "slot").iterdir()) == ["cmdline.txt"]


def test_the_bundle_hook_stops_the_install_on_a_board_it_cannot_name(tmp_path):
    (tmp_path / "slot").mkdir()
    (tmp_path / "slot/cmdline.txt").write_text(CMDLINE)
    result = run_hook(tmp_path, "B", "console=ttyS0 root=/dev/mmcblk0p2 rw\n")
    assert result.returncode == 1 and "has no root=PARTUUID=<disk id>-05 or -06" in result.stderr
    result = run_hook(tmp_path, "C", "root=PARTUUID=0badcafe-05\n")
    assert result.returncode == 1 and "expected A or B" in result.stderr
    (tmp_path / "slot/cmdline.txt").write_text("console=ttyS0 rootwait\n")
    result = run_hook(tmp_path, "A", "root=PARTUUID=0badcafe-06\n")
    assert result.returncode == 1 and "has no root= to point at 0badcafe-05" in result.stderr
    assert (tmp_path / "slot/cmdline.txt").read_text() == "console=ttyS0 rootwait\n"


def test_system_conf_names_the_slots_by_partuuid():
    conf = rauc_system.system_conf(rauc_system.partuuid_devices("4e639091"))
    for slot, number in (("rootfs.0", 5), ("boot.0", 2), ("rootfs.1", 6), ("boot.1", 3)):
        assert f"[slot.{slot}]\ndevice=/dev/disk/by-partuuid/4e639091-{number:02d}\n" in conf
    with pytest.raises(ValueError, match="8 lower-case hex digits"):
        rauc_system.partuuid_devices("0x4e639091")


class RaucService:
    """`rauc service` on a private D-Bus session bus (RAUC's DBUS_STARTER_BUS_TYPE=session),
    with the booted slot given as the kernel command line would."""

    def __init__(self, conf: Path, booted: str, log: Path):
        self.daemon = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address"],
            stdout=subprocess.PIPE, text=True)
        address = self.daemon.stdout.readline().strip()
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address,
                    "DBUS_STARTER_BUS_TYPE": "session"}
        self.service = subprocess.Popen(
            ["rauc", "service", f"--conf={conf}", f"--override-boot-slot={booted}"],
            env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.rauc("status").returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"rauc service did not answer within 30 s: {log.read_text()}")
            time.sleep(0.2)

    def rauc(self, *words: str) -> subprocess.CompletedProcess:
        return subprocess.run(["rauc", *words], env=self.env, capture_output=True, text=True,
                              timeout=60)

    def status(self) -> dict:
        result = self.rauc("status", "--output-format=json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop(self) -> None:
        for process in (self.service, self.daemon):
            process.terminate()
            process.wait(timeout=30)


def test_raucs_service_commits_a_trial_through_the_generated_config(tmp_path, site):
    """RAUC itself calls the backend: arming the other slot (what an install ends with),
    then on the trial boot mark-good commits it in autoboot.txt; mark-bad disarms."""
    board = tmp_path / "board"
    for name in ("autoboot", "facts", "data", "bin", "dev"):
        (board / name).mkdir(parents=True)
    (board / "autoboot/autoboot.txt").write_text(AUTOBOOT)
    (board / "update.toml").write_text(f'bootloader_dir = "{board / "facts"}"\n')

    def boot(partition: int, tryboot: bool) -> None:
        (board / "facts/partition").write_bytes(partition.to_bytes(4, "big"))
        (board / "facts/tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))

    devices = {}
    for name in ("rootfs.0", "boot.0", "rootfs.1", "boot.1"):
        devices[name] = str(board / "dev" / name)
        Path(devices[name]).touch()
    conf = board / "system.conf"
    conf.write_text(rauc_system.system_conf(
        devices, keyring=str(site["keys"] / "ca/ca.crt"),
        status_file=str(board / "data/status.raucs"), handler_dir=str(board / "bin")))
    scripts = rauc_system.handler_scripts(HEARTH, backend_options=[
        "--autoboot", str(board / "autoboot/autoboot.txt"), "--state-dir", str(board / "data"),
        "--settings", str(board / "update.toml")])
    for name, text in scripts.items():
        (board / "bin" / name).write_text(text)
        (board / "bin" / name).chmod(0o755)
    assert sh("rauc", f"--conf={conf}", "info", site["bundle"]).returncode == 0

    boot(2, tryboot=False)
    service = RaucService(conf, "A", tmp_path / "rauc-a.log")
    try:
        assert service.status()["boot_primary"] == "rootfs.0"
        marked = service.rauc("status", "mark-active", "other")
        assert marked.returncode == 0, marked.stderr
        assert service.status()["boot_primary"] == "rootfs.1"
    finally:
        service.stop()
    assert (board / "autoboot/autoboot.txt").read_text() == AUTOBOOT  # nothing committed
    assert (board / "data" / STATE_FILE).exists()

    boot(autoboot.read(board / "autoboot/autoboot.txt").tryboot_partition, tryboot=True)
    service = RaucService(conf, "B", tmp_path / "rauc-b.log")
    try:
        assert service.status()["boot_primary"] == "rootfs.0"  # a plain reboot goes back
        marked = service.rauc("status", "mark-good", "booted")
        assert marked.returncode == 0, marked.stderr
        status = service.status()
        assert status["boot_primary"] == "rootfs.1"
        slots = {name: slot for entry in status["slots"] for name, slot in entry.items()}
        assert slots["rootfs.1"]["boot_status"] == "good"
        assert service.rauc("status", "mark-bad", "other").returncode == 0
        slots = {name: slot for entry in service.status()["slots"] for name, slot in
                 entry.items()}
        assert slots["rootfs.0"]["boot_status"] == "bad"
    finally:
        service.stop()
    committed = autoboot.read(board / "autoboot/autoboot.txt")
    assert (committed.committed_partition, committed.tryboot_partition) == (3, 2)
