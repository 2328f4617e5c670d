"""The aarch64 half of the VM test: the golden image's compiled PID core loaded on an emulated
aarch64 CPU (QEMU's virt machine, a Cortex-A72) with Debian's arm64 kernel and Python.

A full arm64 root would have to run its package scripts under emulation, which takes longer
than the whole run may; this needs none. Debian's arm64 kernel and python3-minimal are only
unpacked (mmdebstrap's extract variant), and the kernel boots straight into an initramfs that
holds Python, the extension and pid_ref.py as the image ships them, with
agent/deploy/vm_guest_pid.py as /init."""

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

from agent.deploy.disk import Ext4Partition, raspberry_pi_layout, run

SUITE = "trixie"
PACKAGES = ("python3-minimal", "linux-image-arm64")
PYTHON = "python3.13"
LIBRARIES = ("ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libz.so.1", "libexpat.so.1")
"""What python3.13 and the extension link against (readelf -d)."""
EXTENSION = "/opt/hearth/lib/python3.13/site-packages/agent/control/_cpid.abi3.so"
REFERENCE = "/opt/hearth/lib/python3.13/site-packages/agent/control/pid_ref.py"
CHECK_LINE = re.compile(r"vm-test: .*")


class Cpio:
    """An initramfs archive in the kernel's "newc" cpio format, built in memory."""

    def __init__(self):
        self.data = bytearray()
        self.inode = 1

    def add(self, name: str, mode: int, content: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        fields = (self.inode, mode, 0, 0, 1, 0, len(content), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0)
        self.inode += 1
        self.data += b"070701" + b"".join(b"%08X" % field for field in fields)
        self.data += name.encode() + b"\0"
        self._pad()
        self.data += content
        self._pad()

    def add_tree(self, source: Path, name: str) -> None:
        """A directory with everything under it; symlinks kept as links."""
        self.add(name, stat.S_IFDIR | 0o755)
        for path in sorted(source.rglob("*")):
            member = f"{name}/{path.relative_to(source)}"
            if path.is_symlink():
                self.add(member, stat.S_IFLNK | 0o777, str(path.readlink()).encode())
            elif path.is_dir():
                self.add(member, stat.S_IFDIR | 0o755)
            else:
                self.add(member, stat.S_IFREG | (path.stat().st_mode & 0o777), path.read_bytes())

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.data)

    def _pad(self) -> None:
        self.data += b"\0" * (-len(self.data) % 4)


def python_and_kernel(cache: Path, log) -> tuple[Path, Path]:
    """(Debian's arm64 kernel, an initramfs with python3-minimal), unpacked once and cached."""
    directory = cache / f"arm64-{SUITE}-{'-'.join(PACKAGES)}"
    kernel, initramfs = directory / "vmlinuz", directory / "python.cpio"
    if initramfs.exists():
        return kernel, initramfs
    started = time.monotonic()
    unpacked = cache / f"arm64.{os.getpid()}.partial"  # runs may overlap
    shutil.rmtree(unpacked, ignore_errors=True)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run(["mmdebstrap", "--quiet", "--variant=extract", "--arch=arm64",
         "--include=" + ",".join(PACKAGES),
         "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
         f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
         f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
         "--format=directory", SUITE, str(unpacked)])
    archive = Cpio()
    for name in ("dev", "usr", "usr/bin", "usr/lib", "usr/lib/aarch64-linux-gnu", "hearth"):
        archive.add(name, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("lib", stat.S_IFLNK | 0o777, b"usr/lib")
    archive.add("bin", stat.S_IFLNK | 0o777, b"usr/bin")
    archive.add(f"usr/bin/{PYTHON}", stat.S_IFREG | 0o755,
                (unpacked / "usr/bin" / PYTHON).read_bytes())
    archive.add("usr/bin/python3", stat.S_IFLNK | 0o777, PYTHON.encode())
    archive.add("usr/lib/ld-linux-aarch64.so.1", stat.S_IFLNK | 0o777,
                b"aarch64-linux-gnu/ld-linux-aarch64.so.1")  # the ELF interpreter's path
    for library in LIBRARIES:
        path = unpacked / "usr/lib/aarch64-linux-gnu" / library
        archive.add(f"usr/lib/aarch64-linux-gnu/{library}", stat.S_IFREG | 0o755,
                    path.resolve().read_bytes())
    archive.add_tree(unpacked / "usr/lib" / PYTHON, f"usr/lib/{PYTHON}")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(next((unpacked / "boot").glob("vmlinuz-*")), kernel)
    partial = initramfs.with_name(f"python.cpio.{os.getpid()}.partial")
    partial.write_bytes(archive.finish())
    partial.replace(initramfs)
    shutil.rmtree(unpacked)
    log(f"vm-test: unpacked Debian's arm64 kernel and python3-minimal in "
        f"{time.monotonic() - started:.0f} s")
    return kernel, initramfs


def image_files(golden: Path, work: Path) -> Path:
    """The initramfs's second archive: /init and the image's own extension and reference."""
    _, root_part = raspberry_pi_layout(golden)
    root = Ext4Partition(golden, root_part)
    archive = Cpio()
    archive.add("init", stat.S_IFREG | 0o755,
                Path(__file__).with_name("vm_guest_pid.py").read_bytes())
    archive.add("hearth/_cpid.abi3.so", stat.S_IFREG | 0o755, root.read(EXTENSION))
    archive.add("hearth/pid_ref.py", stat.S_IFREG | 0o644, root.read(REFERENCE))
    path = work / "hearth.cpio"
    path.write_bytes(archive.finish())
    return path


def boot_arm64(golden: Path, cache: Path, work: Path, timeout_s: float,
               log) -> list[tuple[str, bool]]:
    """Boot the aarch64 VM; returns (check line, passed) as they were printed."""
    kernel, python = python_and_kernel(cache, log)
    initramfs = work / "arm64-initramfs.cpio"
    initramfs.write_bytes(python.read_bytes() + image_files(golden, work).read_bytes())
    command = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-m", "512",
               "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initramfs),
               "-append", "console=ttyAMA0 panic=-1 quiet"]
    try:
        output = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, errors="replace", timeout=timeout_s).stdout
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") if isinstance(
            error.stdout, bytes) else (error.stdout or "")
        log(f"vm-test: the aarch64 VM did not finish in {timeout_s:.0f} s")
    results = []
    for line in output.splitlines():
        check = CHECK_LINE.search(line)
        if check and check.group(0).endswith(("PASS", "FAIL")):
            log(check.group(0))
            results.append((check.group(0), check.group(0).endswith("PASS")))
    if not results:
        log("vm-test: the aarch64 VM printed no check; its console's last lines:\n"
            + "\n".join(output.splitlines()[-30:]))
    return results
