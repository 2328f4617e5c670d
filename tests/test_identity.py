"""Identity at boot (DESIGN.md §6): each source on its own, their precedence, and every way the
answer can be unusable (conflict, broken source, nothing known) leaving the board unnamed."""

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from agent.identity import Identity, resolve

SLOT_GPIOS = (5, 6, 13, 16, 19, 26)
SERIAL = "10000000a1b2c3d4"
TABLE = """
site = "maple-school"

[[board]]
module = "m1"
board = "b07"
slot = 7
serial = "10000000A1B2C3D4"

[[board]]
module = "m1"
board = "b12"
slot = 12
serial = "10000000deadbeef"
"""


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "boot/firmware").mkdir(parents=True)
    (tmp_path / "etc/hearth").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    return tmp_path


@pytest.fixture
def pins():
    factory = MockFactory()
    yield factory
    factory.close()


def write_boot_file(root: Path, site="maple-school", module="m1", board="b07") -> None:
    (root / "boot/firmware/hearth-identity.toml").write_text(
        f'[identity]\nsite = "{site}"\nmodule = "{module}"\nboard = "{board}"\n')


def write_table(root: Path, text: str = TABLE) -> None:
    (root / "etc/hearth/identity-table.toml").write_text(text)


def write_cpuinfo(root: Path, serial: str = SERIAL) -> None:
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nRevision\t: d03140\n"
        f"Serial\t\t: {serial}\nModel\t\t: Raspberry Pi Compute Module 4 Rev 1.0\n")


class StrappedPin(MockPin):
    """A pin tied to ground by a backplane strap: the pull-up cannot raise it (the way
    gpiozero's MockChargingPin imitates its circuit)."""

    def _set_pull(self, value):
        super()._set_pull(value)
        self.drive_low()


def strap(pins: MockFactory, slot: int) -> None:
    """Fit the straps for `slot`: a fitted strap grounds its pin, which reads as a 1."""
    for bit, gpio in enumerate(SLOT_GPIOS):
        if slot >> bit & 1:
            pins.pin(gpio, pin_class=StrappedPin)


def test_boot_file_alone_names_the_board(root, pins):
    write_boot_file(root)
    result = resolve(root, pins, SLOT_GPIOS)
    assert result.ok and result.identity == Identity("maple-school", "m1", "b07")
    assert "boot file" in result.message


def test_slot_straps_name_the_board_through_the_table(root, pins):
    write_table(root)
    strap(pins, 12)
    result = resolve(root, pins, SLOT_GPIOS)
    assert result.identity == Identity("maple-school", "m1", "b12")
    assert result.sources[1].detail == "slot 12"


def test_serial_number_from_cpuinfo_names_the_board(root, pins):
    write_table(root)
    write_cpuinfo(root)
    result = resolve(root, pins, SLOT_GPIOS)
    assert result.identity == Identity("maple-school", "m1", "b07")
    assert "serial number" in result.message


def test_serial_number_from_the_devicetree_when_cpuinfo_has_none(root, pins):
    write_table(root)
    node = root / "sys/firmware/devicetree/base/serial-number"
    node.parent.mkdir(parents=True)
    node.write_bytes(b"10000000deadbeef\x00")
    assert resolve(root, pins, SLOT_GPIOS).identity == Identity("maple-school", "m1", "b12")


def test_sources_that_agree_give_the_identity(root, pins):
    write_boot_file(root)
    write_table(root)
    write_cpuinfo(root)
    strap(pins, 7)
    result = resolve(root, pins, SLOT_GPIOS)
    assert result.identity == Identity("maple-school", "m1", "b07")
    assert [source.status for source in result.sources] == ["found"] * 3


@pytest.mark.parametrize("slot, serial, disagreeing", [
    (12, SERIAL, "slot straps"), (0, "10000000deadbeef", "serial number")])
def test_boot_file_disagreeing_with_another_source_is_a_conflict(root, pins, slot, serial,
                                                                 disagreeing):
    write_boot_file(root)
    write_table(root)
    write_cpuinfo(root, serial)
    strap(pins, slot)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok and result.identity is None
    assert "CONFLICT" in result.message and disagreeing in result.message
    assert "maple-school/m1/b07" in result.message and "maple-school/m1/b12" in result.message
    assert "SAFE" in result.message


def test_straps_disagreeing_with_serial_is_a_conflict(root, pins):
    write_table(root)
    write_cpuinfo(root, "10000000deadbeef")
    strap(pins, 7)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok and "CONFLICT" in result.message


def test_no_source_leaves_the_board_unnamed_and_says_how_to_fix_it(root, pins):
    write_cpuinfo(root)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok
    assert "no source names this board" in result.message
    assert "scripts/flash --identity" in result.message
    assert [source.status for source in result.sources] == ["absent"] * 3


def test_unknown_serial_and_unstrapped_slot_are_no_answer_not_a_fault(root, pins):
    write_boot_file(root)
    write_table(root)
    write_cpuinfo(root, "100000000000ffff")
    result = resolve(root, pins, SLOT_GPIOS)
    assert result.identity == Identity("maple-school", "m1", "b07")
    assert result.sources[1].detail.startswith("no strap fitted")


@pytest.mark.parametrize("boot_text, expected", [
    ('[identity]\nsite = "Maple School"\nmodule = "m1"\nboard = "b07"\n', 'identity.site = "Maple School"'),
    ('[identity]\nsite = "maple"\nmodule = "m1"\n', "identity.board is missing"),
    ('[identity]\nsite = "maple"\nmodule = "m1"\nboard = "b1"\nslot = 3\n', "identity.slot = 3: expected a key of an identity"),
    ("[identity\n", "hearth-identity.toml"),
])
def test_a_broken_boot_file_is_reported_and_not_overridden(root, pins, boot_text, expected):
    (root / "boot/firmware/hearth-identity.toml").write_text(boot_text)
    write_table(root)
    write_cpuinfo(root)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok
    assert "broken" in result.message and expected in result.message


def test_an_ambiguous_table_is_reported(root, pins):
    write_table(root, TABLE.replace("slot = 12", "slot = 7"))
    strap(pins, 7)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok and "matches 2 boards" in result.message


def test_a_table_entry_with_a_bad_serial_names_entry_and_value(root, pins):
    write_table(root, TABLE.replace('"10000000deadbeef"', '"not-hex"'))
    write_cpuinfo(root)
    result = resolve(root, pins, SLOT_GPIOS)
    assert not result.ok and 'board[2].serial = "not-hex"' in result.message


def test_straps_are_read_through_the_factory_passed_in_and_released(root, pins):
    write_table(root)
    strap(pins, 7)
    resolve(root, pins, SLOT_GPIOS)
    # The pins were released: the same GPIOs can be claimed again by the agent's own devices.
    from gpiozero import InputDevice
    for gpio in SLOT_GPIOS:
        InputDevice(gpio, pin_factory=pins).close()


def test_partition_1s_file_comes_first_and_the_boot_partitions_still_counts(root, pins):
    """An A/B card keeps its identity on partition 1 (/boot/autoboot), which updates never
    rewrite; a single-slot card, or one flashed before, has it on the boot partition."""
    write_boot_file(root, board="b07")
    assert resolve(root, pins).identity == Identity("maple-school", "m1", "b07")
    (root / "boot/autoboot").mkdir()
    (root / "boot/autoboot/hearth-identity.toml").write_text(
        '[identity]\nsite = "maple-school"\nmodule = "m2"\nboard = "b08"\n')
    resolution = resolve(root, pins)
    assert resolution.identity == Identity("maple-school", "m2", "b08")
    assert "boot file /boot/autoboot/hearth-identity.toml" in resolution.message
