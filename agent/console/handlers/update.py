"""What the board runs and what its last update did: `version` and `update status`.

Both read files only (the firmware's booted partition and tryboot flag, and the updater's
record on the data partition, agent/update/trial_record.py), never the updater itself, so a
technician sees them while the updater or the agent is down. Paths sit under the processor's
root, as the sysfs files do, so tests lay them out in a directory.
"""

import time
from pathlib import Path

from agent import __version__
from agent.errors import ConfigError, UpdateError
from agent.update.health_gate import DEFAULT_SETTINGS_FILE, GateSettings
from agent.update.slots import DEFAULT_BOOTLOADER_DIR, RaucSlots
from agent.update.trial_record import DEFAULT_RECORD_DIR, TrialRecords


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _booted(root: Path) -> tuple[dict, str]:
    """(the booted slot's facts, a problem or "")."""
    try:
        settings = GateSettings.from_file(_under(root, DEFAULT_SETTINGS_FILE))
        directory = Path(settings.bootloader_dir or DEFAULT_BOOTLOADER_DIR)
        booted = RaucSlots(__version__, bootloader_dir=_under(root, directory)).booted()
    except (ConfigError, UpdateError) as error:
        return {"installed": __version__, "slot": None, "tryboot": None}, str(error)
    return {"installed": booted.version, "slot": booted.slot, "tryboot": booted.tryboot}, ""


def version(processor, args, source):
    data, problem = _booted(processor.root)
    read = TrialRecords.at(_under(processor.root, DEFAULT_RECORD_DIR)).read()
    record = read.record
    data.update(other_slot=record.other_slot if record else None,
                other_version=record.other_version if record else None,
                other_status=record.other_status if record else None)
    if data["slot"] is None:
        lines = [f"Hearth {data['installed']}, booted slot unknown: {problem}"]
    else:
        trial = " (trial boot: not committed yet)" if data["tryboot"] else ""
        lines = [f"Hearth {data['installed']} in slot {data['slot']}{trial}"]
    if read.problem is not None:
        lines.append(f"other slot unknown: {read.problem}")
    elif data["other_slot"] is None:
        lines.append("other slot: not seen by the updater yet")
    else:
        lines.append(f"slot {data['other_slot']}: {data['other_version'] or 'empty'} "
                     f"({data['other_status'] or 'status unknown'})")
    return "\n".join(lines), data


def update_status(processor, args, source):
    read = TrialRecords.at(_under(processor.root, DEFAULT_RECORD_DIR)).read()
    if read.problem is not None:
        return (f"{read.problem}; the updater keeps it aside at its next start and reports "
                "on the update topic"), {"state": None, "problem": read.problem}
    record = read.record
    if record is None or record.state == "idle":
        return "no update on this board yet", {"state": "idle"}
    data = {"state": record.state, "target": record.target, "reason": record.reason,
            "since_ts": record.since_ts}
    when = ("-" if record.since_ts is None
            else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.since_ts)))
    lines = [f"last update: {record.state}, target {record.target or '-'}, since {when}"]
    if record.reason:
        lines.append(f"reason: {record.reason}")
    return "\n".join(lines), data
