"""`hearth leader`: run one module's leader (and, with --site, the site role in the same process)."""

import argparse
import signal
import time
import uuid
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.config_schema import LEADER_ROLE_KEYS
from agent.drivers.base import DriverContext
from agent.drivers.registry import build_sensors
from agent.errors import ConfigValueError
from agent.ha_announce import DiscoveryAnnouncer
from agent.journal_log import log_to_journal
from agent.leader.role import (LINK_WINDOW, LeaderRole, LeaderSettings, ModuleReadings,
                               module_topics)
from agent.metrics import exposition, start_endpoint
from agent.mqtt.board_link import link_settings
from agent.mqtt.link import Link
from agent.mqtt.outbox import Outbox
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.seam import Hardware


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "leader", help="run the module leader (one per module, on one of its boards)",
        description="Split the module's heat budget into board setpoints, watch the boards, "
        "hold the module interlock, keep the energy ledger, serve /metrics (docs/leader.md).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config file with [identity], [mqtt] and [leader] (default "
                        f"{DEFAULT_CONFIG_PATH})")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where the energy ledger is kept (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after this many seconds (default: run until stopped)")
    parser.set_defaults(run=run)


class ModuleSensors:
    """The sensors serving the module's roles (resolved when the config was loaded), read once
    per leader period."""

    def __init__(self, config, hardware: Hardware):
        self.readings = {role: config.roles.get(role) for role in LEADER_ROLE_KEYS}
        """module role -> the reading that serves it, None where no sensor has the role"""
        wanted = {reading.partition(".")[0] for reading in self.readings.values() if reading}
        self.context = DriverContext(hardware)
        self.sensors = build_sensors([s for s in config.sensors if s.name in wanted],
                                     self.context)

    def read(self) -> ModuleReadings:
        readings = {r.sensor: r for sensor in self.sensors for r in sensor.read()}

        def value(role: str) -> float | None:
            reading = readings.get(self.readings[role])
            return reading.value if reading is not None and reading.ok else None

        return ModuleReadings(value("module_water_in"), value("module_water_out"),
                              value("module_flow"), value("module_oil"))

    def close(self) -> None:
        for sensor in self.sensors:
            sensor.close()
        self.context.close()


def run(args: argparse.Namespace) -> int:
    log_to_journal()
    config = load_config(args.config)
    if config.identity is None or config.mqtt is None or config.leader is None:
        raise ConfigValueError(f"{args.config}: `hearth leader` needs [identity] (site, module), "
                               "[mqtt] (the site broker) and [leader]; see docs/leader.md")
    site, module = config.identity.site, config.identity.module
    options = config.leader
    sensors = ModuleSensors(config, Hardware())
    settings = LeaderSettings(
        period_s=options.period_s, silence_timeout_s=options.silence_timeout_s,
        budget_w=options.budget_w,
        flow_min_l_per_min=options.flow_min_l_per_min if "module_flow" in config.roles else None,
        oil_max_c=options.oil_max_c if "module_oil" in config.roles else None,
        interlock_clear_s=options.interlock_clear_s)
    topics = module_topics(site, module)
    link = Link(link_settings(config.mqtt), client_id=f"hearth-{site}-{module}-leader",
                outbox=Outbox(args.state_dir / "leader-outbox"), boot=str(uuid.uuid4()),
                status_topic=topics["status"], window=LINK_WINDOW)
    role = LeaderRole(site, module, link, time.monotonic, settings, sensors.read,
                      StateStore(args.state_dir), discovery=DiscoveryAnnouncer(link))
    role.start()
    link.start()
    metrics = start_endpoint(lambda: exposition(site, module, role.snapshot),
                             options.metrics_address, options.metrics_port,
                             "[leader] metrics_address and metrics_port")
    stop_requested: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    started = time.monotonic()
    try:
        role.run(lambda: bool(stop_requested) or (
            args.duration is not None and time.monotonic() - started >= args.duration))
    finally:
        role.close()
        link.close()
        sensors.close()
        if metrics is not None:
            metrics.close()
    return 0
