"""A sysfs (or cgroupfs) attribute file as a polling daemon uses it: kept open and re-read with
pread at offset 0, written only when its value changes.

The kernel regenerates an attribute's text on every read at offset 0, so one open file serves
every poll: at 10 Hz, opening the file again each time would cost more than the read.
Every write to cpufreq or cgroup files costs a syscall and, for cpufreq, a firmware mailbox
call, so the last written value is remembered and an unchanged one is not written again.
"""

import errno
import os
import weakref
from pathlib import Path

READ_SIZE = 4096
"""One page: all a sysfs attribute shows; a longer file (cgroupfs) is read on in pages."""
VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ESTALE})
"""Reads of an open attribute whose device went away fail so; the path is opened again."""


def read_attribute(path: str) -> bytes:
    """Read a file that is read seldom, opening it each time (a hot-plugged device's files
    come and go)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, READ_SIZE)
    finally:
        os.close(fd)


class SysfsAttribute:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._path = os.fspath(path)
        self._fd: int | None = None
        self._close_fd: weakref.finalize | None = None
        self._last_written: str | None = None
        self.writes = 0

    def read(self) -> str:
        return self.read_bytes().decode().strip()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_bytes(self) -> bytes:
        """The attribute's text now. FileNotFoundError if it does not exist (its device is
        gone or was never there), another OSError if the read fails."""
        if self._fd is None:
            self._open()
        try:
            data = os.pread(self._fd, READ_SIZE, 0)
            if 0 < len(data) < READ_SIZE:
                return data  # the usual case: the whole attribute in one read
            return self._rest(data)
        except OSError as error:
            if error.errno not in VANISHED_ERRNOS:
                raise
        self.close()
        self._open()
        return self._rest(os.pread(self._fd, READ_SIZE, 0))

    def _open(self) -> None:
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._fd = fd
        self._close_fd = weakref.finalize(self, os.close, fd)

    def _rest(self, data: bytes) -> bytes:
        """After a first read that came back empty or a whole page long."""
        fd = self._fd
        if not data:
            # Sysfs fails the read of a removed attribute (ENODEV). A plain file (the
            # simulator's tree) removed under the open file is emptied first, and then shows
            # it in its link count.
            if os.fstat(fd).st_nlink == 0:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._path)
            return data
        while len(data) % READ_SIZE == 0:
            more = os.pread(fd, READ_SIZE, len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        """Close the open file; the next read opens the path again."""
        if self._close_fd is not None:
            self._close_fd()
        self._fd = None
        self._close_fd = None

    def write(self, value: str) -> bool:
        """Write `value` unless it is what we last wrote; True if the file was written."""
        if value == self._last_written:
            return False
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, (value + "\n").encode())
        finally:
            os.close(fd)
        self._last_written = value
        self.writes += 1
        return True
