"""`hearth site`: turn building demand into module budgets (docs/leader.md)."""

import argparse
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.drivers.base import DriverContext
from agent.drivers.registry import build_sensors
from agent.errors import ConfigValueError
from agent.ha_announce import DiscoveryAnnouncer
from agent.ha_discovery import site_discovery
from agent.journal_log import log_to_journal
from agent.metrics import site_exposition, start_endpoint
from agent.mqtt.board_link import link_settings
from agent.mqtt.link import Link
from agent.mqtt.outbox import Outbox
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.seam import Hardware
from agent.site.role import SiteRole, SiteSettings, site_topics
from agent.site.target_plan import TargetPlan, plan_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "site", help="run the site role: building demand into module budgets",
        description="Find the building's demand (tank/loop temperature against a target, or "
        "site/demand in watts), split it across modules by capacity, publish site totals.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config with [identity], [mqtt] and [site] (default "
                        f"{DEFAULT_CONFIG_PATH})")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where the outbox spills and the site keeps its target, mode, "
                        f"controller state and energy totals (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after this many seconds (default: run until stopped)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    log_to_journal()
    config = load_config(args.config)
    if config.identity is None or config.mqtt is None or config.site is None:
        raise ConfigValueError(f"{args.config}: `hearth site` needs [identity] (site), [mqtt] "
                               "and [site]; see docs/leader.md")
    options = config.site
    site = config.identity.site
    context = DriverContext(Hardware())
    sensors: list = []

    def reader(key: str, reading_name: str) -> Callable[[], float | None] | None:
        """A function reading one [[sensor]] reading named by site.<key> (None when not ok)."""
        if not reading_name:
            return None
        name = reading_name.split(".")[0]
        built = build_sensors([s for s in config.sensors if s.name == name], context)
        if not built:
            raise ConfigValueError(f"{args.config}: site.{key} = {reading_name!r}"
                                   " names no [[sensor]] in this file; add it or fix the name")
        sensors.extend(built)

        def read() -> float | None:
            readings = {r.sensor: r for sensor in built for r in sensor.read()}
            reading = readings.get(reading_name)
            return reading.value if reading is not None and reading.ok else None
        return read

    read_loop_c = reader("loop_reading", options.loop_reading)
    read_outdoor_c = reader("outdoor_reading", options.outdoor_reading)

    link = Link(link_settings(config.mqtt), client_id=f"hearth-{site}-site",
                outbox=Outbox(args.state_dir / "site-outbox"), boot=str(uuid.uuid4()),
                status_topic=site_topics(site)["status"])
    settings = SiteSettings(period_s=options.period_s, target_c=options.target_c,
                            proportional_band_k=options.proportional_band_k,
                            integral_time_s=options.integral_time_s,
                            demand_timeout_s=options.demand_timeout_s,
                            eco_target_c=options.eco_c,
                            outdoor_timeout_s=options.outdoor_timeout_s)
    plan, zone = plan_settings(options, args.config, settings.target_min_c,
                               settings.target_max_c)
    role = SiteRole(site, link, time.monotonic, settings, read_loop_c,
                    store=StateStore(args.state_dir),
                    plan=TargetPlan(plan, zone, max_gap_s=3 * settings.period_s),
                    read_outdoor_c=read_outdoor_c)
    role.start()
    link.start()
    discovery = DiscoveryAnnouncer(link).start()
    discovery.announce(*site_discovery(site, settings.target_min_c, settings.target_max_c))
    metrics = start_endpoint(lambda: site_exposition(site, role.snapshot),
                             options.metrics_address, options.metrics_port,
                             "[site] metrics_address and metrics_port")
    stop_requested: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    started = time.monotonic()
    try:
        role.run(lambda: bool(stop_requested) or (
            args.duration is not None and time.monotonic() - started >= args.duration))
    finally:
        role.close()
        link.close()
        for sensor in sensors:
            sensor.close()
        context.close()
        if metrics is not None:
            metrics.close()
    return 0
