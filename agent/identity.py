"""Who this board is (site, module, board), learned at boot so one golden image serves every board.

Sources, in order of precedence (DESIGN.md §6): the identity file that scripts/flash writes to the
card's first partition (autoboot.txt's on an A/B image, which no update rewrites), the carrier's
slot-ID straps read on GPIO, and the SoC serial number. The straps and the serial number only
give a number; the identity table that scripts/provision generates
(/etc/hearth/identity-table.toml) turns it into names. Every source that can answer is read, so a
disagreement is caught instead of silently won by the first source: a conflict, an unreadable
source or no identity at all leaves the board in SAFE, and `Resolution.message` tells the
technician what to fix.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.schema import Field
from agent.tables import ABSENT, TableCheck

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,31}"
NAME_RULE = "lower-case letters, digits, '-' or '_', at most 32, starting with a letter or digit"
IDENTITY_FILE = "/boot/autoboot/hearth-identity.toml"
"""Partition 1 of an A/B image, mounted by the boot-partition generator; an update rewrites
only the other slot's boot partition, so the file outlives every update."""
SINGLE_SLOT_IDENTITY_FILE = "/boot/firmware/hearth-identity.toml"
"""Where a single-slot image (and an A/B card flashed before the file moved) has it."""
IDENTITY_TABLE = "/etc/hearth/identity-table.toml"
CPUINFO = "/proc/cpuinfo"
DEVICETREE_SERIAL = "/sys/firmware/devicetree/base/serial-number"

FOUND = "found"
ABSENT = "absent"
INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class Identity:
    site: str
    module: str
    board: str

    def __str__(self) -> str:
        return f"{self.site}/{self.module}/{self.board}"


@dataclasses.dataclass(frozen=True)
class SourceResult:
    """What one source said: FOUND with an identity, ABSENT (nothing to say) or INVALID (broken)."""

    source: str
    status: str
    detail: str
    identity: Identity | None = None


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The outcome of asking every source; `identity` is None unless the answer is usable."""

    identity: Identity | None
    sources: tuple[SourceResult, ...]
    message: str

    @property
    def ok(self) -> bool:
        return self.identity is not None


IDENTITY_FIELDS = {
    "site": Field(str, "the site: " + NAME_RULE, pattern=NAME_PATTERN, example="maple-school"),
    "module": Field(str, "the module: " + NAME_RULE, pattern=NAME_PATTERN, example="m1"),
    "board": Field(str, "the board in its module: " + NAME_RULE, pattern=NAME_PATTERN,
                   example="b07"),
}
TABLE_ENTRY_FIELDS = {
    "module": IDENTITY_FIELDS["module"],
    "board": IDENTITY_FIELDS["board"],
    "serial": Field(str, "the SoC serial number, hexadecimal", default=None,
                    example="10000000a1b2c3d4"),
    "slot": Field(int, "the backplane slot its straps give", default=None, min=1, max=63),
}


@dataclasses.dataclass(frozen=True)
class TableEntry:
    identity: Identity
    serial: int | None
    slot: int | None


def read_identity(check: TableCheck, table: Any, file: str, key: str) -> Identity | None:
    """An Identity from a table of site, module and board, or None with every problem reported;
    key is the table's dotted path in file ("" when the names are not in a file's table)."""
    table = check.table(table, file, key, "a table with site, module and board")
    if table is None:
        return None
    values = check.fields(table, IDENTITY_FIELDS, file, f"{key}." if key else "",
                          "an identity")
    return None if None in values.values() else Identity(**values)


def identity_from_mapping(mapping: Any, where: str, key: str = "") -> Identity:
    """An Identity from site, module and board; raises ConfigValueError (a ValueError) naming
    every bad key, its value and the rule. where names the file or option it came from."""
    check = TableCheck()
    identity = read_identity(check, mapping, where, key)
    check.raise_problems("the identity")
    return identity


def parse_serial(text: str) -> int:
    """A Pi serial number as an integer, so '10000000abcd1234' and '00000000abcd1234' compare
    by value whatever the zero padding or case the source used."""
    return int(text.strip().strip("\x00").strip(), 16)


def load_table(path: Path) -> list[TableEntry]:
    """Read the identity table; raises ConfigError (ConfigFileError is an OSError,
    ConfigValueError a ValueError) naming every problem's entry, key and value."""
    check = TableCheck()
    file = str(path)
    document = check.read_toml(path)
    if document is None:
        check.raise_problems("the identity table")
    check.unknown_keys(document, ["site", "board"], file, "", "the identity table")
    site = check.value(IDENTITY_FIELDS["site"], document.get("site", ABSENT), file, "site")
    entries = []
    for at, board in check.tables(document.get("board", ABSENT), file, "board"):
        values = check.fields(board, TABLE_ENTRY_FIELDS, file, f"{at}.", "a [[board]]")
        serial = None
        if values["serial"] is not None:
            try:
                serial = parse_serial(values["serial"])
            except ValueError:
                check.report(file, f"{at}.serial", "a hexadecimal serial number like "
                             "'10000000a1b2c3d4'", value=values["serial"])
                continue
        if site is not None and None not in (values["module"], values["board"]):
            entries.append(TableEntry(Identity(site, values["module"], values["board"]), serial,
                                      values["slot"]))
    check.raise_problems("the identity table")
    return entries


def _one_line(error: ConfigError) -> str:
    """Every problem of a file on one line, for a source's detail."""
    return "; ".join(map(str, error.problems)) or str(error)


def from_boot_file(root: Path) -> SourceResult:
    for name in (IDENTITY_FILE, SINGLE_SLOT_IDENTITY_FILE):
        path = root / name.lstrip("/")
        if path.exists():
            break
    else:
        return SourceResult(f"boot file {IDENTITY_FILE}", ABSENT,
                            f"not present (nor {SINGLE_SLOT_IDENTITY_FILE})")
    source = f"boot file {name}"
    check = TableCheck()
    identity = None
    document = check.read_toml(path)
    if document is not None:
        check.unknown_keys(document, ["identity"], str(path), "", "the identity file")
        identity = read_identity(check, document.get("identity", ABSENT), str(path), "identity")
    if check.problems:
        return SourceResult(source, INVALID, "; ".join(map(str, check.problems)))
    return SourceResult(source, FOUND, "written at flash time", identity)


def read_slot_number(pin_factory: Any, slot_gpios: Sequence[int]) -> int:
    """The slot number strapped on the backplane: pins pulled up, a fitted strap pulls its pin
    to ground and reads as a 1; `slot_gpios` lists the pins bit 0 first."""
    from gpiozero import InputDevice

    slot = 0
    for bit, gpio in enumerate(slot_gpios):
        device = InputDevice(gpio, pull_up=True, pin_factory=pin_factory)
        try:
            slot |= int(device.value) << bit
        finally:
            device.close()
    return slot


def _lookup(entries: list[TableEntry] | None, table_problem: str | None, source: str,
            what: str, matches) -> SourceResult:
    if table_problem is not None:
        return SourceResult(source, INVALID, f"{what}, but the identity table is unusable: "
                                             f"{table_problem}")
    if entries is None:
        return SourceResult(source, ABSENT, f"{what}, but there is no {IDENTITY_TABLE} to name it")
    found = [entry.identity for entry in entries if matches(entry)]
    if not found:
        return SourceResult(source, ABSENT, f"{what}, which is not in {IDENTITY_TABLE}")
    if len(found) > 1:
        return SourceResult(source, INVALID, f"{what}, which matches {len(found)} boards in "
                                             f"{IDENTITY_TABLE} ({', '.join(map(str, found))})")
    return SourceResult(source, FOUND, what, found[0])


def from_slot_straps(pin_factory: Any, slot_gpios: Sequence[int],
                     entries: list[TableEntry] | None, table_problem: str | None) -> SourceResult:
    source = "slot straps"
    if not slot_gpios:
        return SourceResult(source, ABSENT, "this board definition has no slot-ID pins")
    try:
        slot = read_slot_number(pin_factory, slot_gpios)
    except Exception as error:  # gpiozero raises its own hierarchy and OSError; both mean unread.
        return SourceResult(source, INVALID, f"could not read GPIO {list(slot_gpios)}: {error}")
    if slot == 0:
        return SourceResult(source, ABSENT, "no strap fitted (slot 0: not in a backplane)")
    return _lookup(entries, table_problem, source, f"slot {slot}",
                   lambda entry: entry.slot == slot)


def read_serial_number(root: Path) -> str | None:
    cpuinfo = root / CPUINFO.lstrip("/")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip():
                return value.strip()
    devicetree = root / DEVICETREE_SERIAL.lstrip("/")
    if devicetree.exists():
        text = devicetree.read_bytes().decode(errors="replace").strip("\x00").strip()
        return text or None
    return None


def from_serial(root: Path, entries: list[TableEntry] | None,
                table_problem: str | None) -> SourceResult:
    source = "serial number"
    text = read_serial_number(root)
    if text is None:
        return SourceResult(source, ABSENT, f"neither {CPUINFO} nor {DEVICETREE_SERIAL} has one")
    try:
        serial = parse_serial(text)
    except ValueError:
        return SourceResult(source, INVALID, f"serial {text!r} is not hexadecimal")
    return _lookup(entries, table_problem, source, f"serial {text}",
                   lambda entry: entry.serial == serial)


def _conclude(results: tuple[SourceResult, ...]) -> Resolution:
    found = [result for result in results if result.status == FOUND]
    invalid = [result for result in results if result.status == INVALID]
    heard = "; ".join(f"{r.source}: {r.identity or r.status} ({r.detail})" for r in results)
    stay_safe = "The board stays in SAFE until this is fixed; then restart hearth-agent."
    if invalid:
        problems = "; ".join(f"{r.source}: {r.detail}" for r in invalid)
        return Resolution(None, results, f"identity: a source is broken: {problems}. "
                                         f"{stay_safe} Sources: {heard}")
    if not found:
        return Resolution(None, results, "identity: unknown, no source names this board. Write "
                                         f"{IDENTITY_FILE} with scripts/flash --identity, or add "
                                         f"its serial or slot to {IDENTITY_TABLE}. {stay_safe} "
                                         f"Sources: {heard}")
    chosen = found[0].identity
    disagreeing = [r for r in found[1:] if r.identity != chosen]
    if disagreeing:
        others = "; ".join(f"{r.source} ({r.detail}) says {r.identity}" for r in disagreeing)
        return Resolution(None, results, f"identity: CONFLICT: {found[0].source} says {chosen} "
                                         f"but {others}. Correct the wrong one. {stay_safe}")
    return Resolution(chosen, results, f"identity: {chosen} from {found[0].source} "
                                       f"({found[0].detail}); sources: {heard}")


def resolve(root: Path = Path("/"), pin_factory: Any = None,
            slot_gpios: Sequence[int] = ()) -> Resolution:
    """Ask every source and decide. `root` is where the boot partition, /etc and procfs live;
    `pin_factory` is a gpiozero pin factory (None: gpiozero's default on a Pi)."""
    table_path = root / IDENTITY_TABLE.lstrip("/")
    entries, table_problem = None, None
    if table_path.exists():
        try:
            entries = load_table(table_path)
        except ConfigError as error:
            table_problem = _one_line(error)
    return _conclude((
        from_boot_file(root),
        from_slot_straps(pin_factory, slot_gpios, entries, table_problem),
        from_serial(root, entries, table_problem),
    ))
