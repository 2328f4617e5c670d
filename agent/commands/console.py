"""`hearth console`: the technician console on the board's serial port, as its own service.

It runs apart from the agent (hearth-console.service, on /dev/serial0 at 115200 8N1) so that
a technician on the serial cable is answered even when the agent has stopped or crashed: the
prompt then says NO-AGENT, the commands that do not need the agent (help, config, w1 list)
still work, and the rest say why they cannot be done and where to look.
"""

import argparse
import signal
import sys
import threading
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH
from agent.console.commands import CommandProcessor
from agent.console.transports import (
    DEFAULT_BAUD, DEFAULT_SERIAL, DEFAULT_SOCKET, RemoteExecutor, SerialTransport, SocketClient)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "console", help="serve the technician console on the serial port",
        description="Serve the technician console on a serial port (8N1), passing commands to "
        "the agent over its local socket; keeps answering when the agent is down.")
    parser.add_argument("--device", default=DEFAULT_SERIAL, metavar="DEV",
                        help=f"serial device (default {DEFAULT_SERIAL}; on a Compute Module "
                        "perhaps /dev/ttyAMA1 or the USB gadget's /dev/ttyGS0)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"baud rate (default {DEFAULT_BAUD})")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the agent's console socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config for the commands that work without the agent "
                        f"(default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="where sysfs is (default /; a simulated tree for tests)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    executor = RemoteExecutor(SocketClient(args.socket),
                              CommandProcessor.without_agent(args.config, root=args.root))
    transport = SerialTransport(executor, args.device, args.baud,
                                lambda message: print(message, file=sys.stderr, flush=True))
    transport.start()
    try:
        stop.wait()
    finally:
        transport.stop()
    return 0
