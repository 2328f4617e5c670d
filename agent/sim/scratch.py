"""Where simulated sysfs trees live: in RAM (tmpfs) when the machine has it.

A truncating write to a small file on ext4 costs milliseconds (auto_da_alloc flushes on
replace), on tmpfs microseconds; a simulated board rewrites a dozen files every period.
"""

import tempfile
from pathlib import Path

RAM_DIRECTORY = Path("/dev/shm")


def scratch_directory(prefix: str) -> tempfile.TemporaryDirectory:
    base = RAM_DIRECTORY if RAM_DIRECTORY.is_dir() else None
    return tempfile.TemporaryDirectory(prefix=prefix, dir=base)
