"""`hearth report`: record the site's ledger, or make a month's statement from it (docs/report.md)."""

import argparse
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.errors import ConfigValueError
from agent.persist import DEFAULT_STATE_DIR

DEFAULT_LEDGER_DIR = DEFAULT_STATE_DIR / "ledger"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="record the site's energy ledger, or write a month's public statement",
        description="With --month: the site's statement for that month (HTML, JSON and CSV "
        "figures in --out), or with --csv the month's energy per day and module for billing "
        "on stdout. With --record: follow the site broker and append the ledger every quarter "
        "hour until stopped.")
    parser.add_argument("--site", metavar="SITE",
                        help="the site (default: [identity] site of --config)")
    parser.add_argument("--month", metavar="YYYY-MM", help="the month of the statement (UTC)")
    parser.add_argument("--csv", action="store_true",
                        help="print the month's energy per day and module as CSV, for billing")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="where the statement's SITE-MONTH.html, .json and .csv go "
                        "(default: here)")
    parser.add_argument("--record", action="store_true",
                        help="record the ledger from the site broker ([mqtt] of --config)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config with [report] (factors, tariffs), and for --record "
                        f"[identity] and [mqtt] (default {DEFAULT_CONFIG_PATH}; without it "
                        "the statement uses [report]'s defaults)")
    parser.add_argument("--ledger-dir", type=Path, default=DEFAULT_LEDGER_DIR, metavar="DIR",
                        help=f"where the ledger's month files are (default {DEFAULT_LEDGER_DIR})")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="with --record: stop after this many seconds")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = None
    if args.record or args.config != DEFAULT_CONFIG_PATH or DEFAULT_CONFIG_PATH.exists():
        config = load_config(args.config)
    site = args.site or (config.identity.site if config is not None and config.identity
                         else None)
    if site is None:
        raise ConfigValueError("which site? give --site, or a --config with [identity] site")
    if args.record:
        return record(args, config, site)
    if args.month is None:
        raise ConfigValueError("--month YYYY-MM is needed for a statement (or --record to "
                               "record the ledger)")
    from agent.fleet.ledger_file import LedgerFile
    from agent.fleet.report import energy_csv, figures_csv, month_rows, report_defaults
    from agent.fleet.report import statement
    from agent.fleet.report_html import render
    ledger = LedgerFile(args.ledger_dir, site)
    rows = month_rows(ledger, args.month, "`hearth report --record` runs at the site")
    if args.csv:
        sys.stdout.write(energy_csv(site, rows, args.month))
        return 0
    factors = config.report if config is not None and config.report is not None else (
        report_defaults())
    figures = statement(site, args.month, rows, factors)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{site}-{args.month}"
    stem.with_suffix(".html").write_text(render(figures), encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".csv").write_text(figures_csv(figures), encoding="utf-8")
    print(f"statement for {site} {args.month}: {stem}.html, .json, .csv "
          f"({len(rows)} ledger rows, {figures['hours_recorded']:.0f} h recorded)")
    return 0


def record(args: argparse.Namespace, config, site: str) -> int:
    """Follow the site broker and append the ledger until stopped (SIGTERM) or --duration."""
    from agent.fleet.ledger_file import LedgerFile
    from agent.fleet.ledger_recorder import LedgerRecorder
    from agent.journal_log import log_to_journal
    from agent.mqtt.board_link import link_settings
    from agent.mqtt.link import Link
    from agent.mqtt.outbox import Outbox
    if config.mqtt is None:
        raise ConfigValueError(f"{args.config}: `hearth report --record` needs [mqtt] (the site "
                               "broker); see docs/mqtt.md")
    log_to_journal()
    link = Link(link_settings(config.mqtt), client_id=f"hearth-{site}-ledger",
                outbox=Outbox(args.ledger_dir / "outbox"), boot=str(uuid.uuid4()))
    recorder = LedgerRecorder(site, link, LedgerFile(args.ledger_dir, site), time.time,
                              logging.getLogger("hearth.report"))
    recorder.start()
    link.start()
    stop_requested: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    started = time.monotonic()
    try:
        recorder.run(lambda: bool(stop_requested) or (
            args.duration is not None and time.monotonic() - started >= args.duration))
    finally:
        link.close()
    return 0
