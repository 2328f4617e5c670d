"""`hearth fleet`: the centre's own roles (docs/fleet.md "The fleet ledger", "Metrics at the
centre"): `ledger` follows every site's hub stream into the fleet ledger, `energy` prints a
site's month from it for billing, `metrics` feeds the streams' leader states to
VictoriaMetrics."""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from agent.persist import DEFAULT_STATE_DIR

DEFAULT_LEDGER_DIR = DEFAULT_STATE_DIR / "fleet-ledger"
DEFAULT_METRICS_DIR = DEFAULT_STATE_DIR / "fleet-metrics"
DEFAULT_VICTORIA_METRICS = "http://127.0.0.1:8428"
RETRY_S = 10.0
"""How long a site's feed waits before it sends again a batch VictoriaMetrics did not take."""
FOLLOW_BATCH = 5000
"""Messages a site's consumer takes before it looks whether to stop."""
START_RETRY_MIN_S = 1.0
START_RETRY_MAX_S = 30.0
HELP = "the centre: the fleet ledger, billing CSV and metrics from every site's hub stream"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fleet", help=HELP, description=(
        "ledger: follow every site's stream at the hub (a durable consumer `ledger` each) and "
        "append each site's ledger rows, as the site's own recorder does. energy: a site's "
        "month from that ledger as CSV, per day and module, for billing. metrics: follow every "
        "site's stream (a durable consumer `metrics` each) into VictoriaMetrics."))
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ledger_parser = actions.add_parser("ledger", help="run the fleet ledger")
    ledger_parser.add_argument("--fleet", type=Path, required=True, metavar="FILE",
                               help="the fleet inventory TOML (docs/fleet.md)")
    ledger_parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                               help="hearth uplink nats-config's directory (the fleet login)")
    ledger_parser.add_argument("--ledger-dir", type=Path, default=DEFAULT_LEDGER_DIR,
                               metavar="DIR", help=f"default {DEFAULT_LEDGER_DIR}")
    ledger_parser.add_argument("--leader-timeout", type=float, default=30.0, metavar="S",
                               help="a gap between a leader's states longer than this is not "
                               "uptime (the site role's leader_timeout_s; default 30)")
    ledger_parser.add_argument("--row-s", type=float, default=900.0, metavar="S",
                               help="length of a row (default 900: the quarter hour meters "
                               "settle on; shorter only for a trial that must close rows)")
    ledger_parser.add_argument("--duration", type=float, metavar="S",
                               help="stop after this many seconds (default: run until stopped)")
    ledger_parser.set_defaults(run=ledger)
    energy_parser = actions.add_parser("energy", help="a site's month as CSV, for billing")
    energy_parser.add_argument("--site", required=True)
    energy_parser.add_argument("--month", required=True, metavar="YYYY-MM")
    energy_parser.add_argument("--ledger-dir", type=Path, default=DEFAULT_LEDGER_DIR,
                               metavar="DIR", help=f"default {DEFAULT_LEDGER_DIR}")
    energy_parser.set_defaults(run=energy)
    metrics_parser = actions.add_parser("metrics", help="feed the sites' metrics to "
                                        "VictoriaMetrics")
    metrics_parser.add_argument("--fleet", type=Path, required=True, metavar="FILE",
                                help="the fleet inventory TOML (docs/fleet.md)")
    metrics_parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                                help="hearth uplink nats-config's directory (the fleet login)")
    metrics_parser.add_argument("--victoria-metrics", default=DEFAULT_VICTORIA_METRICS,
                                metavar="URL", help=f"default {DEFAULT_VICTORIA_METRICS}")
    metrics_parser.add_argument("--state-dir", type=Path, default=DEFAULT_METRICS_DIR,
                                metavar="DIR", help="each site's position and counters "
                                f"(default {DEFAULT_METRICS_DIR})")
    metrics_parser.add_argument("--duration", type=float, metavar="S",
                                help="stop after this many seconds (default: run until stopped)")
    metrics_parser.set_defaults(run=metrics)


def stop_event(duration_s: float | None) -> asyncio.Event:
    """Set by SIGTERM, SIGINT or the end of --duration: the centre's roles stop on it."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if duration_s is not None:
        loop.call_later(duration_s, stopping.set)
    return stopping


async def hub_login(servers: list[str], password: str):
    """The fleet login's connection to the hub, and JetStream in the hub's domain."""
    import nats

    from agent.deploy.nats_config import FLEET_USER
    from agent.fleet.subjects import HUB_DOMAIN

    connection = await nats.connect(servers, user=FLEET_USER, password=password)
    return connection, connection.jetstream(domain=HUB_DOMAIN)


async def started(start, what: str, stopping: asyncio.Event, log: logging.Logger) -> bool:
    """Await `start()` until the hub answers it; False when stopped first. A hub electing its
    stream's leader refuses or times out for seconds, and a site's stream may not be made yet
    (`hearth uplink hub-streams`): the site waits and says so, rather than the command exiting
    with a traceback."""
    import nats.errors

    wait_s = START_RETRY_MIN_S
    while not stopping.is_set():
        try:
            await start()
            return True
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            log.warning("%s: the hub did not take its consumer: %s; trying again in %g s (a "
                        "stream not found: run hearth uplink hub-streams)", what,
                        str(error) or type(error).__name__, wait_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), wait_s)
        wait_s = min(2 * wait_s, START_RETRY_MAX_S)
    return False


def energy(args: argparse.Namespace) -> int:
    from agent.fleet.ledger_file import LedgerFile
    from agent.fleet.report import energy_csv, month_rows
    rows = month_rows(LedgerFile(args.ledger_dir, args.site), args.month,
                      "`hearth fleet ledger` runs at the centre")
    sys.stdout.write(energy_csv(args.site, rows, args.month))
    return 0


def ledger(args: argparse.Namespace) -> int:
    from agent.deploy.nats_config import fleet_login, load_fleet
    from agent.fleet.centre import FleetLedger, SiteConsumer
    from agent.fleet.ledger_file import LedgerFile
    from agent.journal_log import log_to_journal

    fleet = load_fleet(args.fleet)
    servers, password = fleet_login(fleet, args.out)
    log_to_journal()
    log = logging.getLogger("hearth.fleet")

    async def main() -> None:
        stopping = stop_event(args.duration)
        connection, jetstream = await hub_login(servers, password)
        consumers = [SiteConsumer(jetstream, FleetLedger(
            site.name, LedgerFile(args.ledger_dir, site.name), time.time, log,
            args.leader_timeout, args.row_s)) for site in fleet.sites]

        async def follow(consumer: SiteConsumer) -> None:
            if not await started(consumer.start, f"fleet ledger {consumer.ledger.site}",
                                 stopping, log):
                return
            while not stopping.is_set():
                await consumer.pump(max_messages=FOLLOW_BATCH)

        following = asyncio.gather(*(follow(consumer) for consumer in consumers))
        stopped = asyncio.ensure_future(stopping.wait())
        await asyncio.wait((following, stopped), return_when=asyncio.FIRST_COMPLETED)
        # A pump waits for FOLLOW_BATCH messages, so a site that sends a few a second would
        # hold the stop for minutes: stopped anywhere, it is what a crash leaves, which the
        # ledger is made for (acknowledged only up to rows on disk).
        following.cancel()
        try:
            await following
        except asyncio.CancelledError:
            pass
        await connection.close()
        for consumer in consumers:
            log.info("fleet ledger %s: %d rows written, %d messages rejected",
                     consumer.ledger.site, consumer.ledger.rows_written,
                     consumer.ledger.rejected_messages)

    asyncio.run(main())
    return 0


def metrics(args: argparse.Namespace) -> int:
    from agent.deploy.nats_config import fleet_login, load_fleet
    from agent.fleet.metrics_feed import FeedStateDamaged, MetricsFeed
    from agent.fleet.victoria import MetricsStoreError, VictoriaMetrics
    from agent.journal_log import log_to_journal
    from agent.persist import StateStore

    fleet = load_fleet(args.fleet)
    servers, password = fleet_login(fleet, args.out)
    victoria = VictoriaMetrics(args.victoria_metrics)
    victoria.check_deduplicates()
    log_to_journal()
    log = logging.getLogger("hearth.fleet")
    store = StateStore(args.state_dir)

    async def main() -> None:
        stopping = stop_event(args.duration)
        connection, jetstream = await hub_login(servers, password)
        feeds = [MetricsFeed(jetstream, site.name, store, victoria) for site in fleet.sites]

        async def follow(feed: MetricsFeed) -> None:
            try:
                if not await started(feed.start, f"fleet metrics {feed.site}", stopping, log):
                    return
            except FeedStateDamaged as error:
                log.error("%s", error)
                return
            while not stopping.is_set():
                try:
                    await feed.pump(max_messages=FOLLOW_BATCH)
                except MetricsStoreError as error:
                    log.warning("fleet metrics %s: %s; the batch is sent again in %g s",
                                feed.site, error, RETRY_S)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), RETRY_S)

        await asyncio.gather(*(follow(feed) for feed in feeds))
        await connection.close()
        for feed in feeds:
            log.info("fleet metrics %s: %d samples sent, %d leader states rejected",
                     feed.site, feed.samples_sent, feed.series.rejected_messages)

    asyncio.run(main())
    return 0
