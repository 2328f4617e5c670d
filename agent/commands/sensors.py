"""`hearth sensors`: sample every configured sensor once and show each reading's validity."""

import argparse
import json
import time
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_config
from agent.drivers.base import DriverContext
from agent.drivers.ds18b20 import CONVERSION_S
from agent.drivers.registry import build_sensors
from agent.readings import Reading
from agent.seam import Hardware


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sensors", help="sample every configured sensor once",
        description="Sample every configured sensor once and print each reading with its "
        "validity (ok, stale, invalid, missing) and the reason. Takes about one second: "
        "1-wire sensors need one bulk conversion.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="where sysfs and procfs are (default /; a copied tree for tests)")
    parser.add_argument("--json", action="store_true", help="print JSON for tools")
    parser.set_defaults(run=run)


def sample_once(sensors, sleep=time.sleep) -> list[Reading]:
    """Read twice, one 1-wire conversion time apart: the first read starts the conversion."""
    for sensor in sensors:
        sensor.read()
    sleep(CONVERSION_S + 0.05)
    return [reading for sensor in sensors for reading in sensor.read()]


def format_reading(reading: Reading) -> str:
    value = "-" if reading.value is None else f"{reading.value:.3f} {reading.unit}"
    line = f"{reading.sensor:<28} {value:>16}  {reading.validity.value:<8}"
    return f"{line} {reading.reason}".rstrip()


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    context = DriverContext(Hardware(root=args.root))
    sensors = build_sensors(config.sensors, context)
    try:
        readings = sample_once(sensors)
    finally:
        for sensor in sensors:
            sensor.close()
        context.close()
    if args.json:
        print(json.dumps([reading.as_dict() for reading in readings], indent=2))
    else:
        for reading in readings:
            print(format_reading(reading))
    return 0
