"""The update scenarios' bench inside the VM (scripts/vm-test --updates; docs/vm-test.md).

Runs inside the VM under the system's python3 with the standard library only, as root, on
every boot. It prints what the firmware booted and what the data partition holds
(`vm-test: boot {...}`, then `vm-test: energy {...}` whenever the agent's saved counters
change) on the serial console the host reads, and then does what the host's scenario asks
over HTTP (QEMU's user network reaches the host at 10.0.2.2): wait, reboot or power off.
Everything else, the update itself included, is the image's own doing.
"""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SETTINGS_FILE = Path("/etc/hearth-vm/updates.json")
CONSOLE = "/dev/ttyS0"
BOOTLOADER_DIR = Path("/run/hearth-vm/bootloader")
ENERGY_FILE = Path("/var/lib/hearth/energy.json")
POLL_S = 1.0


def say(console, kind: str, facts: dict) -> None:
    line = f"vm-test: {kind} {json.dumps(facts, sort_keys=True)}"
    print(line, flush=True)
    console.write(line + "\r\n")
    console.flush()


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def boot_facts() -> dict:
    """What this boot is: the firmware's facts, the root the kernel mounted, the release."""
    facts = {name: int.from_bytes((BOOTLOADER_DIR / name).read_bytes(), "big")
             for name in ("partition", "tryboot") if (BOOTLOADER_DIR / name).exists()}
    root = next((a for a in Path("/proc/cmdline").read_text().split()
                 if a.startswith("root=")), None)
    return {**facts, "root": root, "release": read_text(Path("/etc/hearth-release")),
            "boot_id": read_text(Path("/proc/sys/kernel/random/boot_id"))}


def energy() -> dict | None:
    """The agent's saved counters (agent/persist.py's file: its payload)."""
    text = read_text(ENERGY_FILE)
    if text is None:
        return None
    try:
        return json.loads(text).get("payload")
    except ValueError:
        return {"unreadable": text[:80]}


def ask(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read().decode().strip()
    except OSError:
        return "wait"


def main() -> int:
    settings = json.loads(SETTINGS_FILE.read_text())
    facts = boot_facts()
    url = f"{settings['control_url']}?boot={facts['boot_id']}"
    with open(CONSOLE, "w") as console:
        say(console, "boot", facts)
        last_energy = None
        while True:
            counters = energy()
            if counters != last_energy:
                say(console, "energy", counters or {})
                last_energy = counters
            action = ask(url)
            if action in ("reboot", "poweroff"):
                say(console, "action", {"do": action})
                subprocess.run(["systemctl", action], check=False)
                return 0
            time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
