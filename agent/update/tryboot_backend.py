"""RAUC's custom bootloader backend for the Raspberry Pi's tryboot A/B boot (docs/updates.md).

Why it exists: RAUC knows slots as "primary" and "good/bad", the firmware knows only
autoboot.txt's `[all]` (booted normally) and `[tryboot]` (booted once, after `reboot "0
tryboot"`). This maps one onto the other:

* `set-primary X` for the slot not committed arms a trial: `[tryboot]` names X's boot partition
  and the trial is recorded, so the next reboot must be `reboot "0 tryboot"`; for the committed
  slot it disarms any trial. The committed slot is never changed here: that is the commit.
* `set-state X good` on the slot booted for its trial is the commit: `[all]` names X (and
  `[tryboot]` the old slot), by the one-sector rewrite of autoboot.py.
* `set-state X bad` records X bad and disarms its trial, so it is not the primary.
* `get-current` is the slot whose boot partition the firmware booted (its device-tree facts).

autoboot.txt cannot hold "bad", so the slots' states and the armed trial live in a small state
file on the data partition (agent.persist: atomic, checksummed). A damaged one fails closed: it
is kept aside, a log line says so, every slot but the committed one reads bad and no trial is
armed, until the next install sets them again.
"""

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from agent.errors import HearthError
from agent.persist import StateStore
from agent.update import autoboot

DEFAULT_AUTOBOOT_FILE = Path("/boot/autoboot/autoboot.txt")
"""Partition 1 of the board's disk, mounted by the image's fstab."""
DEFAULT_BOOTLOADER_DIR = Path("/proc/device-tree/chosen/bootloader")
DEFAULT_STATE_DIR = Path("/data/rauc")
STATE_FILE = "tryboot.json"
STATE_VERSION = 1
BOOT_PARTITIONS = {"A": 2, "B": 3}
"""RAUC bootname -> the boot partition the firmware boots for it (the disk layout's p2, p3)."""
GOOD = "good"
BAD = "bad"


class BackendError(HearthError, RuntimeError):
    """The backend cannot answer RAUC; the message says what happened and what to check."""


@dataclasses.dataclass(frozen=True)
class BootFacts:
    """What the firmware says of this boot: the boot partition and whether it was a tryboot."""

    partition: int
    tryboot: bool


def read_boot_facts(directory: Path) -> BootFacts:
    """The firmware's big-endian u32s `partition` and `tryboot` under chosen/bootloader (on a Pi
    the device tree; in the VM a tmpfs its early unit fills from hearth.bootloader=)."""

    def u32(name: str) -> int:
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BackendError(f"cannot read the firmware's {path} ({error.strerror or error}); "
                               "check bootloader_dir in /etc/hearth/update.toml") from None
        if len(data) != 4:
            raise BackendError(f"{path} holds {len(data)} bytes {data[:8]!r}; expected a "
                               "4-byte big-endian number as the firmware writes it")
        return int.from_bytes(data, "big")

    return BootFacts(u32("partition"), u32("tryboot") == 1)


class TrybootBackend:
    """The five calls RAUC makes of a custom backend, on autoboot.txt and the state file.

    `boot_facts` is called for each answer that needs the booted slot (the device tree in
    production); `log` receives one line per damaged state file or refused request."""

    def __init__(self, autoboot_file: Path, boot_facts: Callable[[], BootFacts],
                 state: StateStore, *, boot_partitions: Mapping[str, int] = BOOT_PARTITIONS,
                 log: TextIO = sys.stderr, wall_clock: Callable[[], float] = time.time):
        self.autoboot_file = Path(autoboot_file)
        self.boot_facts = boot_facts
        self.state = state
        self.boot_partitions = dict(boot_partitions)
        self.log = log
        self.wall_clock = wall_clock

    def _bootname(self, partition: int, what: str) -> str:
        for name, number in self.boot_partitions.items():
            if number == partition:
                return name
        raise BackendError(f"{what} is partition {partition}, which is no slot's boot partition "
                           f"({self._slots_text()}); check autoboot.txt on partition 1")

    def _slots_text(self) -> str:
        return ", ".join(f"{name}: {number}" for name, number in self.boot_partitions.items())

    def _check_bootname(self, bootname: str) -> None:
        if bootname not in self.boot_partitions:
            raise BackendError(f"bootname {bootname!r} is not a slot; expected one of "
                               f"{', '.join(self.boot_partitions)} (system.conf's bootname=)")

    def _autoboot(self) -> autoboot.Autoboot:
        return autoboot.read(self.autoboot_file)

    def _committed(self, file: autoboot.Autoboot) -> str:
        return self._bootname(file.committed_partition, f"{self.autoboot_file}'s [all]")

    def _load(self, committed: str) -> dict:
        read = self.state.read(STATE_FILE, STATE_VERSION, {"bad": [], "trial": None})
        payload = read.payload
        valid = (isinstance(payload.get("bad"), list)
                 and all(name in self.boot_partitions for name in payload["bad"])
                 and payload.get("trial") in (None, *self.boot_partitions))
        if read.ok and valid:
            return payload
        if read.ok or self.state.path(STATE_FILE).exists():
            problem = read.problem or (f"state file {self.state.path(STATE_FILE)}: holds "
                                       f"{payload!r}, not slot names")
            closed = {"bad": sorted(set(self.boot_partitions) - {committed}), "trial": None}
            try:
                aside = f"kept as {self.state.keep_aside(STATE_FILE, self.wall_clock())}"
            except OSError as error:
                aside = f"could not be kept aside ({error.strerror or error})"
            else:
                self._save(set(closed["bad"]), None)  # logged and kept once, not per call
            print(f"tryboot backend: {problem}; {aside}; every slot but the committed "
                  f"{committed} reads bad and no trial is armed until the next install",
                  file=self.log)
            return closed
        return payload

    def _save(self, bad: set[str], trial: str | None) -> None:
        self.state.write(STATE_FILE, STATE_VERSION, {"bad": sorted(bad), "trial": trial})

    def get_current(self) -> str:
        return self._bootname(self.boot_facts().partition, "the partition the firmware booted")

    def get_primary(self) -> str:
        """The slot the next reboot boots: an armed trial's, else the committed one."""
        file = self._autoboot()
        committed = self._committed(file)
        trial = self._load(committed)["trial"]
        if trial is None or trial == committed:
            return committed
        facts = self.boot_facts()
        if facts.tryboot and facts.partition == self.boot_partitions[trial]:
            return committed  # the trial is running: a reboot now goes back to [all]
        return trial

    def set_primary(self, bootname: str) -> None:
        self._check_bootname(bootname)
        file = self._autoboot()
        committed = self._committed(file)
        state = self._load(committed)
        bad = set(state["bad"]) - {bootname}
        if bootname == committed:
            self._save(bad, None)
            return
        if not file.tryboot_a_b:
            raise BackendError(f"{self.autoboot_file}: [all] has no tryboot_a_b=1, so the "
                               f"firmware would not boot [tryboot]'s partition for a trial of "
                               f"{bootname}; rewrite the file from docs/updates.md")
        partition = self.boot_partitions[bootname]
        if file.tryboot_partition != partition:
            autoboot.rewrite_in_place(self.autoboot_file,
                                      file.with_partitions(file.committed_partition, partition))
        self._save(bad, bootname)

    def get_state(self, bootname: str) -> str:
        self._check_bootname(bootname)
        state = self._load(self._committed(self._autoboot()))
        return BAD if bootname in state["bad"] else GOOD

    def set_state(self, bootname: str, state_name: str) -> None:
        """`good` on the slot booted for its trial commits it; `bad` disarms its trial."""
        self._check_bootname(bootname)
        if state_name not in (GOOD, BAD):
            raise BackendError(f"state {state_name!r} for {bootname}; expected good or bad")
        file = self._autoboot()
        committed = self._committed(file)
        state = self._load(committed)
        bad, trial = set(state["bad"]), state["trial"]
        if state_name == BAD:
            self._save(bad | {bootname}, None if trial == bootname else trial)
            return
        if bootname != committed and self.get_current() == bootname:
            facts = self.boot_facts()
            if not facts.tryboot:
                raise BackendError(f"slot {bootname} runs but not as a trial (tryboot flag 0) "
                                   f"while [all] names {committed}; refusing to commit it, "
                                   "check autoboot.txt on partition 1")
            autoboot.rewrite_in_place(self.autoboot_file, file.with_partitions(
                facts.partition, file.committed_partition))
            trial = None
        self._save(bad - {bootname}, trial)

    def answer(self, argv: list[str]) -> str | None:
        """RAUC's call as its argv (after the program name): the line to print, or None."""
        match argv:
            case ["get-primary"]:
                return self.get_primary()
            case ["get-current"]:
                return self.get_current()
            case ["get-state", bootname]:
                return self.get_state(bootname)
            case ["set-primary", bootname]:
                self.set_primary(bootname)
            case ["set-state", bootname, state_name]:
                self.set_state(bootname, state_name)
            case _:
                raise BackendError(f"unknown request {' '.join(argv)!r}; RAUC asks get-primary, "
                                   "set-primary <bootname>, get-state <bootname>, set-state "
                                   "<bootname> good|bad or get-current")
        return None
