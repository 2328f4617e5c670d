"""autoboot.txt read and rewritten as the Raspberry Pi firmware reads it (docs/updates.md): the
file round-trips byte for byte, the commit swaps exactly the two boot partitions, a damaged file
is refused with the file, key, value and what was expected, and the commit is one write of one
sector at offset 0 followed by an fsync."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.update import autoboot
from agent.update.autoboot import AutobootError

CONTRACT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"

endings = st.sampled_from(["\n", "\r\n"])
comments = st.builds(lambda text: "#" + text, st.text(
    st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
other_keys = st.builds(lambda key, value: f"{key}={value}",
                       st.sampled_from(["boot_addr", "tryboot_a_b", "arm_64bit", "x_future_key"]),
                       st.sampled_from(["0", "1", "0x1000", "on"]))
partitions = st.integers(1, autoboot.MAX_PARTITION)


@st.composite
def autoboot_files(draw) -> tuple[str, int, int]:
    """An autoboot.txt the firmware accepts: comments, unknown keys and other filter sections
    around the two boot_partition lines (sometimes repeated: the last one counts)."""

    def filler():
        return draw(st.lists(st.one_of(comments, other_keys, st.just("")), max_size=3))

    committed, tryboot = draw(partitions), draw(partitions)
    lines = filler()
    for section, partition in (("all", committed), ("tryboot", tryboot)):
        lines.append(f"[{section}]")
        lines += filler()
        if draw(st.booleans()):
            lines.append(f"boot_partition={draw(partitions)}")
        lines.append(f"boot_partition={partition}")
        lines += filler()
        if draw(st.booleans()):
            lines += [f"[{draw(st.sampled_from(['pi4', 'cm4', 'none']))}]", *filler()]
    text = "".join(line + draw(endings) for line in lines)
    return text, committed, tryboot


def test_the_contracts_file_names_slot_a_committed_and_slot_b_for_a_trial():
    parsed = autoboot.parse(CONTRACT)
    assert (parsed.committed_partition, parsed.tryboot_partition) == (2, 3)
    assert parsed.tryboot_a_b
    committed = parsed.committed_to_tryboot()
    assert committed.text() == CONTRACT.replace("=2", "=X").replace("=3", "=2").replace("=X", "=3")


@settings(max_examples=300, deadline=None)
@given(autoboot_files())
def test_a_file_round_trips_byte_for_byte(case):
    text, committed, tryboot = case
    parsed = autoboot.parse(text)
    assert parsed.text() == text
    assert (parsed.committed_partition, parsed.tryboot_partition) == (committed, tryboot)


@settings(max_examples=300, deadline=None)
@given(autoboot_files())
def test_the_commit_swaps_exactly_the_partitions_the_firmware_obeys(case):
    text, committed, tryboot = case
    parsed = autoboot.parse(text)
    after = autoboot.parse(parsed.committed_to_tryboot().text())
    assert (after.committed_partition, after.tryboot_partition) == (tryboot, committed)
    changed = [(old.text, new.text) for old, new in zip(parsed.lines, after.lines) if old != new]
    assert len(after.lines) == len(parsed.lines)
    assert len(changed) <= 2
    assert all(old.startswith("boot_partition=") for old, _ in changed)
    assert autoboot.parse(after.committed_to_tryboot().text()).text() == text


@pytest.mark.parametrize("text, names", [
    ("[all]\nboot_partition=two\n[tryboot]\nboot_partition=3\n", ["boot_partition='two'",
                                                                   "[all]", "1 to 63"]),
    ("[all]\nboot_partition=2\n[tryboot]\nboot_partition=0\n", ["[tryboot]", "'0'", "1 to 63"]),
    ("[all]\nboot_partition=2\n[tryboot]\nboot_partition=64\n", ["'64'"]),
    ("[all]\nboot_partition=2\nthis line is garbage\n", ["line 3", "'this line is garbage'",
                                                          "expected key=value"]),
    ("[all]\nboot_partition=2\n[pi4]\nboot_partition=3\n", ["[pi4]", "expected it only in"]),
])
def test_a_damaged_file_is_refused_naming_the_key_the_value_and_what_was_expected(
        tmp_path, text, names):
    path = tmp_path / "autoboot.txt"
    path.write_text(text)
    with pytest.raises(AutobootError) as error:
        autoboot.read(path)
    assert str(error.value).startswith(f"{path}: ")
    for name in names:
        assert name in str(error.value)


def test_a_file_without_a_committed_slot_is_refused_when_asked_for_it(tmp_path):
    parsed = autoboot.parse("[all]\ntryboot_a_b=1\n[tryboot]\nboot_partition=3\n", "x.txt")
    with pytest.raises(AutobootError, match=r"x.txt: no boot_partition= in \[all\]"):
        parsed.committed_partition  # noqa: B018 - the property raises
    with pytest.raises(AutobootError, match=r"\[all\] has no boot_partition= to change to 2"):
        parsed.with_partitions(2, 3)


def test_a_file_of_a_sector_or_more_or_not_ascii_is_refused(tmp_path):
    path = tmp_path / "autoboot.txt"
    path.write_text(CONTRACT + "#" * (512 - len(CONTRACT)))
    with pytest.raises(AutobootError, match="512 bytes; expected under 512"):
        autoboot.read(path)
    path.write_bytes(CONTRACT.encode() + "# é\n".encode())
    with pytest.raises(AutobootError, match="not ASCII"):
        autoboot.read(path)


class RecordingOs:
    """The real os calls, recorded, so a test can count writes and fsyncs."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        call = getattr(os, name)

        def recorded(*args):
            self.calls.append((name, args[1:]))
            return call(*args)
        return recorded


def test_the_commit_is_one_write_at_offset_zero_and_an_fsync_of_the_same_file(tmp_path):
    path = tmp_path / "autoboot.txt"
    path.write_text(CONTRACT)
    inode = path.stat().st_ino
    recording = RecordingOs()
    autoboot.rewrite_in_place(path, autoboot.read(path).committed_to_tryboot(), recording)
    names = [name for name, _ in recording.calls]
    assert names == ["open", "pwrite", "fsync", "close"]
    assert recording.calls[0][1] == (os.O_WRONLY,)  # no O_TRUNC: the size never changes
    assert recording.calls[1][1][1] == 0
    assert path.stat().st_ino == inode and path.stat().st_size == len(CONTRACT)
    after = autoboot.read(path)
    assert (after.committed_partition, after.tryboot_partition) == (3, 2)


def test_a_shorter_rewrite_is_padded_with_blank_lines_and_a_longer_one_refused(tmp_path):
    path = tmp_path / "autoboot.txt"
    path.write_text("[all]\nboot_partition = 12\n[tryboot]\nboot_partition=3\n")
    autoboot.rewrite_in_place(path, autoboot.read(path).with_partitions(2, 3))
    assert path.read_text() == "[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n\n\n\n"
    before = path.read_bytes()
    with pytest.raises(AutobootError, match="cannot grow it"):
        autoboot.rewrite_in_place(path, autoboot.read(path).with_partitions(12, 13))
    assert path.read_bytes() == before
