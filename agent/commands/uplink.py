"""`hearth uplink`: carry a site's record to the fleet's hub over NATS JetStream (docs/fleet.md):
`run` at the site, `nats-config` and `hub-streams` at the centre.

The NATS configuration is a sibling of `hearth broker-config`, not a part of it: the hub's
servers hold every site's login, which no one site's inventory knows.
"""

import argparse
import asyncio
import logging
import signal
import subprocess
from pathlib import Path

from agent.errors import ConfigFileError, HearthError

HELP = "carry the site's telemetry, events and ledgers to the fleet's hub (NATS)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("uplink", help=HELP, description=(
        "run: read the site broker (the `uplink` account of hearth broker-config) and store "
        "every message with an envelope in the site's JetStream stream on its leaf node, "
        "which the hub sources. nats-config: write the hub's three servers' and every site's "
        "leaf node's nats.conf from a fleet inventory. hub-streams: make the hub's stream of "
        "every site."))
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_parser = actions.add_parser("run", help="run the site's uplink")
    run_parser.add_argument("--site", required=True, help="the site's name")
    run_parser.add_argument("--mqtt", type=Path, required=True, metavar="FILE",
                            help="the [mqtt] section of the uplink account "
                            "(hearth broker-config's clients/uplink/mqtt.toml)")
    run_parser.add_argument("--nats", type=Path, required=True, metavar="FILE",
                            help="the [nats] section (hearth uplink nats-config's "
                            "site/<site>/uplink.toml)")
    run_parser.add_argument("--duration", type=float, metavar="S",
                            help="stop after this many seconds (default: run until stopped)")
    run_parser.set_defaults(run=run)
    config_parser = actions.add_parser("nats-config", help="write the hub's and the leaf "
                                       "nodes' NATS configs")
    config_parser.add_argument("--fleet", type=Path, required=True, metavar="FILE",
                               help="the fleet inventory TOML (docs/fleet.md)")
    config_parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                               help="directory to write into (kept: it holds the passwords)")
    config_parser.set_defaults(run=nats_config)
    streams_parser = actions.add_parser("hub-streams", help="make every site's stream at the hub")
    streams_parser.add_argument("--fleet", type=Path, required=True, metavar="FILE")
    streams_parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                                help="the nats-config directory (for the fleet login)")
    streams_parser.set_defaults(run=hub_streams)


def run(args: argparse.Namespace) -> int:
    from agent.config import load_connection
    from agent.fleet.uplink import Uplink, load_nats_settings
    from agent.journal_log import log_to_journal
    from agent.mqtt.board_link import link_settings

    log_to_journal()
    mqtt, _ = load_connection(args.mqtt)
    try:
        settings = link_settings(mqtt)
    except OSError as error:
        raise ConfigFileError(f"{args.mqtt}: cannot read the password file {error.filename} "
                              f"({error.strerror}); install hearth broker-config's "
                              "clients/uplink/ there") from None
    uplink = Uplink(args.site, settings, load_nats_settings(args.nats),
                    logging.getLogger("hearth.uplink"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, uplink.stop)
        if args.duration is not None:
            loop.call_later(args.duration, uplink.stop)
        await uplink.run()

    asyncio.run(main())
    print(f"hearth uplink: stored {uplink.forwarded} messages ({uplink.duplicates} already "
          f"there); not carried: {len(uplink.skipped)} topics")
    return 0


def nats_config(args: argparse.Namespace) -> int:
    from agent.deploy.nats_config import load_fleet, write_nats_configs

    fleet = load_fleet(args.fleet)
    try:
        written = write_nats_configs(fleet, args.out)
    except subprocess.CalledProcessError as error:
        raise HearthError(f"openssl failed: {error.stderr.decode(errors='replace').strip()}; "
                          "check that openssl is installed") from None
    except OSError as error:
        raise HearthError(f"cannot write {error.filename}: {error.strerror}") from None
    print(f"hearth uplink nats-config: wrote {len(written)} files: each hub server's "
          f"{args.out / 'hub'}/<server>/, each site's {args.out / 'site'}/<site>/")
    return 0


def hub_streams(args: argparse.Namespace) -> int:
    import nats

    from agent.deploy.nats_config import FLEET_USER, fleet_login, load_fleet
    from agent.fleet import streams
    from agent.fleet.subjects import HUB_DOMAIN

    fleet = load_fleet(args.fleet)
    servers, password = fleet_login(fleet, args.out)

    async def main() -> None:
        connection = await nats.connect(servers, user=FLEET_USER, password=password)
        jetstream = connection.jetstream(domain=HUB_DOMAIN)
        for site in fleet.sites:
            await streams.ensure_stream(jetstream, streams.hub_stream_config(site.name))
        await connection.close()

    asyncio.run(main())
    print(f"hearth uplink hub-streams: {len(fleet.sites)} sites' streams at the hub")
    return 0
