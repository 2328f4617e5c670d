"""The two root slots a board updates between: what the updater needs of them (`Slots`), RAUC's
implementation for a Pi or the VM, and a simulated one for simulated boards.

Why an interface: the update logic (agent/update/updater.py) is the same on a Pi, in the VM and
for a simulated module of boards; only installing, rebooting and marking differ. `RaucSlots`
calls the `rauc` and `systemctl` command lines (RAUC 1.8) and reads the firmware's facts from
`/proc/device-tree/chosen/bootloader/`; `SimulatedSlots` keeps two slots in memory, really
downloads the bundle over HTTP with Range requests (as RAUC's streaming does) and "reboots"
by calling back whoever runs the simulated board.

Slots are named as the firmware boots them: A (boot partition 2, root p5) and B (3, p6).
"""

import dataclasses
import hashlib
import json
import logging
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Protocol, Sequence

from agent.errors import UpdateError, UpdateRefusedError

SLOT_BY_PARTITION = {2: "A", 3: "B"}
"""The firmware's boot partition number -> the slot it boots (docs/updates.md, Disk layout)."""
DEFAULT_BOOTLOADER_DIR = Path("/proc/device-tree/chosen/bootloader")
DEFAULT_FLAG_DIR = Path("/run/hearth-update")
ALLOW_DOWNGRADE = "allow-downgrade"
"""A file in the flag directory that RAUC's pre-install handler reads: present only while a
forced install runs."""
REFUSAL_WORDS = ("signature", "verif", "keyring", "certificate", "compatible", "downgrade")
"""Words in RAUC's last error that mean the bundle was refused, not that the install broke."""
MOUNT_FAILED = "Failed mounting bundle"
"""RAUC's last error when the bundle could not be mounted, which comes before any slot is
written. RAUC before 1.15 (Debian trixie has 1.13) loses a race with udev when it streams: it
creates the network block device with disconnect-on-close, udev opens and closes it before
dm-verity takes it, the kernel disconnects it, and dm-verity finds it empty ("Hash device is
too small"). RAUC 1.15 keeps the device open while it sets it up (its pull request 1741)."""

Progress = Callable[[int], None]
"""Called with 0-100 as the install goes on."""


def parse_version(text: str) -> tuple[int, ...]:
    """A Hearth version ("1.2.0") as numbers to compare; ValueError for anything else."""
    parts = text.split(".") if isinstance(text, str) else []
    if not 1 <= len(parts) <= 4 or not all(part.isdigit() and len(part) <= 6 for part in parts):
        raise ValueError(f"version {text!r} is not dotted numbers like 1.2.0")
    return tuple(int(part) for part in parts)


def other_slot(slot: str) -> str:
    return "B" if slot == "A" else "A"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What the site says about a bundle in `cmd/update`; sha256 and size are optional checks."""

    url: str
    version: str
    sha256: str | None = None
    size_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Booted:
    """What the board runs now: the slot the firmware booted, whether this is the one-time
    trial boot (the tryboot flag), and the Hearth version in that slot. `at_s` is when it
    booted on the updater's clock, so the health window counts from the trial boot, whenever
    the updater (re)started."""

    slot: str
    tryboot: bool
    version: str
    at_s: float = dataclasses.field(default=0.0, compare=False)


@dataclasses.dataclass(frozen=True)
class SlotFacts:
    """The slot not booted: its Hearth version (None when unknown or empty) and RAUC's boot
    status for it ("good", "bad", or None when unknown)."""

    slot: str
    version: str | None
    boot_status: str | None


class Slots(Protocol):
    """What the updater needs of the two slots. Every method raises UpdateError with an
    operator sentence when it cannot do its part."""

    def booted(self) -> Booted: ...

    def other(self) -> SlotFacts: ...

    def install(self, bundle: Bundle, progress: Progress, allow_downgrade: bool) -> None:
        """Write the bundle into the slot not booted and make it the one the next tryboot
        boots; UpdateRefusedError when the bundle is refused before anything is written."""

    def reboot_to_trial(self) -> None:
        """Reboot once into the other slot. On a real board this does not return (the
        process is stopped by the reboot); a simulated board returns once booted again."""

    def mark_good(self) -> None:
        """Commit the booted slot: it is what the firmware boots from now on."""

    def mark_bad(self) -> None:
        """Mark the booted slot bad, so nothing boots it again until a new install."""

    def reboot(self) -> None:
        """A plain reboot: the firmware boots the committed slot (returns as reboot_to_trial)."""


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


COMMAND_TIMEOUT_S = 120.0
"""rauc status and systemctl answer in seconds; one that hangs (D-Bus) is an UpdateError."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess:
    """Run argv to its end, its output captured as text: the default for RaucSlots. A
    command that cannot be started or does not end in time is an UpdateError."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        raise UpdateError(f"{' '.join(argv)} could not be run: {error}")


class RaucSlots:
    """The slots through RAUC 1.8's command line and systemd, as root on a Pi or in the VM.

    Progress comes from `rauc install`'s own output (lines like ` 40% Copying image to
    rootfs.1`, RAUC's src/main.c prints "%3d%% %s"), so no D-Bus client is needed.
    """

    def __init__(self, running_version: str, *, rauc: str = "rauc",
                 systemctl: str = "systemctl",
                 bootloader_dir: Path = DEFAULT_BOOTLOADER_DIR,
                 flag_dir: Path = DEFAULT_FLAG_DIR, run: Runner = run_command,
                 reboot_wait_s: float = 300.0, sleep: Callable[[float], None] = time.sleep,
                 log: logging.Logger | None = None):
        self.running_version = running_version
        self.log = log or logging.getLogger("hearth.update")
        self.rauc = rauc
        self.systemctl = systemctl
        self.bootloader_dir = Path(bootloader_dir)
        self.flag_dir = Path(flag_dir)
        self.run = run
        self.reboot_wait_s = reboot_wait_s
        self.sleep = sleep

    def booted(self) -> Booted:
        partition = self._bootloader_u32("partition")
        slot = SLOT_BY_PARTITION.get(partition)
        if slot is None:
            raise UpdateError(f"the firmware booted partition {partition}, which is no Hearth "
                              f"slot (2 is A, 3 is B); check autoboot.txt on partition 1")
        # time.monotonic() is Linux's CLOCK_MONOTONIC, which starts at boot: 0 is the boot.
        return Booted(slot, self._bootloader_u32("tryboot") == 1, self.running_version, 0.0)

    def _bootloader_u32(self, name: str) -> int:
        """The firmware's big-endian u32 in device tree's chosen/bootloader/<name>."""
        path = self.bootloader_dir / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise UpdateError(f"cannot read the firmware's {path} ({error.strerror or error}); "
                              "on a Pi it is in the device tree, in the VM its early unit writes "
                              "it from hearth.bootloader= on the kernel command line")
        if len(data) != 4:
            raise UpdateError(f"{path} holds {len(data)} bytes, expected a 4-byte big-endian "
                              "number")
        return int.from_bytes(data, "big")

    def other(self) -> SlotFacts:
        """From `rauc status --detailed --output-format=json`: the rootfs slot not booted."""
        booted = self.booted().slot
        result = self._checked(["status", "--detailed", "--output-format=json"], "read the slots")
        try:
            status = json.loads(result.stdout)
            for entry in status["slots"]:
                for facts in entry.values():
                    if facts.get("class") == "rootfs" and facts.get("bootname") not in (
                            None, booted):
                        bundle = (facts.get("slot_status") or {}).get("bundle") or {}
                        return SlotFacts(facts["bootname"], bundle.get("version"),
                                         facts.get("boot_status"))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UpdateError(f"rauc status gave output this updater cannot read ({error!r}); "
                              "check that RAUC is 1.8 or later")
        raise UpdateError("rauc status lists no rootfs slot besides the booted one; check "
                          "/etc/rauc/system.conf")

    def install(self, bundle: Bundle, progress: Progress, allow_downgrade: bool) -> None:
        flag = self.flag_dir / ALLOW_DOWNGRADE
        if allow_downgrade:
            self.flag_dir.mkdir(parents=True, exist_ok=True)
            flag.touch()
        try:
            try:
                self._install(bundle.url, progress)
            except UpdateError as error:
                if MOUNT_FAILED not in str(error) or isinstance(error, UpdateRefusedError):
                    raise
                self.log.warning("%s; nothing was written; trying the install once more (RAUC "
                                 "before 1.15 can lose its streamed bundle's device to udev)",
                                 error)
                self._install(bundle.url, progress)
        finally:
            flag.unlink(missing_ok=True)

    def _install(self, url: str, progress: Progress) -> None:
        argv = [self.rauc, "install", url]
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
        except OSError as error:
            raise UpdateError(f"{self.rauc} install could not be started: {error}")
        last_error = ""
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            percent, _, message = line.partition("% ")
            if percent.strip().isdigit() and message:
                progress(min(100, int(percent)))
            elif line.startswith("LastError: "):
                last_error = line.removeprefix("LastError: ")
            elif line and not line.startswith("Installing "):
                last_error = last_error or line
        if process.wait() != 0:
            reason = (f"rauc install {url} failed: {last_error or 'no reason given'}")
            if any(word in last_error.lower() for word in REFUSAL_WORDS):
                raise UpdateRefusedError(reason)
            raise UpdateError(reason + "; see `journalctl -u rauc` on the board")

    def reboot_to_trial(self) -> None:
        # systemd 254 dropped the positional reboot argument ("Too many arguments.")
        self._reboot(["reboot", "--reboot-argument=0 tryboot"])

    def reboot(self) -> None:
        self._reboot(["reboot"])

    def _reboot(self, args: list[str]) -> None:
        result = self.run([self.systemctl, *args])
        if result.returncode != 0:
            raise UpdateError(f"systemctl {' '.join(args)} failed ({result.stderr.strip()})")
        self.sleep(self.reboot_wait_s)  # the reboot stops this process long before
        raise UpdateError(f"systemctl {' '.join(args)} was accepted but the board has not "
                          f"rebooted after {self.reboot_wait_s:.0f} s; check `systemctl "
                          "list-jobs`")

    def mark_good(self) -> None:
        self._checked(["status", "mark-good", "booted"], "commit the booted slot")

    def mark_bad(self) -> None:
        self._checked(["status", "mark-bad", "booted"], "mark the booted slot bad")

    def _checked(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        result = self.run([self.rauc, *args])
        if result.returncode != 0:
            raise UpdateError(f"rauc {' '.join(args)} could not {what}: "
                              f"{(result.stderr or result.stdout).strip()[:300]}")
        return result


@dataclasses.dataclass(frozen=True)
class ServiceFacts:
    """What systemd says of hearth-agent.service (`systemctl show -p
    ActiveState,SubState,NRestarts`); the health gate's input, see health_gate.py."""

    active_state: str
    sub_state: str
    restarts: int


BootListener = Callable[[Booted, bool], None]
"""Called by SimulatedSlots after each simulated boot with what booted and whether the board's
agent runs on it (False for a version listed as failing: its agent crash-loops)."""


class SimulatedSlots:
    """Two slots in memory for a simulated board, with the real update logic above them.

    How to use it (a simulated module's rollout test does this per board):

        slots = SimulatedSlots("1.1.0", on_boot=restart_agent, failing_versions={"1.2.0"})
        updater = Updater(slots, ..., agent_service=slots.agent_service)

    * `install` downloads the bundle from its URL in Range requests of `chunk_bytes` (a server
      without Range support is refused, as RAUC's streaming needs it), and checks the size and
      sha256 when the site announced them; the slot then holds `bundle.version`.
    * `reboot_to_trial`, `reboot` and `power_cut` switch the booted slot as the firmware would
      and call `on_boot(booted, agent_runs)`: restart the simulated board's agent there (or,
      when agent_runs is False, leave it stopped).
    * A version in `failing_versions` crash-loops its agent: `agent_service()` then reports
      systemd's auto-restart with a restart counted every `restart_every_s`, so the real
      health gate fails it and the board goes back to its old slot.
    * Nothing here sleeps: a simulated reboot is instantaneous.
    """

    def __init__(self, installed_version: str, *, on_boot: BootListener | None = None,
                 failing_versions: frozenset[str] | set[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic, chunk_bytes: int = 256 * 1024,
                 timeout_s: float = 10.0, restart_every_s: float = 2.0):
        self.on_boot = on_boot
        self.failing_versions = frozenset(failing_versions)
        self.clock = clock
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.restart_every_s = restart_every_s
        self.versions: dict[str, str | None] = {"A": installed_version, "B": None}
        self.boot_status: dict[str, str | None] = {"A": "good", "B": None}
        self.primary = "A"
        """The slot a plain boot boots (autoboot.txt's [all])."""
        self.trial: str | None = None
        """The slot the next tryboot boots, set by an install."""
        self.bundle_bytes: dict[str, bytes] = {}
        """slot -> the bytes installed there, for tests."""
        self._booted = Booted("A", False, installed_version, clock())
        self._lock = threading.Lock()

    def booted(self) -> Booted:
        with self._lock:
            return self._booted

    def other(self) -> SlotFacts:
        with self._lock:
            slot = other_slot(self._booted.slot)
            return SlotFacts(slot, self.versions[slot], self.boot_status[slot])

    def install(self, bundle: Bundle, progress: Progress, allow_downgrade: bool) -> None:
        installed = self.booted().version
        if not allow_downgrade and parse_version(bundle.version) < parse_version(installed):
            raise UpdateRefusedError(f"bundle {bundle.version} is older than the installed "
                                     f"{installed}; send it with force to downgrade")
        data = self._download(bundle, progress)
        with self._lock:
            slot = other_slot(self._booted.slot)
            self.versions[slot] = bundle.version
            self.boot_status[slot] = "good"
            self.bundle_bytes[slot] = data
            self.trial = slot

    def _download(self, bundle: Bundle, progress: Progress) -> bytes:
        """The bundle in Range requests, as RAUC streams one; UpdateError on anything amiss."""
        received = bytearray()
        total: int | None = None
        while total is None or len(received) < total:
            end = len(received) + self.chunk_bytes - 1
            request = urllib.request.Request(bundle.url,
                                             headers={"Range": f"bytes={len(received)}-{end}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if response.status != 206:
                        raise UpdateError(f"{bundle.url} answered {response.status} to a Range "
                                          "request; streaming needs a server with Range "
                                          "support (206)")
                    total = _content_total(response.headers.get("Content-Range", ""),
                                           bundle.url)
                    chunk = response.read()
            except (urllib.error.URLError, OSError) as error:
                raise UpdateError(f"cannot download {bundle.url}: {error}; check the site's "
                                  "bundle server and the board's network")
            if not chunk:
                raise UpdateError(f"{bundle.url} ended at {len(received)} of {total} bytes")
            received += chunk
            progress(min(99, len(received) * 100 // max(total, 1)))
        if bundle.size_bytes is not None and total != bundle.size_bytes:
            raise UpdateError(f"{bundle.url} is {total} bytes, the site announced "
                              f"{bundle.size_bytes}; nothing installed")
        digest = hashlib.sha256(received).hexdigest()
        if bundle.sha256 is not None and digest != bundle.sha256.lower():
            raise UpdateError(f"{bundle.url} has sha256 {digest}, the site announced "
                              f"{bundle.sha256}; nothing installed")
        progress(100)
        return bytes(received)

    def reboot_to_trial(self) -> None:
        with self._lock:
            if self.trial is None:
                raise UpdateError("no installed slot waits for a trial; install first")
            slot, self.trial = self.trial, None
        self._boot(slot, tryboot=True)

    def mark_good(self) -> None:
        with self._lock:
            self.primary = self._booted.slot
            self.boot_status[self.primary] = "good"

    def mark_bad(self) -> None:
        with self._lock:
            self.boot_status[self._booted.slot] = "bad"

    def reboot(self) -> None:
        self._boot(self.primary, tryboot=False)

    def power_cut(self) -> None:
        """Power lost and back: the firmware boots the committed slot, whatever ran."""
        with self._lock:
            self.trial = None
        self._boot(self.primary, tryboot=False)

    def _boot(self, slot: str, tryboot: bool) -> None:
        with self._lock:
            version = self.versions[slot]
            if version is None:
                raise UpdateError(f"slot {slot} is empty; the firmware would not boot it")
            self._booted = Booted(slot, tryboot, version, self.clock())
            booted = self._booted
        if self.on_boot is not None:
            self.on_boot(booted, booted.version not in self.failing_versions)

    def agent_service(self) -> ServiceFacts:
        """hearth-agent.service as systemd would show it on this simulated board."""
        with self._lock:
            booted = self._booted
        since_s = self.clock() - booted.at_s
        if booted.version not in self.failing_versions:
            return ServiceFacts("active", "running", 0)
        return ServiceFacts("activating", "auto-restart", 1 + int(since_s / self.restart_every_s))


def _content_total(content_range: str, url: str) -> int:
    """The total size from `Content-Range: bytes 0-99/1234`."""
    unit, _, rest = content_range.partition(" ")
    total = rest.rpartition("/")[2]
    if unit != "bytes" or not total.isdigit():
        raise UpdateError(f"{url} sent Content-Range {content_range!r}, expected "
                          "'bytes FIRST-LAST/TOTAL'")
    return int(total)
