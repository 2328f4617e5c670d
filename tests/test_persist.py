"""Atomic state files: round trip, damaged files read as defaults with a reason, and a power cut
at every step of a write leaves the old or the new file, never garbage."""

import json
import os
from pathlib import Path

import pytest

from agent.persist import StateStore, checksum

OLD = {"power": {"kp": 0.3, "ki": 3.0}, "count": 1}
NEW = {"power": {"kp": 0.5, "ki": 2.5}, "count": 2, "note": "ünïcode"}
DEFAULTS = {"power": None, "count": 0}


def test_round_trip(tmp_path):
    store = StateStore(tmp_path)
    store.write("gains.json", 1, NEW)
    result = store.read("gains.json", 1, DEFAULTS)
    assert result.ok and result.problem is None
    assert result.payload == NEW
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed away"


def test_defaults_are_a_copy(tmp_path):
    result = StateStore(tmp_path).read("gains.json", 1, DEFAULTS)
    result.payload["count"] = 99
    assert DEFAULTS["count"] == 0


def _damage_cases():
    good = {"format": "hearth-state", "version": 1, "sha256": checksum(OLD), "payload": OLD}
    text = json.dumps(good)
    return {
        "missing": (None, "missing"),
        "empty": (b"", "corrupt or truncated"),
        "truncated": (text[: len(text) // 2].encode(), "corrupt or truncated"),
        "not-json": (b"\x00\xff garbage", "corrupt or truncated"),
        "not-utf8": (b'{"a": "\xff"}', "corrupt or truncated"),
        "array": (b"[1, 2]", "not a Hearth state file"),
        "foreign": (json.dumps({"kp": 1}).encode(), "not a Hearth state file"),
        "wrong-version": (json.dumps({**good, "version": 2}).encode(), "schema version 2"),
        "no-payload": (json.dumps({**good, "payload": 3}).encode(), "no payload object"),
        "edited": (json.dumps({**good, "payload": {**OLD, "count": 5}}).encode(),
                   "checksum mismatch"),
        "nan": (text.replace('"count": 1', '"count": NaN').encode(), "cannot be checked"),
    }


@pytest.mark.parametrize("case", sorted(_damage_cases()))
def test_damaged_or_missing_file_reads_as_defaults_with_a_reason(tmp_path, case):
    content, reason = _damage_cases()[case]
    if content is not None:
        (tmp_path / "gains.json").write_bytes(content)
    result = StateStore(tmp_path).read("gains.json", 1, DEFAULTS)
    assert result.payload == DEFAULTS
    assert not result.ok
    assert reason in result.problem and "gains.json" in result.problem


def test_unreadable_file_reads_as_defaults(tmp_path):
    (tmp_path / "gains.json").mkdir()  # reading a directory fails with an OSError
    result = StateStore(tmp_path).read("gains.json", 1, DEFAULTS)
    assert result.payload == DEFAULTS and "cannot be read" in result.problem


def test_names_must_be_plain_file_names(tmp_path):
    for name in ("../etc/passwd", "", ".hidden"):
        with pytest.raises(ValueError):
            StateStore(tmp_path).path(name)


class PowerCut(Exception):
    """The machine lost power here."""


STEPS = ("open", "write", "fsync", "replace", "directory-fsync")
"""Where a write can be cut: before the temp file is opened; half-way through writing it;
after writing, before its fsync; after the fsync, before the rename; after the rename, before
the directory's fsync. `None` (no cut) is the completed write."""


class PowerCutOs:
    """`os` as the store calls it, plus a model of what a power cut loses.

    It records which files were fsynced and whether the rename was made durable by a
    directory fsync. After the cut, `lose_volatile` applies what the kernel may lose: file
    data never fsynced is gone (ext4 delayed allocation leaves a zero-length file), and a
    rename whose directory was not fsynced may or may not have reached the disk.
    `fsync_works=False` stands for a writer that forgot its fsyncs, to show this model
    catches one.
    """

    def __init__(self, cut_before: str | None, fsync_works: bool = True):
        self.cut_before = cut_before
        self.fsync_works = fsync_works
        self.paths: dict[int, Path] = {}
        self.synced: set[Path] = set()
        self.written: set[Path] = set()
        self.renamed: tuple[Path, Path, bytes | None] | None = None
        self.rename_durable = False

    def _cut(self, step: str) -> None:
        if self.cut_before == step:
            raise PowerCut(step)

    def open(self, path, flags, mode=0o777):
        if Path(path).is_dir():
            self._cut("directory-fsync")
        else:
            self._cut("open")
        fd = os.open(path, flags, mode)
        self.paths[fd] = Path(path)
        return fd

    def write(self, fd, data):
        self.written.add(self.paths[fd])
        if self.cut_before == "write":
            os.write(fd, bytes(data[: len(data) // 2]))
            raise PowerCut("write")
        return os.write(fd, data)

    def fsync(self, fd):
        if not self.paths[fd].is_dir():
            self._cut("fsync")
        if not self.fsync_works:
            return
        os.fsync(fd)
        if self.paths[fd].is_dir():
            self.rename_durable = True
        else:
            self.synced.add(self.paths[fd])

    def close(self, fd):
        os.close(fd)

    def replace(self, source, target):
        self._cut("replace")
        target = Path(target)
        old = target.read_bytes() if target.exists() else None
        os.replace(source, target)
        self.renamed = (Path(source), target, old)

    def lose_volatile(self, rename_reached_disk: bool) -> None:
        moved = {}
        if self.renamed is not None:
            source, target, old = self.renamed
            moved[source] = target
            if not self.rename_durable and not rename_reached_disk:
                os.replace(target, source)
                moved = {}
                if old is not None:
                    target.write_bytes(old)
        for path in self.written - self.synced:
            where = moved.get(path, path)
            if where.exists():
                where.write_bytes(b"")


def read_after_cut(directory: Path, cut_before: str | None, rename_reached_disk: bool,
                   fsync_works: bool = True, first_write: bool = False):
    """Write NEW over OLD (or over nothing), cut the power at `cut_before`, read it back."""
    if not first_write:
        StateStore(directory).write("gains.json", 1, OLD)
    fake_os = PowerCutOs(cut_before, fsync_works)
    try:
        StateStore(directory, os_calls=fake_os).write("gains.json", 1, NEW)
    except PowerCut:
        pass
    fake_os.lose_volatile(rename_reached_disk)
    return StateStore(directory).read("gains.json", 1, DEFAULTS)


@pytest.mark.parametrize("rename_reached_disk", [True, False], ids=["rename-kept", "rename-lost"])
@pytest.mark.parametrize("cut_before", STEPS + (None,))
def test_power_cut_at_every_step_leaves_old_or_new(tmp_path, cut_before, rename_reached_disk):
    result = read_after_cut(tmp_path, cut_before, rename_reached_disk)
    assert result.ok, result.problem
    assert result.payload in (OLD, NEW)
    if cut_before in ("open", "write", "fsync", "replace"):
        assert result.payload == OLD, "the target is untouched until the rename"
    if cut_before is None:
        assert result.payload == NEW, "a completed write is durable"
    StateStore(tmp_path).write("gains.json", 1, NEW)
    assert StateStore(tmp_path).read("gains.json", 1, DEFAULTS).payload == NEW, \
        "the next write succeeds over a stale temporary file"
    assert [p.name for p in tmp_path.iterdir()] == ["gains.json"]


@pytest.mark.parametrize("rename_reached_disk", [True, False], ids=["rename-kept", "rename-lost"])
@pytest.mark.parametrize("cut_before", STEPS)
def test_power_cut_during_the_first_write_leaves_nothing_or_new(tmp_path, cut_before,
                                                                 rename_reached_disk):
    result = read_after_cut(tmp_path, cut_before, rename_reached_disk, first_write=True)
    assert result.payload in (DEFAULTS, NEW)
    assert result.ok or "missing" in result.problem


def test_the_power_cut_model_catches_a_writer_without_fsync(tmp_path):
    """Without fsync before the rename, a cut after the rename leaves an empty file: the model
    must see it, or the test above proves nothing."""
    result = read_after_cut(tmp_path, "directory-fsync", rename_reached_disk=True,
                            fsync_works=False)
    assert not result.ok and "corrupt or truncated" in result.problem


def test_a_damaged_file_is_kept_aside_before_it_is_overwritten(tmp_path):
    """The bytes a technician needs to see what went wrong outlive the rewrite that repairs
    the file, under a name that says when; a second copy in the same second gets its own."""
    store = StateStore(tmp_path)
    (tmp_path / "latched.json").write_bytes(b'{"format": "hearth-state", "payl')
    first = store.keep_aside("latched.json", 1_700_000_000.0)
    second = store.keep_aside("latched.json", 1_700_000_000.0)
    assert first.name == "latched.json.damaged-20231114T221320Z"
    assert second.name == "latched.json.damaged-20231114T221320Z-2"
    store.write("latched.json", 1, {"faults": {}})
    assert first.read_bytes() == second.read_bytes() == b'{"format": "hearth-state", "payl'
    assert store.read("latched.json", 1, {}).ok, "the original is left for the caller to rewrite"


def test_keeping_aside_a_file_that_cannot_be_read_raises(tmp_path):
    (tmp_path / "latched.json").mkdir()
    with pytest.raises(OSError):
        StateStore(tmp_path).keep_aside("latched.json", 0.0)
