"""`hearth agent`: run the board agent on this board, or on a simulated one with --sim."""

import argparse
import os
import signal
import time
from pathlib import Path

from agent.board_agent import BoardAgent, TickReport
from agent.board_state import BoardState
from agent.config import DEFAULT_CONFIG_PATH, load_config, load_connection
from agent.console.transports import DEFAULT_BAUD, DEFAULT_SOCKET, ConsoleService
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.errors import ConfigValueError
from agent.journal_log import log_to_journal
from agent.mqtt.board_link import BoardConnection, BoardLink, connect_board, link_settings
from agent.mqtt.link import LinkSettings
from agent.mqtt.topics import BoardTopics
from agent.safety.events import EventLog
from agent.seam import Hardware
from agent.systemd_notify import Notifier

SIM_IDENTITY = "sim/m1/b01"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent", help="run the board agent (one per board, under systemd)",
        description="Run the board's control loop: sample, supervise, control, govern, "
        "report. With --sim, run it against a simulated oil carrier board instead.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"config file (default {DEFAULT_CONFIG_PATH}); with --sim, only "
                        "its [mqtt] and [identity] are read, and the simulated board logs in to "
                        "that broker with that account (a role config, or the [mqtt] file "
                        "`hearth broker-config` writes for the board)")
    parser.add_argument("--sim", action="store_true", help="run on a simulated board")
    parser.add_argument("--setpoint", type=float, metavar="W",
                        help="power setpoint in watts (default: the config's fallback)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after this many seconds (default: run until stopped)")
    parser.add_argument("--sim-dir", type=Path, metavar="DIR",
                        help="with --sim: keep the simulated board's sysfs tree in DIR "
                        "(default: a temporary directory, removed at exit)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help="latched faults and tuned gains (default "
                        f"{DEFAULT_STATE_DIR}; ignored with --sim)")
    parser.add_argument("--quiet", action="store_true", help="print no state lines")
    parser.add_argument("--mqtt", metavar="HOST:PORT",
                        help="with --sim: connect the simulated board to this broker "
                        "(anonymous, no TLS); --config instead for a broker that wants a login")
    parser.add_argument("--identity", metavar="SITE/MODULE/BOARD",
                        help="with --sim: the board's topic names (default: the --config's "
                        f"[identity], else {SIM_IDENTITY})")
    # Technician console transports (agent/console; docs/console.md).
    parser.add_argument("--console-socket", metavar="PATH",
                        help=f"local console socket for `hearth ctl` and `hearth console` "
                        f"(default {DEFAULT_SOCKET}; with --sim none unless given; '' for none)")
    parser.add_argument("--console-serial", metavar="DEVICE",
                        help="also serve the console on this serial port in-process (default "
                        "none: hearth-console.service owns /dev/serial0)")
    parser.add_argument("--console-baud", type=int, default=DEFAULT_BAUD, metavar="BAUD",
                        help=f"with --console-serial (default {DEFAULT_BAUD}, 8N1)")
    parser.set_defaults(run=run)


def format_report(report: TickReport) -> str:
    def show(value, unit):
        return "-" if value is None else f"{value:.2f} {unit}"

    return (f"mode={report.mode} setpoint={report.setpoint_w:.2f} W "
            f"power={show(report.power_w, 'W')} soc={show(report.soc_c, 'C')} "
            f"oil={show(report.oil_c, 'C')} command={report.command_w:.2f} W "
            f"({report.selected}) freq={report.settings.freq_khz // 1000} MHz")


def run(args: argparse.Namespace) -> int:
    log_to_journal()
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    started = time.monotonic()

    def should_stop() -> bool:
        return bool(stop_requested) or (
            args.duration is not None and time.monotonic() - started >= args.duration)

    if args.sim:
        from agent.sim.scratch import scratch_directory  # the simulator only when asked for

        if args.sim_dir is not None:
            return _run_sim(args.sim_dir, args, should_stop)
        with scratch_directory("hearth-agent-sim-") as directory:
            return _run_sim(Path(directory), args, should_stop)
    events = EventLog()
    state = BoardState(StateStore(args.state_dir), events, time.monotonic(), time.time())
    config = load_config(args.config or DEFAULT_CONFIG_PATH)
    agent = BoardAgent(config, Hardware(), events=events,
                       save_latched=state.save_latched, latched=state.latched,
                       gains=state.gains)
    _print_reports(agent, args.quiet)
    _set_setpoint(agent, args.setpoint)
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))
    console = _start_console(agent, config, args, DEFAULT_SOCKET, args.state_dir)
    board_link = _connect(agent, config, args.state_dir, console)
    try:
        agent.run(time.sleep, should_stop, notifier)
    finally:
        if board_link is not None:
            board_link.close()
        console.close()
        agent.close()
        notifier.close()
    return 0


def _run_sim(directory: Path, args: argparse.Namespace, should_stop) -> int:
    from agent.sim.clock import SimClock
    from agent.sim.harness import SimulatedAgent

    simulated = SimulatedAgent(directory, SimClock(time.monotonic()), events=EventLog())
    _print_reports(simulated.agent, args.quiet)
    _set_setpoint(simulated.agent, args.setpoint)
    console = _start_console(simulated.agent, load_config(simulated.config_path), args, None,
                             None)
    board_link = None
    connection = _sim_connection(args)
    if connection is not None:
        settings, topics = connection
        board_link = connect_board(simulated.agent, BoardConnection(
            settings, topics, directory / "outbox", time.time), commands=console.processor)
    try:
        simulated.run_realtime(time.monotonic, time.sleep, should_stop)
    finally:
        if board_link is not None:
            board_link.close()
        console.close()
        simulated.agent.close()
    return 0


def _sim_connection(args: argparse.Namespace) -> tuple[LinkSettings, BoardTopics] | None:
    """Where and as whom a simulated board connects: anonymously to --mqtt, or with the
    [mqtt] of --config (brokers, account, TLS), as a board of a deployed site does."""
    if args.mqtt and args.config:
        raise ConfigValueError("--mqtt and --config both given: --mqtt connects anonymously, "
                               "--config logs in with the file's [mqtt]; give one")
    identity = None
    if args.config:
        mqtt, identity = load_connection(args.config)
        settings = link_settings(mqtt)
    elif args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        settings = LinkSettings(host, int(port), keepalive_s=5, reconnect_max_s=5)
    else:
        return None
    if args.identity:
        site, module, board = (args.identity.split("/") + ["", ""])[:3]
    elif identity is not None:
        site, module, board = identity.site, identity.module, identity.board
    else:
        site, module, board = SIM_IDENTITY.split("/")
    return settings, BoardTopics(site, module, board)


def _start_console(agent: BoardAgent, config, args: argparse.Namespace,
                   default_socket: Path | None, state_dir: Path | None) -> ConsoleService:
    """The technician console's socket and serial transports, on their own threads; the loop
    runs queued console work between periods through the hook around should_stop."""
    socket_path = args.console_socket if args.console_socket is not None else default_socket
    console = ConsoleService(agent, config, socket_path=Path(socket_path) if socket_path else None,
                             serial_device=args.console_serial, baud=args.console_baud,
                             state_dir=state_dir)
    console.start()
    return console


def _connect(agent: BoardAgent, config, state_dir: Path,
             console: ConsoleService) -> BoardLink | None:
    """The board's MQTT link if the config has [mqtt] and [identity]; else it runs alone."""
    if config.mqtt is None:
        return None
    if config.identity is None:
        print("<4>mqtt: the config has [mqtt] but no [identity]; running without the broker "
              "until the board knows its name (add [identity] to the config)", flush=True)
        return None
    identity = config.identity
    return connect_board(agent, BoardConnection(
        link_settings(config.mqtt), BoardTopics(identity.site, identity.module, identity.board),
        state_dir / "outbox", time.time), commands=console.processor,
        energy_store=StateStore(state_dir))


def _print_reports(agent: BoardAgent, quiet: bool) -> None:
    """A state line per report on stdout (the journal), unless --quiet."""
    if not quiet:
        agent.add_report_listener(
            "stdout", lambda report: print(format_report(report), flush=True))


def _set_setpoint(agent: BoardAgent, watts: float | None) -> None:
    if watts is not None:
        accepted, reason = agent.set_setpoint(watts)
        if not accepted:
            raise ConfigValueError(f"--setpoint {watts:g}: {reason}")
