"""`hearth sim`: a whole site on this machine - the site role, a leader per module and every
board's agent, over real MQTT - playing a site scenario, with a live view and a report.

The broker is a Mosquitto of the run's own on a free loopback port (agent/sim/mosquitto.py),
the broker a site runs, unless `--broker HOST:PORT` names a running one.
"""

import argparse
import gc
import logging
import os
import sys
import time
from pathlib import Path

from agent.errors import ConfigValueError
from agent.sim.live_view import LiveView
from agent.sim.mosquitto import Mosquitto, find_mosquitto
from agent.sim.report import format_summary, summarize, write_report
from agent.sim.scratch import scratch_directory
from agent.sim.site import BrokerAccess, SiteLayout, SiteSimulation
from agent.sim.site_scenario import builtin_site_scenarios, load_site_scenario

DEFAULT_SCENARIO = "showcase"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sim", help="run a simulated site (site role, leaders, boards) over MQTT",
        description="Run a whole simulated site in this process: the site role, one leader "
        "per module and every board's own agent, each on its own MQTT connection, heating a "
        "tank a building draws from, through a scenario; show it live and write a report.")
    parser.add_argument("--modules", type=int, default=2, metavar="N",
                        help="modules in the site (default 2)")
    parser.add_argument("--boards", type=int, default=16, metavar="N",
                        help="boards per module (default 16)")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO, metavar="NAME|FILE",
                        help=f"a built-in site scenario ({', '.join(builtin_site_scenarios())})"
                        f" or a .toml file (default {DEFAULT_SCENARIO})")
    parser.add_argument("--speed", type=float, default=0.0, metavar="X",
                        help="simulated seconds per wall second; 0 (default) runs as fast as "
                        "it can")
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="use this MQTT broker instead of starting a Mosquitto of the "
                        "run's own (broker outages in the scenario are then skipped)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="worker processes that step most of the boards on the other "
                        f"cores (default: one fewer than the cores, {default_workers()} here); "
                        "0 steps every board in this process")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="where to write the report (default reports/sim-<scenario>-<time>)")
    parser.set_defaults(run=run)


def default_workers() -> int:
    return max(0, (os.cpu_count() or 1) - 1)


def parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigValueError(f"--broker {text!r}: expected HOST:PORT, like 127.0.0.1:1883")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise ConfigValueError(f"--workers {args.workers}: expected 0 or more")
    if args.modules < 1 or args.boards < 1:
        raise ConfigValueError(f"--modules {args.modules} --boards {args.boards}: expected at "
                               "least one module of at least one board")
    external = parse_broker(args.broker) if args.broker else None
    if external is None:
        find_mosquitto()  # not installed: say so before a report directory is made
    scenario = load_site_scenario(args.scenario)
    layout = SiteLayout(args.modules, args.boards)
    report_dir = args.report or Path("reports") / (
        f"sim-{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    report_dir.mkdir(parents=True, exist_ok=True)
    log_handler = _log_to(report_dir / "sim.log")
    try:
        with scratch_directory("hearth-sim-") as directory:
            broker = None
            if external is not None:
                host, port = external
                access = BrokerAccess(host, port, None, f"external {host}:{port}")
            else:
                broker = Mosquitto.on_loopback(Path(directory) / "broker",
                                               log_path=report_dir / "mosquitto.log").start()
                logging.getLogger("hearth.sim").info(
                    "broker: Mosquitto (pid %d) on %s:%d, persistence on; its log is %s",
                    broker.process.pid, broker.host, broker.port, broker.log_path)
                access = BrokerAccess.own(broker)
            try:
                recording = _run_site(args, scenario, layout, Path(directory), access,
                                      report_dir)
            finally:
                if broker is not None:
                    broker.stop()
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
    summary = summarize(recording)
    paths = write_report(recording, report_dir)
    print()
    print(format_summary(summary))
    names = sorted(p.name for p in paths.values()) + ["sim.log"] + (
        [] if external else ["mosquitto.log"])
    print(f"\nReport: {report_dir}/ ({', '.join(names)})")
    return 0


def _run_site(args: argparse.Namespace, scenario, layout: SiteLayout, directory: Path,
              access: BrokerAccess, report_dir: Path):
    print(f"hearth sim: {layout.modules} modules x {layout.boards_per_module} boards, "
          f"scenario {scenario.name!r} ({scenario.duration_s / 3600:g} h simulated), "
          f"{access.name} broker on port {access.port}", flush=True)
    print(f"  {scenario.description}", flush=True)
    simulation = SiteSimulation(scenario, layout, directory, access, workers=args.workers,
                                worker_log=report_dir / "sim.log")
    gc.collect()
    gc.freeze()  # the site lives as long as the run: keep it out of every collection
    try:
        return simulation.run(args.speed, LiveView(sys.stdout, sys.stdout.isatty()))
    finally:
        simulation.close()


def _log_to(path: Path) -> logging.Handler:
    """Every role's log lines go to the report's sim.log: hundreds of boards' warnings would
    bury the live view, and next to the plots is where someone looks for them."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
