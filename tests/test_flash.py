"""scripts/flash: refuses disks it must not touch (not removable, mounted, holding /, a
partition, a plain file without --to-file) and says why; writes an image file with --to-file,
verified by read-back hash, with the board's identity file on its boot partition."""

import hashlib
import subprocess
from pathlib import Path

import pytest

from test_build_image import make_raspberry_pi_os_image

from agent.deploy.disk import FatPartition, raspberry_pi_layout, slot_layout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_raspberry_pi_os_image(tmp_path_factory.mktemp("flash-image"))


def fake_system(tmp_path: Path, disks: dict[str, str], mounts: list[str]) -> Path:
    """A /sys and /proc tree: disks maps a name ('sdb') to its removable flag; each disk has
    partitions 1 and 2; the 'devices' are plain files under dev/."""
    root = tmp_path / "system"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    for name, removable in disks.items():
        block = root / "sys/block" / name
        for part in (f"{name}1", f"{name}2"):
            (block / part).mkdir(parents=True)
            (block / part / "partition").write_text("1\n")
        (block / "removable").write_text(f"{removable}\n")
        (root / "dev" / name).write_bytes(b"")
    (root / "proc/mounts").write_text(
        "\n".join(["sysfs /sys sysfs rw 0 0", "proc /proc proc rw 0 0", *mounts]) + "\n")
    return root


def flash(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([REPO / "scripts/flash", *map(str, arguments)], capture_output=True,
                          text=True, timeout=120)


SYSTEM_MOUNTS = ["/dev/nvme0n1p2 / ext4 rw 0 0", "/dev/nvme0n1p1 /boot/efi vfat rw 0 0"]


def test_refuses_a_disk_that_is_not_removable(tmp_path, image):
    root = fake_system(tmp_path, {"sdb": 0, "nvme0n1": 0}, SYSTEM_MOUNTS)
    result = flash(image, root / "dev/sdb", "--sys-root", root)
    assert result.returncode == 2
    assert "/dev/sdb is not removable (sysfs removable = 0)" in result.stderr
    assert (root / "dev/sdb").read_bytes() == b""


def test_refuses_a_disk_with_a_mounted_partition(tmp_path, image):
    root = fake_system(tmp_path, {"sdc": 1, "nvme0n1": 0},
                       SYSTEM_MOUNTS + [r"/dev/sdc1 /media/tech/boot\040fs vfat rw 0 0"])
    result = flash(image, root / "dev/sdc", "--sys-root", root)
    assert result.returncode == 2
    assert "/dev/sdc is mounted (/dev/sdc1 on /media/tech/boot fs); unmount it" in result.stderr
    assert (root / "dev/sdc").read_bytes() == b""


def test_refuses_the_disk_holding_the_running_system(tmp_path, image):
    root = fake_system(tmp_path, {"sda": 1}, ["/dev/sda2 / ext4 rw 0 0"])
    result = flash(image, root / "dev/sda", "--sys-root", root)
    assert result.returncode == 2 and "/dev/sda holds the running system's /" in result.stderr


def test_refuses_a_partition_and_an_unknown_device(tmp_path, image):
    root = fake_system(tmp_path, {"sdd": 1}, SYSTEM_MOUNTS)
    (root / "dev/sdd1").write_bytes(b"")
    result = flash(image, root / "dev/sdd1", "--sys-root", root)
    assert result.returncode == 2 and "give the whole device /dev/sdd" in result.stderr
    (root / "dev/sdq").write_bytes(b"")
    result = flash(image, root / "dev/sdq", "--sys-root", root)
    assert result.returncode == 2 and "is not a disk the kernel knows" in result.stderr


def test_refuses_a_plain_file_without_to_file(tmp_path, image):
    target = tmp_path / "card.img"
    target.write_bytes(b"")
    result = flash(image, target)
    assert result.returncode == 2 and "pass --to-file" in result.stderr


def test_writes_a_removable_unmounted_disk(tmp_path, image):
    root = fake_system(tmp_path, {"sde": 1, "nvme0n1": 0}, SYSTEM_MOUNTS)
    result = flash(image, root / "dev/sde", "--sys-root", root)
    assert result.returncode == 0, result.stderr
    assert (root / "dev/sde").read_bytes() == image.read_bytes()


def test_writes_a_file_verified_by_hash_with_the_identity_file(tmp_path, image):
    target = tmp_path / "board.img"
    result = flash(image, target, "--to-file", "--identity", "maple-school/m1/b07")
    assert result.returncode == 0, result.stderr
    expected = hashlib.sha256(image.read_bytes()).hexdigest()
    assert f"verified by read-back, sha256 {expected}" in result.stderr
    assert "100%" in result.stderr
    boot_partition, _ = raspberry_pi_layout(target)
    text = FatPartition(target, boot_partition).read("hearth-identity.toml").decode()
    assert '[identity]\nsite = "maple-school"\nmodule = "m1"\nboard = "b07"\n' in text
    # The identity file is the only difference from the image.
    assert target.stat().st_size == image.stat().st_size


def test_the_identity_written_is_what_the_board_resolves(tmp_path, image):
    from agent.identity import Identity, resolve

    target = tmp_path / "board.img"
    assert flash(image, target, "--to-file", "--identity", "maple-school/m2/b31").returncode == 0
    boot_partition, _ = raspberry_pi_layout(target)
    board_root = tmp_path / "board-root"
    (board_root / "boot/firmware").mkdir(parents=True)
    (board_root / "boot/firmware/hearth-identity.toml").write_bytes(
        FatPartition(target, boot_partition).read("hearth-identity.toml"))
    assert resolve(board_root).identity == Identity("maple-school", "m2", "b31")


def test_a_bad_identity_is_refused_before_anything_is_written(tmp_path, image):
    target = tmp_path / "board.img"
    result = flash(image, target, "--to-file", "--identity", "Maple School/m1/b07")
    assert result.returncode == 2 and '--identity: site = "Maple School"' in result.stderr
    assert not target.exists()


@pytest.fixture(scope="module")
def slots_image(tmp_path_factory, image) -> Path:
    """The stock image laid out in two slots by build-image's own layout step (p1 autoboot.txt,
    p2/p3 boot, p5/p6 root, p7 data), without the wheels and extension of a full build."""
    from agent.deploy.image import copy_slot_a_to_b, lay_out_slots

    work = tmp_path_factory.mktemp("slots")
    output = work / "golden.img"
    layout = lay_out_slots(image, output, 8, work)
    copy_slot_a_to_b(output, layout, "4e639091")
    return output


def board_root_as_mounted(image: Path, boot_partition: int, tmp_path: Path) -> Path:
    """The files a booted board sees, read back with mtools: the booted slot's boot partition at
    /boot/firmware and partition 1 at /boot/autoboot (the boot-partition generator's mounts)."""
    layout = slot_layout(image)
    root = tmp_path / "board-root"
    for mount_point, partition in (("boot/firmware", {2: layout.boot_a, 3: layout.boot_b}[
            boot_partition]), ("boot/autoboot", layout.autoboot)):
        (root / mount_point).mkdir(parents=True)
        fat = FatPartition(image, partition)
        if fat.exists("hearth-identity.toml"):
            (root / mount_point / "hearth-identity.toml").write_bytes(
                fat.read("hearth-identity.toml"))
    return root


def test_the_identity_survives_an_update_that_rewrites_the_other_boot_partition(
        tmp_path, slots_image):
    """An update writes slot B's boot partition from the bundle's boot image (slot A's p2 of the
    golden image, which never held an identity) and commits slot B: the board, booting p3,
    still finds who it is, because flash put the identity on partition 1, which no update
    rewrites."""
    from agent.identity import Identity, resolve

    target = tmp_path / "board.img"
    result = flash(slots_image, target, "--to-file", "--identity", "maple-school/m3/b12")
    assert result.returncode == 0, result.stderr
    layout = slot_layout(target)
    assert len(FatPartition(target, layout.autoboot).read("autoboot.txt")) < 512
    bundle_boot_image = tmp_path / "boot.vfat"
    with slots_image.open("rb") as handle:
        handle.seek(layout.boot_a.offset)
        bundle_boot_image.write_bytes(handle.read(layout.boot_a.size))
    with target.open("r+b") as handle:
        handle.seek(layout.boot_b.offset)
        handle.write(bundle_boot_image.read_bytes())
    assert not FatPartition(target, layout.boot_b).exists("hearth-identity.toml")
    resolution = resolve(board_root_as_mounted(target, 3, tmp_path))
    assert resolution.identity == Identity("maple-school", "m3", "b12"), resolution.message
    assert "boot file /boot/autoboot/hearth-identity.toml" in resolution.message
