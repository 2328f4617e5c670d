"""Updates proven in the VM (issue 18; scripts/vm-test --updates, docs/vm-test.md "Updates").

The golden image boots in QEMU with the host playing the Raspberry Pi firmware
(agent/deploy/vm_firmware.py); a Mosquitto on the host is the site's broker (QEMU's user
network reaches it at 10.0.2.2), the site's bundle server serves signed bundles, and the
board's own updater, RAUC and tryboot backend do the rest. The host only sends `cmd/update` as
`hearth update` does, reads the board's `update` topic, cuts the power where a scenario says,
and asks the VM's bench (agent/deploy/vm_guest_updates.py) to reboot or power off. Between
scenarios the VM is off and its disk is read as files: slots, autoboot.txt, the data partition.
"""

import dataclasses
import hashlib
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.deploy.disk import (DiskImageError, Ext4Partition, FatPartition,
                               disk_id, run, slot_layout)
from agent.deploy.image import (INSTALL_DIR, REPO, StagedFile, partition_digest, with_version,
                                write_root)
from agent.deploy.vm import (BOOTLOADER_FACTS_DIR, GUEST_DIR, KERNEL_PANIC, VmRun, board_files,
                             build_golden, run_vm)
from agent.deploy.vm_firmware import autoboot_partition, plan_boot
from agent.mqtt.link import Link, LinkSettings, Message
from agent.mqtt.outbox import Outbox
from agent.update.bundle_server import BundleServer

SITE, MODULE, BOARD = "vm", "m1", "b01"
GUEST_HOST = "10.0.2.2"
"""The host as the guest sees it on QEMU's user network."""
OLD_RELEASE, NEW_RELEASE = "1.1.0", "1.2.0"
DOWNGRADE_RELEASE = "1.0.0"
"""Older than either release the board runs, so it is a downgrade whichever scenarios ran
before (the golden image's own 1.1.0 over 1.1.0 is "already installed", not a downgrade)."""
BOOT_TIMEOUT_S = 1800
STEP_TIMEOUT_S = 900
UPDATE_TOML = (f'bootloader_dir = "{BOOTLOADER_FACTS_DIR}"\nhealth_window_s = 180\n'
               "health_hold_s = 20\nmax_agent_restarts = 2\n")
"""A short health window so a failing trial ends within minutes. It counts from the trial
boot's start, and the emulated CPU takes 70-90 s to bring up the updater, so 90 s was too
short for a healthy board; the hold still spans several of the agent's reports and the
leader's setpoints."""
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"
QEMU_NETWORK = ("-nic", "user,model=virtio-net-pci")
UPDATES_UNIT = f"""# Test VM only: the update scenarios' bench (agent/deploy/vm_guest_updates.py).
[Unit]
Description=Hearth VM test: update bench
After=multi-user.target network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 {GUEST_DIR}/checks.py

[Install]
WantedBy=multi-user.target
"""
CRASHING_AGENT = "[Service]\nExecStart=\nExecStart=/bin/sh -c 'sleep 2; exit 3'\n"
"""A release whose agent dies two seconds after every start: a crash loop."""
AGENT_WITHOUT_NETWORK = f"[Service]\nIPAddressDeny={GUEST_HOST}\n"
"""A release whose agent runs but never reaches the broker: systemd's IP firewall denies it the
site's broker only (denying it every address, the loopback too, also kept it from starting)."""
BAD_RELEASE_DROPIN = "/etc/systemd/system/hearth-agent.service.d/release.conf"
EVENT_LINE = re.compile(r"vm-test: (boot|energy|action) (\{.*\})")


class ScenarioError(RuntimeError):
    """A scenario could not go on; the message says what was awaited."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    sha256: str
    size_bytes: int


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hearth(*args: object) -> subprocess.CompletedProcess:
    return run([str(REPO / ".venv" / "bin" / "hearth"), *map(str, args)], text=True)


# ---------------------------------------------------------------- images and bundles

def bench_files(work: Path, control_url: str) -> list[StagedFile]:
    """The network (DHCP on QEMU's user network) and the bench's settings, in each root."""
    stage = work / "update-bench"
    stage.mkdir(exist_ok=True)
    texts = {"/etc/systemd/network/20-vm.network": NETWORK,
             "/etc/hearth-vm/updates.json": json.dumps({"control_url": control_url})}
    files = [StagedFile("/etc/systemd/network", 0o755, directory=True),
             StagedFile("/etc/systemd/system/sockets.target.wants", 0o755, directory=True)]
    for path, text in texts.items():
        local = stage / path.strip("/").replace("/", "_")
        local.write_text(text)
        files.append(StagedFile(path, 0o644, source=local))
    for wants, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                        ("sockets.target.wants", "systemd-networkd.socket"),
                        ("network-online.target.wants", "systemd-networkd-wait-online.service")):
        if wants == "network-online.target.wants":
            files.append(StagedFile(f"/etc/systemd/system/{wants}", 0o755, directory=True))
        files.append(StagedFile(f"/etc/systemd/system/{wants}/{unit}", 0o777,
                                link_target=f"/usr/lib/systemd/system/{unit}"))
    return files


def board_config(broker_port: int) -> dict[str, str]:
    """The VM board's config with the host's broker as the site's."""
    files = board_files()
    files["/etc/hearth/hearth.toml"] = files["/etc/hearth/hearth.toml"].replace(
        'brokers = ["127.0.0.1"]', f'brokers = ["{GUEST_HOST}:{broker_port}"]')
    files["/etc/hearth/updater-mqtt.toml"] = f'[mqtt]\nbrokers = ["{GUEST_HOST}:{broker_port}"]\n'
    files["/etc/hearth/update.toml"] = UPDATE_TOML
    return files


def updates_golden(cache: Path, work: Path, log, release: str, keyring: Path,
                   broker_port: int, control_url: str) -> Path:
    """A golden image of `release` with the update bench in both slots."""
    directory = work / f"golden-{release}"
    directory.mkdir()
    golden = build_golden(cache, directory, log, ("--release", release, "--update-keyring",
                                                  str(keyring)),
                          board_config(broker_port),
                          (Path(__file__).with_name("vm_guest_updates.py").read_text(),
                           UPDATES_UNIT))
    layout = slot_layout(golden)
    files = bench_files(directory, control_url)
    for root in (layout.root_a, layout.root_b):
        write_root(Ext4Partition(golden, root), files)
    return golden


def derived_release(golden: Path, work: Path, name: str, files: dict[str, str]) -> Path:
    """A copy of `golden` whose slot A has `files` (path: text) written over: the next
    release without a second image build (a bundle carries slot A)."""
    derived = work / f"{name}.img"
    run(["cp", "--sparse=always", str(golden), str(derived)])
    root = Ext4Partition(derived, slot_layout(derived).root_a)
    staged = []
    for path, text in files.items():
        if not root.exists(str(Path(path).parent)):
            staged.append(StagedFile(str(Path(path).parent), 0o755, directory=True))
        local = work / f"{name}-{Path(path).name}"
        local.write_text(text)
        staged.append(StagedFile(path, 0o644, source=local))
    write_root(root, staged)
    return derived


def next_release(golden: Path, work: Path, release: str) -> Path:
    """`golden` as `release`: /etc/hearth-release and the installed package's version, which
    is all that tells two builds of this tree apart."""
    root = Ext4Partition(golden, slot_layout(golden).root_a)
    package = f"{INSTALL_DIR}/lib/python3.13/site-packages/agent/__init__.py"
    return derived_release(golden, work, f"release-{release}", {
        "/etc/hearth-release": f"{release}\n",
        package: with_version(root.read(package).decode(), release)})


def slot_status(text: bytes | None) -> bytes:
    """RAUC's status file without what every boot writes (its [system] boot-id=), so an
    absent file and one holding only that compare equal: what is left is about the slots."""
    text = re.sub(rb"(?m)^boot-id=.*\n?", b"", text or b"")
    return re.sub(rb"^\[system\]\s*(?=\[|$)", b"", text.strip())


def build_bundle(image: Path, keys: Path, out: Path) -> Bundle:
    hearth("bundle", "build", "--image", image, "--cert", keys / "signing/signing.crt",
           "--key", keys / "signing/signing.key", "--out", out)
    release = Ext4Partition(image, slot_layout(image).root_a).read("/etc/hearth-release")
    return Bundle(out, release.decode().strip(), file_digest(out), out.stat().st_size)


def unsigned_bundle(signed: Bundle, work: Path) -> Bundle:
    """The signed bundle's content as a bare squashfs: what a bundle without a signature is."""
    content = work / "unsigned-content"
    run(["unsquashfs", "-q", "-n", "-d", str(content), str(signed.path)])
    out = work / "unsigned.raucb"
    run(["mksquashfs", str(content), str(out), "-quiet", "-no-progress", "-comp", "lz4"])
    shutil.rmtree(content)
    return Bundle(out, signed.version, file_digest(out), out.stat().st_size)


# ---------------------------------------------------------------- the rig on the host

class Rig:
    """The site around one VM board: the broker, the bundle server, the bench's control
    answers, and the VM's boots one after another as the firmware would run them."""

    def __init__(self, image: Path, work: Path, broker_port: int, log):
        self.image = image
        self.work = work
        self.log = log
        self.disk = disk_id(image)
        self.lock = threading.Condition()
        self.updates: list[dict] = []
        self.replies: dict[str, dict] = {}
        """The board's answers to the rig's commands, by command id."""
        self.events: list[tuple[int, str, dict]] = []
        self.runs: list[VmRun] = []
        self.boot_index = 0
        self.trying = False
        """Whether the boot running now is a tryboot boot (the firmware's one-time boot)."""
        self.action: tuple[str, str | None] = ("wait", None)
        """What the bench is told, and the boot (boot_id) it is meant for (None: any)."""
        self.power_cut: threading.Event | None = None
        self.cut_on_line: Callable[[str], bool] | None = None
        """A scenario's power-cut point on the console, if it has one."""
        self.stopping = threading.Event()
        self.machine: threading.Thread | None = None
        self.broker_port = broker_port
        self.link = Link(LinkSettings(host="127.0.0.1", port=broker_port),
                         client_id="vm-test-site", outbox=Outbox(work / "site-outbox"),
                         boot=str(uuid.uuid4()))
        self.prefix = f"hearth/v1/{SITE}/{MODULE}/{BOARD}"
        self.link.subscribe(f"{self.prefix}/update", self._on_update)
        self.link.subscribe(f"{self.prefix}/reply", self._on_reply)
        self.link.start()
        self.polling = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self.polling.is_set():
            self.link.poll()
            time.sleep(0.1)

    def _on_update(self, message: Message) -> None:
        data = message.data()
        with self.lock:
            self.updates.append(data)
            self.lock.notify_all()
        shown = ("installed", "slot", "state", "target", "progress_pct", "reason")
        self.log(f"vm-update: update {json.dumps({key: data.get(key) for key in shown})}")

    def _on_reply(self, message: Message) -> None:
        data = message.data()
        with self.lock:
            if isinstance(data.get("id"), str):
                self.replies[data["id"]] = data
            self.lock.notify_all()

    def _on_line(self, line: str) -> None:
        match = EVENT_LINE.search(line)
        with self.lock:
            if match:
                self.events.append((self.boot_index, match.group(1), json.loads(match.group(2))))
            self.lock.notify_all()
            trigger = self.cut_on_line
        if trigger is not None and trigger(line):
            with self.lock:
                self.cut_on_line = None             # one cut: the boots after it run on
                self.power_cut.set()

    def start(self) -> None:
        """Power on: boots follow one another (a tryboot reboot makes the next one a trial)
        until the VM powers off."""
        with self.lock:
            self.action = ("wait", None)
        self.cut_on_line = None
        self.stopping.clear()
        self.machine = threading.Thread(target=self._boots, daemon=True)
        self.machine.start()

    def _boots(self) -> None:
        tryboot = False
        while True:
            plan = plan_boot(self.image, self.disk, tryboot, self.work)
            with self.lock:
                self.boot_index += 1
                self.trying = tryboot
                self.power_cut = threading.Event()
                cut = self.power_cut
            self.log(f"vm-update: firmware boots partition {plan.partition} "
                     f"(tryboot {int(tryboot)})")
            with open(self.work / f"console-{self.boot_index:02d}.log", "w") as console:
                def on_line(line: str) -> None:     # written as it comes: a hung boot shows
                    console.write(line + "\n")
                    console.flush()
                    self._on_line(line)
                result = run_vm(self.image, plan, BOOT_TIMEOUT_S, lambda line: None,
                                QEMU_NETWORK, on_line, cut)
            with self.lock:
                self.runs.append(result)
                self.lock.notify_all()
            panicked = any(KERNEL_PANIC in line for line in result.lines)
            self.log(f"vm-update: boot {self.boot_index} ended: {result.ended}"
                     + (" (the guest kernel panicked; its console log has why)" if panicked
                        else ""))
            if result.ended == "poweroff" or self.stopping.is_set():
                return
            tryboot = result.ended == "tryboot-reboot"

    def wait(self, predicate: Callable[[], object], timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                stopped = self.machine is None or not self.machine.is_alive()
                if left <= 0 or stopped:
                    raise ScenarioError(
                        f"{'the VM stopped' if stopped else f'waited {timeout_s:.0f} s'} "
                        f"while waiting for {what}; the board's last update: "
                        f"{self.updates[-1] if self.updates else None}")
                self.lock.wait(min(left, 1.0))

    def boot_event(self, after_boot: int) -> dict | None:
        return next((facts for index, kind, facts in self.events
                     if kind == "boot" and index > after_boot), None)

    def update_since(self, count: int, predicate: Callable[[dict], bool]) -> dict | None:
        return next((u for u in self.updates[count:] if predicate(u)), None)

    def verdict_after_install(self, count: int, states: tuple[str, ...],
                              slot: str | None = None) -> dict | None:
        """The first report in `states` (from `slot`) after the install that began after
        update `count`: the reports a board repeats when it boots come before it."""
        began = next((index for index, u in enumerate(self.updates) if index >= count
                      and u.get("state") == "installing"), None)
        if began is None:
            return None
        return next((u for u in self.updates[began:] if u.get("state") in states
                     and (slot is None or u.get("slot") == slot)), None)

    def energy_values(self) -> list[float]:
        return [facts["electric_wh"] for _, kind, facts in self.events
                if kind == "energy" and "electric_wh" in facts]

    def answer(self, boot_id: str) -> str:
        with self.lock:
            action, meant_for = self.action
        return action if meant_for in (None, boot_id) else "wait"

    def set_action(self, action: str, boot_id: str | None = None) -> None:
        """Tell the bench of `boot_id` (any boot when None): a reboot asked of one boot is
        not repeated by the next."""
        with self.lock:
            self.action = (action, boot_id)

    def last_boot(self) -> dict:
        return [facts for _, kind, facts in self.events if kind == "boot"][-1]

    def send_update(self, bundle: Bundle, url: str, force: bool = False) -> str:
        command_id = f"update-{uuid.uuid4().hex[:16]}"
        self.link.publish(f"{self.prefix}/cmd/update",
                          {"id": command_id, "by": "operator",
                           "args": {"url": url, "version": bundle.version, "force": force,
                                    "sha256": bundle.sha256, "size_bytes": bundle.size_bytes}},
                          qos=1)
        return command_id

    def power_off(self) -> None:
        """Ask the bench for a clean power-off and wait for QEMU to end."""
        self.set_action("poweroff")
        self.machine.join(timeout=600)
        if self.machine.is_alive():
            self.stop_machine()
            raise ScenarioError("the VM did not power off within 600 s; cut")

    def stop_machine(self) -> None:
        """Cut the power if the VM still runs (a scenario that could not finish)."""
        self.cut_on_line = None
        self.stopping.set()
        if self.machine is not None and self.machine.is_alive():
            with self.lock:
                self.power_cut.set()
            self.machine.join(timeout=60)

    def close(self) -> None:
        self.stop_machine()
        self.polling.set()
        self.link.close()


class ControlServer:
    """What the bench asks at every second: wait, reboot or poweroff (the rig's answer)."""

    def __init__(self, answer: Callable[[str], str]):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                body = answer(query.get("boot", [""])[0]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True).start()

    def url(self) -> str:
        return f"http://{GUEST_HOST}:{self.server.server_address[1]}/next"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(work: Path, port: int) -> subprocess.Popen:
    """The site's broker on the host's loopback, which QEMU's user network forwards
    10.0.2.2 to; anonymous, as the VM board has no provisioned account."""
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return broker
        time.sleep(0.1)
    broker.kill()
    raise ScenarioError(f"mosquitto did not listen on 127.0.0.1:{port} within 10 s")


# ---------------------------------------------------------------- scenarios

@dataclasses.dataclass
class DiskState:
    """What the VM's disk says while the VM is off."""

    committed_partition: int
    other_boot_digest: str
    other_root_digest: str
    rauc_files: dict[str, bytes | None]


class Scenarios:
    """The acceptance of issue 18 in one VM, one scenario after another on the same disk: each
    starts with the VM off on its committed slot and ends with it powered off cleanly."""

    def __init__(self, rig: Rig, server: BundleServer, bundles: dict[str, Bundle], report):
        self.rig = rig
        self.server = server
        self.bundles = bundles
        self.report = report

    def url(self, bundle: Bundle) -> str:
        return self.server.url(GUEST_HOST, bundle.path.name)

    def disk(self) -> DiskState:
        image = self.rig.image
        layout = slot_layout(image)
        text = FatPartition(image, layout.autoboot).read("autoboot.txt").decode()
        committed = autoboot_partition(text, tryboot=False)
        other_boot, other_root = ((layout.boot_b, layout.root_b) if committed == 2
                                  else (layout.boot_a, layout.root_a))
        data = Ext4Partition(image, layout.data)
        files = {}
        for path in ("/rauc/status.raucs", "/rauc/tryboot.json"):
            files[path] = data.read(path) if data.exists(path) else None
        files["/rauc/status.raucs"] = slot_status(files["/rauc/status.raucs"])
        return DiskState(committed, partition_digest(image, other_boot),
                         partition_digest(image, other_root), files)

    def data_intact(self, energy_before: float | None) -> tuple[bool, str]:
        """The data partition checks clean and the energy counters never went backwards."""
        layout = slot_layout(self.rig.image)
        problems = []
        try:
            Ext4Partition(self.rig.image, layout.data).check()
        except DiskImageError as error:
            problems.append(f"e2fsck: {error}")
        values = self.rig.energy_values()
        if any(b < a for a, b in zip(values, values[1:])):
            problems.append(f"energy went backwards: {values}")
        if energy_before is not None and values and values[-1] < energy_before:
            problems.append(f"energy {values[-1]} below {energy_before} before the scenario")
        summary = (f"data partition clean, electric_wh {values[0] if values else None} -> "
                   f"{values[-1] if values else None} over {len(values)} readings")
        return not problems, "; ".join(problems) or summary

    def _running(self) -> tuple[int, int, str]:
        """Power on and wait until the board's updater reports from its committed slot: the
        partition booted, the updates seen so far and the release it runs."""
        start_boot = self.rig.boot_index
        updates_before = len(self.rig.updates)
        self.rig.start()
        facts = self.rig.wait(lambda: self.rig.boot_event(start_boot), STEP_TIMEOUT_S,
                              "the bench's first line")
        self.rig.wait(lambda: self.rig.update_since(
            updates_before, lambda u: u.get("state") not in ("installing", "trial")),
            STEP_TIMEOUT_S, "the updater's first report")
        return facts["partition"], len(self.rig.updates), facts["release"]

    def good_bundle(self) -> None:
        """(a) installed to the other slot, tried, gate passed, committed; a plain reboot then
        stays on it."""
        bundle = self.bundles["good"]
        before = self.disk()
        partition, seen, _ = self._running()
        self.rig.send_update(bundle, self.url(bundle))
        committed = self.rig.wait(lambda: self.rig.verdict_after_install(
            seen, ("committed", "rolled_back", "failed", "refused")),
            STEP_TIMEOUT_S, "the update's verdict")
        trial = next((facts for index, kind, facts in self.rig.events
                      if kind == "boot" and facts.get("tryboot") == 1), None)
        self.report("update-good-committed",
                    committed["state"] == "committed" and committed["installed"] == bundle.version
                    and trial is not None and trial["partition"] != partition,
                    f"from partition {partition}: trial boot {trial}, then {committed}")
        boots = self.rig.boot_index
        self.rig.set_action("reboot", self.rig.last_boot()["boot_id"])
        facts = self.rig.wait(lambda: self.rig.boot_event(boots), STEP_TIMEOUT_S,
                              "the boot after a plain reboot")
        self.report("update-good-stays", facts["tryboot"] == 0 and facts["partition"] != partition
                    and facts["release"] == bundle.version,
                    f"plain reboot: {facts}")
        energy = self.rig.energy_values()
        self.rig.power_off()
        after = self.disk()
        self.report("update-good-autoboot", after.committed_partition != before.committed_partition,
                    f"autoboot.txt [all] boot_partition {before.committed_partition} -> "
                    f"{after.committed_partition}")
        self.report("update-good-data", *self.data_intact(energy[0] if energy else None))

    def failing_bundle(self, name: str, bundle_key: str, reason_pattern: str) -> None:
        """(b), (c): the trial fails its gate; the board is back on the old slot, running,
        and says why."""
        self._back_on_old_slot(name, self.bundles[bundle_key], reason_pattern, cut=None)

    def power_cut(self, point: str) -> None:
        """(d): the VM killed at `point` of the install or the trial."""
        self._back_on_old_slot(f"power-cut-{point}", self.bundles["good-again"],
                               r".", cut=point)

    def _back_on_old_slot(self, name: str, bundle: Bundle, reason_pattern: str,
                          cut: str | None) -> None:
        before = self.disk()
        partition, seen, release = self._running()
        energy = self.rig.energy_values()
        boots = self.rig.boot_index
        if cut is not None:
            self._arm_cut(cut, seen, boots, trial_slot="B" if partition == 2 else "A")
        # with force: after the good scenario the board runs the release these bundles carry,
        # and it would answer "already installed" (an operator re-sending a build does the same)
        self.rig.send_update(bundle, self.url(bundle), force=True)
        verdict = self.rig.wait(lambda: self.rig.verdict_after_install(
            seen, ("rolled_back", "failed", "refused", "committed"), self._slot(partition)),
            STEP_TIMEOUT_S * 2, "the board's report from its old slot")
        facts = [f for index, kind, f in self.rig.events if kind == "boot" and index > boots]
        back = facts[-1] if facts else {}
        no_trial = cut not in ("install", "installed") or all(
            f.get("tryboot") == 0 for f in facts)           # the cut came before the reboot
        self.report(f"{name}-old-slot", back.get("partition") == partition and no_trial
                    and back.get("tryboot") == 0 and verdict["state"] in ("rolled_back", "failed")
                    and verdict.get("installed") == release,
                    f"boots {[(f.get('partition'), f.get('tryboot')) for f in facts]}; "
                    f"{verdict['state']} on slot {verdict.get('slot')}, installed "
                    f"{verdict.get('installed')}")
        reason = verdict.get("reason") or ""
        self.report(f"{name}-reason", bool(re.search(reason_pattern, reason)),
                    repr(reason[:200]))
        self.rig.power_off()
        after = self.disk()
        self.report(f"{name}-committed-kept", after.committed_partition ==
                    before.committed_partition, f"autoboot.txt [all] boot_partition "
                    f"{after.committed_partition}")
        self.report(f"{name}-data", *self.data_intact(energy[-1] if energy else None))

    def _slot(self, partition: int) -> str:
        return "A" if partition == 2 else "B"

    def _arm_cut(self, point: str, seen: int, boots: int, trial_slot: str) -> None:
        """Cut the power at one of five moments of an install and its trial."""
        rig = self.rig
        if point in ("install", "installed"):
            def watch() -> None:
                # RAUC's 100 % comes with the updater's "trial" report, just before its reboot
                rig.wait(lambda: rig.update_since(seen, lambda u: (
                    u.get("state") in ("installing", "trial") and (u.get("progress_pct") or 0)
                    >= (30 if point == "install" else 100))), STEP_TIMEOUT_S, f"{point} progress")
                with rig.lock:
                    rig.power_cut.set()
            threading.Thread(target=watch, daemon=True).start()
        elif point == "trial-kernel":
            # the kernel runs quiet; SeaBIOS's last line comes as it hands over to the kernel
            # of the trial boot (every boot prints it: only the tryboot one is cut)
            rig.cut_on_line = lambda line: (rig.boot_index > boots and rig.trying and
                                            "Booting from ROM" in line)
        elif point == "trial-userspace":
            rig.cut_on_line = lambda line: (rig.boot_index > boots and rig.trying and
                                            '"tryboot": 1' in line and "vm-test: boot" in line)
        elif point == "trial-gate":
            def watch_gate() -> None:
                # the trial boot's own report (the one before the reboot is from the old slot)
                rig.wait(lambda: rig.update_since(seen, lambda u: u.get("state") == "trial"
                                                  and u.get("slot") == trial_slot),
                         STEP_TIMEOUT_S, "the trial's report")
                time.sleep(5)
                with rig.lock:
                    rig.power_cut.set()
            threading.Thread(target=watch_gate, daemon=True).start()

    def refused(self) -> None:
        """(e): an unsigned bundle, one signed under another CA, a downgrade: refused with a
        reason, nothing written (the other slot byte for byte, RAUC's and the backend's
        status files)."""
        before = self.disk()
        _, seen, _ = self._running()
        for key in ("unsigned", "other-key", "downgrade"):
            bundle = self.bundles[key]
            count = len(self.rig.updates)
            # the badly signed bundles go with force, so that neither the version gate nor an
            # "already installed" (a release the board may run by now) answers in RAUC's place
            command_id = self.rig.send_update(bundle, self.url(bundle),
                                              force=key != "downgrade")
            self.rig.wait(lambda: self.rig.update_since(
                count, lambda u: u.get("state") in ("refused", "failed", "committed", "trial"))
                or self.rig.replies.get(command_id, {}).get("status") == "rejected",
                STEP_TIMEOUT_S, f"the verdict on the {key} bundle")
            try:                        # a refusal is reported on `update` and answered
                verdict = self.rig.wait(lambda: self.rig.update_since(count, lambda u: u.get(
                    "state") in ("refused", "failed", "committed", "trial")), 10, "a verdict")
            except ScenarioError:
                verdict = None
            if verdict is None:
                reply = self.rig.replies[command_id]
                self.report(f"refused-{key}", False,
                            f"the command was rejected before any install: {reply['reason']!r}")
                continue
            self.report(f"refused-{key}", verdict["state"] in ("refused", "failed")
                        and bool(verdict.get("reason")),
                        f"{verdict['state']}: {(verdict.get('reason') or '')[:200]!r}")
        self.rig.power_off()
        after = self.disk()
        changed = [path for path, text in after.rauc_files.items()
                   if text != before.rauc_files[path]]
        self.report("refused-nothing-written", (after.other_boot_digest, after.other_root_digest,
                                                changed) == (
            before.other_boot_digest, before.other_root_digest, []),
                    f"other slot boot {after.other_boot_digest[:12]} root "
                    f"{after.other_root_digest[:12]} (before {before.other_boot_digest[:12]} "
                    f"{before.other_root_digest[:12]}), RAUC status files changed: "
                    f"{changed or 'none'} (RAUC's boot-id aside)")


SCENARIOS = ("good", "refused", "crash-loop", "no-broker", "power-cut-install",
             "power-cut-installed", "power-cut-trial-kernel", "power-cut-trial-userspace",
             "power-cut-trial-gate")
"""In the order they run: the good bundle first (the others start from what it committed)."""
SUITE_SCENARIOS = ("good", "crash-loop")


def run_updates(cache: Path, work: Path, log, report, names: tuple[str, ...]) -> None:
    """Build the two releases and the bundles `names` need, then run the scenarios."""
    keys, other_keys = work / "site-keys", work / "other-keys"
    hearth("bundle", "keygen", "--out", keys, "--site", SITE)
    port = free_port()
    broker = start_broker(work, port)
    holder: list[Rig] = []
    control = ControlServer(lambda boot: holder[0].answer(boot) if holder else "wait")
    try:
        golden = updates_golden(cache, work, log, OLD_RELEASE, keys / "ca/ca.crt", port,
                                control.url())
        started = time.monotonic()
        newer = next_release(golden, work, NEW_RELEASE)
        bundles = {"good": build_bundle(newer, keys, work / f"hearth-{NEW_RELEASE}.raucb")}
        bundles["good-again"] = bundles["good"]
        if "crash-loop" in names:
            bundles["crash"] = build_bundle(
                derived_release(newer, work, "crash", {BAD_RELEASE_DROPIN: CRASHING_AGENT}),
                keys, work / "crash-loop.raucb")
        if "no-broker" in names:
            bundles["no-broker"] = build_bundle(
                derived_release(newer, work, "no-broker",
                                {BAD_RELEASE_DROPIN: AGENT_WITHOUT_NETWORK}),
                keys, work / "no-broker.raucb")
        if "refused" in names:
            hearth("bundle", "keygen", "--out", other_keys, "--site", "elsewhere")
            bundles["other-key"] = build_bundle(newer, other_keys, work / "other-key.raucb")
            bundles["unsigned"] = unsigned_bundle(bundles["good"], work)
            bundles["downgrade"] = build_bundle(
                next_release(golden, work, DOWNGRADE_RELEASE), keys,
                work / f"hearth-{DOWNGRADE_RELEASE}.raucb")
        log(f"vm-update: {len(set(map(id, bundles.values())))} bundles built in "
            f"{time.monotonic() - started:.0f} s")
        for built in work.glob("*.img"):            # the releases are in their bundles now
            built.unlink()
        rig = Rig(golden, work, port, log)
        holder.append(rig)
        with BundleServer(sorted({b.path for b in bundles.values()}), ("127.0.0.1", 0)) as server:
            scenarios = Scenarios(rig, server, bundles, report)
            try:
                for name in SCENARIOS:
                    if name not in names:
                        continue
                    started = time.monotonic()
                    log(f"vm-update: scenario {name}")
                    try:
                        run_scenario(scenarios, name)
                    except ScenarioError as error:
                        report(name, False, str(error)[:400])
                        rig.stop_machine()
                    log(f"vm-update: scenario {name} took {time.monotonic() - started:.0f} s")
            finally:
                rig.close()
    finally:
        control.close()
        broker.kill()
        broker.wait()


def run_scenario(scenarios: Scenarios, name: str) -> None:
    if name == "good":
        scenarios.good_bundle()
    elif name == "refused":
        scenarios.refused()
    elif name == "crash-loop":
        scenarios.failing_bundle(name, "crash", r"crash|restart|failed")
    elif name == "no-broker":
        scenarios.failing_bundle(name, "no-broker", r"broker")
    else:
        scenarios.power_cut(name.removeprefix("power-cut-"))
