"""`hearth update-board`: the board's updater (`run`, as root in hearth-updater.service) and
what it last did (`status`). docs/updates.md, "On the board: install, trial and health gate"."""

import argparse
import signal
import threading
import time
import uuid
from pathlib import Path

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, load_config, load_connection
from agent.errors import ConfigValueError
from agent.journal_log import log_to_journal
from agent.mqtt.board_link import link_settings
from agent.mqtt.link import Link
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.update.health_gate import DEFAULT_SETTINGS_FILE, GateSettings, SystemdService
from agent.update.slots import DEFAULT_BOOTLOADER_DIR, RaucSlots
from agent.update.trial_record import DEFAULT_RECORD_DIR, TrialRecords
from agent.update.updater import Updater

DEFAULT_LOGIN = Path("/etc/hearth/updater-mqtt.toml")
"""The updater's own MQTT login: a board account carries one connection (the broker takes a
client id to be its username), and that one is the agent's."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "update-board", help="the board's updater: take cmd/update, install, try, commit (root)",
        description="Install updates sent by the site into the other slot, try them once and "
        "commit them only after the health gate passes (docs/updates.md).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_parser = actions.add_parser("run", help="the updater service (root, "
                                    "hearth-updater.service)")
    run_parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                            help=f"the board's config, for its identity (default "
                            f"{DEFAULT_CONFIG_PATH})")
    run_parser.add_argument("--login", type=Path, default=DEFAULT_LOGIN, metavar="FILE",
                            help="the updater's [mqtt] section, as `hearth broker-config` "
                            f"writes one for an account (default {DEFAULT_LOGIN})")
    run_parser.set_defaults(run=run)
    status_parser = actions.add_parser("status", help="the last update as recorded")
    status_parser.set_defaults(run=status)
    for each in (run_parser, status_parser):
        each.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS_FILE,
                          metavar="FILE", help=f"health window, hold time, bootloader_dir "
                          f"(default {DEFAULT_SETTINGS_FILE})")
        each.add_argument("--records", type=Path, default=DEFAULT_RECORD_DIR, metavar="DIR",
                          help=f"the update record on the data partition (default "
                          f"{DEFAULT_RECORD_DIR})")


def _slots(settings: GateSettings) -> RaucSlots:
    return RaucSlots(__version__,
                     bootloader_dir=Path(settings.bootloader_dir or DEFAULT_BOOTLOADER_DIR))


def run(args: argparse.Namespace) -> int:
    log_to_journal()
    settings = GateSettings.from_file(args.settings)
    identity = load_config(args.config).identity
    if identity is None:
        raise ConfigValueError(f"{args.config}: the board has no [identity]; the updater "
                               "takes cmd/update on its board's topics and cannot start "
                               "without them")
    mqtt, _ = load_connection(args.login)
    topics = BoardTopics(identity.site, identity.module, identity.board)
    link = Link(link_settings(mqtt), client_id=f"{topics.client_id}-updater",
                outbox=Outbox(args.records / "outbox"), boot=str(uuid.uuid4()),
                wall_clock=time.time)
    updater = Updater(_slots(settings), link, topics, TrialRecords.at(args.records), settings,
                      SystemdService())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        updater.run(stop)
    finally:
        updater.close()
    return 0


def status(args: argparse.Namespace) -> int:
    """The record as the updater left it, and what the firmware booted."""
    read = TrialRecords.at(args.records).read()
    if read.problem is not None:
        print(read.problem)
        return 1
    record = read.record
    booted = _slots(GateSettings.from_file(args.settings)).booted()
    print(f"installed {booted.version} in slot {booted.slot}"
          f"{' (trial boot)' if booted.tryboot else ''}")
    if record is None:
        print("no update yet")
        return 0
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.since_ts))
            if record.since_ts is not None else "-")
    print(f"last update: {record.state}, target {record.target or '-'}, since {when}")
    if record.reason:
        print(f"reason: {record.reason}")
    if record.other_slot:
        print(f"slot {record.other_slot}: {record.other_version or 'empty'} "
              f"({record.other_status or 'unknown'})")
    return 0
