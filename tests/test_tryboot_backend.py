"""RAUC's custom bootloader backend for tryboot (docs/updates.md), run as RAUC runs it: `hearth
tryboot-backend <request>` in a fresh process, on a fake partition 1 (autoboot.txt in a
directory), fake firmware facts (the device tree's big-endian u32s) and a state directory
standing in for the data partition."""

import subprocess
import sys
from pathlib import Path

import pytest

from agent.persist import StateStore
from agent.update import autoboot
from agent.update.tryboot_backend import STATE_FILE, BackendError, TrybootBackend, read_boot_facts

CONTRACT = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


class Board:
    """Partition 1, the firmware's facts and the data partition of one board, in tmp_path."""

    def __init__(self, root: Path):
        self.autoboot = root / "autoboot" / "autoboot.txt"
        self.facts = root / "bootloader"
        self.state = root / "data" / "rauc"
        self.settings = root / "update.toml"
        self.autoboot.parent.mkdir()
        self.facts.mkdir()
        self.autoboot.write_text(CONTRACT)
        self.settings.write_text(f'bootloader_dir = "{self.facts}"\nhealth_window_s = 60\n')
        self.boot(2, tryboot=False)

    def boot(self, partition: int, tryboot: bool) -> None:
        """What the firmware leaves in chosen/bootloader after booting `partition`."""
        (self.facts / "partition").write_bytes(partition.to_bytes(4, "big"))
        (self.facts / "tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))

    def firmware_boot(self, tryboot_flag: bool) -> int:
        """Boot as the firmware does: [tryboot]'s partition once when flagged, else [all]'s."""
        file = autoboot.read(self.autoboot)
        partition = file.tryboot_partition if tryboot_flag else file.committed_partition
        self.boot(partition, tryboot_flag)
        return partition

    def rauc(self, *request: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agent", "tryboot-backend", "--autoboot", str(self.autoboot),
             "--state-dir", str(self.state), "--settings", str(self.settings), *request],
            capture_output=True, text=True, timeout=60)

    def answer(self, *request: str) -> str:
        result = self.rauc(*request)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture
def board(tmp_path):
    return Board(tmp_path)


def test_an_update_tried_and_found_good_is_committed_by_the_one_sector_rewrite(board):
    assert board.answer("get-current") == "A"
    assert board.answer("get-primary") == "A"
    assert board.answer("get-state", "B") == "good"
    # rauc install: the target slot marked bad while it is written, then made primary
    assert board.answer("set-state", "B", "bad") == ""
    assert board.answer("get-state", "B") == "bad"
    assert board.answer("set-primary", "B") == ""
    assert board.answer("get-primary") == "B"  # the next reboot, a tryboot, boots B
    assert board.answer("get-state", "B") == "good"
    assert autoboot.read(board.autoboot).committed_partition == 2  # nothing committed yet
    assert board.firmware_boot(tryboot_flag=True) == 3
    assert board.answer("get-current") == "B"
    assert board.answer("get-primary") == "A"  # the trial runs: a plain reboot goes back to A
    assert board.autoboot.read_text() == CONTRACT
    assert board.answer("set-state", "B", "good") == ""  # rauc status mark-good booted
    assert board.autoboot.read_text() == CONTRACT.replace("=2", "=X").replace(
        "=3", "=2").replace("=X", "=3")
    assert board.answer("get-primary") == "B"
    assert board.firmware_boot(tryboot_flag=False) == 3  # the next plain reboot stays on B
    assert board.answer("get-current") == "B"
    assert (board.answer("get-state", "A"), board.answer("get-state", "B")) == ("good", "good")


def test_a_trial_marked_bad_is_not_the_primary_and_the_old_slot_boots_again(board):
    board.answer("set-state", "B", "bad")
    board.answer("set-primary", "B")
    board.firmware_boot(tryboot_flag=True)
    assert board.answer("set-state", "B", "bad") == ""  # the health gate failed
    assert board.answer("get-primary") == "A"
    assert board.answer("get-state", "B") == "bad"
    assert board.autoboot.read_text() == CONTRACT
    assert board.firmware_boot(tryboot_flag=False) == 2
    assert board.answer("get-current") == "A"


def test_a_power_cut_during_the_trial_boots_the_committed_slot_and_the_trial_stays_armed(board):
    board.answer("set-state", "B", "bad")
    board.answer("set-primary", "B")
    board.firmware_boot(tryboot_flag=True)
    assert board.firmware_boot(tryboot_flag=False) == 2  # power back: no tryboot flag
    assert board.answer("get-current") == "A"
    assert board.answer("get-primary") == "B"  # armed until the updater marks it bad
    board.answer("set-state", "B", "bad")  # rauc status mark-bad other
    assert board.answer("get-primary") == "A"


def test_set_primary_of_the_committed_slot_disarms_a_trial(board):
    board.answer("set-primary", "B")
    assert board.answer("set-primary", "A") == ""
    assert board.answer("get-primary") == "A"
    assert board.autoboot.read_text() == CONTRACT


def test_mark_good_of_the_other_slot_commits_nothing(board):
    board.answer("set-state", "B", "bad")
    assert board.answer("set-state", "B", "good") == ""  # rauc status mark-good other
    assert board.answer("get-state", "B") == "good"
    assert board.autoboot.read_text() == CONTRACT


def test_a_second_install_after_a_commit_arms_the_old_slot(board):
    board.answer("set-primary", "B")
    board.firmware_boot(tryboot_flag=True)
    board.answer("set-state", "B", "good")
    board.firmware_boot(tryboot_flag=False)
    board.answer("set-state", "A", "bad")
    board.answer("set-primary", "A")
    assert board.answer("get-primary") == "A"
    assert board.firmware_boot(tryboot_flag=True) == 2
    board.answer("set-state", "A", "good")
    assert board.autoboot.read_text() == CONTRACT


@pytest.mark.parametrize("request_words, reason", [
    (["set-state", "C", "good"], "bootname 'C' is not a slot; expected one of A, B"),
    (["set-state", "B", "fine"], "state 'fine' for B; expected good or bad"),
    (["get-state"], "unknown request 'get-state'"),
    (["reboot-now"], "unknown request 'reboot-now'"),
])
def test_a_request_it_cannot_represent_fails_with_a_reason_and_changes_nothing(
        board, request_words, reason):
    result = board.rauc(*request_words)
    assert result.returncode == 1 and result.stdout == ""
    assert reason in result.stderr
    assert board.autoboot.read_text() == CONTRACT
    assert not (board.state / STATE_FILE).exists()


def test_a_damaged_autoboot_txt_fails_every_request_naming_the_file(board):
    board.autoboot.write_text("[all]\nboot_partition=seven\n")
    result = board.rauc("get-primary")
    assert result.returncode == 1
    assert f"{board.autoboot}: [all] boot_partition='seven'; expected a partition number" in \
        result.stderr


def test_no_trial_is_armed_where_the_firmware_would_not_try_it(board):
    board.autoboot.write_text(CONTRACT.replace("tryboot_a_b=1", "tryboot_a_b=0"))
    result = board.rauc("set-primary", "B")
    assert result.returncode == 1 and "[all] has no tryboot_a_b=1" in result.stderr
    assert not (board.state / STATE_FILE).exists()


def test_boot_facts_that_are_not_the_firmwares_u32_are_refused(board):
    (board.facts / "partition").write_text("3\n")
    result = board.rauc("get-current")
    assert result.returncode == 1
    assert "holds 2 bytes" in result.stderr and "4-byte big-endian" in result.stderr
    board.boot(7, tryboot=False)
    result = board.rauc("get-current")
    assert "partition 7, which is no slot's boot partition (A: 2, B: 3)" in result.stderr
    (board.facts / "tryboot").unlink()
    with pytest.raises(BackendError, match="cannot read the firmware's"):
        read_boot_facts(board.facts)


def test_a_damaged_state_file_fails_closed_kept_aside_with_a_log_line(board, capsys):
    board.answer("set-primary", "B")
    path = board.state / STATE_FILE
    path.write_text(path.read_text().replace('"B"', '"A"'))  # checksum no longer matches
    result = board.rauc("get-state", "B")
    assert result.stdout.strip() == "bad" and result.returncode == 0
    assert "checksum mismatch" in result.stderr and "kept as" in result.stderr
    assert len(list(board.state.glob(f"{STATE_FILE}.damaged-*"))) == 1
    again = board.rauc("get-primary")
    assert again.stdout.strip() == "A" and again.stderr == ""  # no trial armed, logged once
    assert board.answer("get-state", "A") == "good"  # the committed slot
    assert len(list(board.state.glob(f"{STATE_FILE}.damaged-*"))) == 1


def test_a_state_file_naming_no_slot_fails_closed_too(tmp_path):
    board = Board(tmp_path)
    StateStore(board.state).write(STATE_FILE, 1, {"bad": ["Z"], "trial": None})
    log = []

    class Lines:
        def write(self, text):
            log.append(text)

    backend = TrybootBackend(board.autoboot, lambda: read_boot_facts(board.facts),
                             StateStore(board.state), log=Lines())
    assert backend.get_state("B") == "bad"
    assert "holds {'bad': ['Z'], 'trial': None}, not slot names" in "".join(log)
