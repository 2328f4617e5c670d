"""`hearth broker-config`: write the site broker's (and standby's) Mosquitto config from the site
inventory, and every role's `[mqtt]` section.

The same generation scripts/provision runs (agent.deploy.broker_config), as a package command
so an operator can renew passwords, turn TLS on or add a bridge without re-provisioning
identities.
"""

import argparse
import dataclasses
import subprocess
from pathlib import Path

from agent.deploy.broker_config import (
    DEFAULT_BRIDGE_QUEUE, DEFAULT_BROKER_ETC, Bridge, InventoryError, load_inventory,
    parse_bridge_address, write_broker_configs)
from agent.errors import HearthError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broker-config", help="write Mosquitto configs (accounts, ACLs, TLS, bridge) for a site",
        description="From a site inventory (docs/deployment.md), write for the site broker "
        "and its standby: mosquitto.conf (no anonymous access; an account's client id is its "
        "username, so one account holds one connection; persistence on; the standby bridged "
        "to the site broker), passwd (mosquitto_passwd format), acl (a board writes only its "
        "own topics); for every account its credentials and the [mqtt] section of its role's "
        "config (the brokers in order); optionally TLS material (site CA, server and client "
        "certificates) and a bridge to a central broker (docs/bridge.md). Existing passwords "
        "and keys are kept.")
    parser.add_argument("--inventory", type=Path, required=True, metavar="FILE",
                        help="the site inventory TOML")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory to write into (kept between runs: it holds the "
                        "passwords)")
    parser.add_argument("--tls", action="store_true",
                        help="TLS listener (as tls = true in the inventory): a site CA, a server "
                        "certificate per broker and a client certificate per account, made "
                        "with openssl")
    parser.add_argument("--ca-cert", type=Path, metavar="FILE",
                        help="with --tls: sign the server certificates with this CA instead "
                        "of a generated one (needs --ca-key)")
    parser.add_argument("--ca-key", type=Path, metavar="FILE", help="the --ca-cert's key")
    parser.add_argument("--rotate", nargs="*", metavar="USER",
                        help="new passwords for these MQTT users (all users if none named)")
    parser.add_argument("--broker-etc", default=DEFAULT_BROKER_ETC, metavar="DIR",
                        help=f"where passwd, acl, tls/ and bridge/ live on the site broker's box "
                        f"(default {DEFAULT_BROKER_ETC})")
    parser.add_argument("--standby-etc", metavar="DIR",
                        help="the same on the standby's box (default: as --broker-etc)")
    parser.add_argument("--bridge", metavar="HOST:PORT",
                        help="bridge the site broker to this central broker")
    parser.add_argument("--bridge-cafile", type=Path, metavar="FILE",
                        help="CA of the central broker: the bridge then uses TLS")
    parser.add_argument("--bridge-queue", type=int, default=DEFAULT_BRIDGE_QUEUE, metavar="N",
                        help="messages a broker queues per client, the bridge included, "
                        f"while the other end is away (default {DEFAULT_BRIDGE_QUEUE})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.ca_cert is None) != (args.ca_key is None):
        raise InventoryError("--ca-cert and --ca-key go together: give both, or neither to "
                             "have a site CA generated")
    if args.bridge is None and (args.bridge_cafile is not None):
        raise InventoryError("--bridge-cafile needs --bridge HOST:PORT")
    if args.bridge_queue < 1:
        raise InventoryError(f"--bridge-queue {args.bridge_queue}: give at least 1")
    inventory = load_inventory(args.inventory)
    if args.tls:
        inventory = dataclasses.replace(inventory, tls=True)
    if args.ca_cert is not None and not inventory.tls:
        raise InventoryError("--ca-cert is only used with --tls (or tls = true in "
                             f"{args.inventory})")
    bridge = None
    if args.bridge is not None:
        host, port = parse_bridge_address(args.bridge)
        bridge = Bridge(host, port, args.bridge_cafile, args.bridge_queue)
    try:
        written = write_broker_configs(inventory, args.out, args.broker_etc,
                                       standby_etc=args.standby_etc, rotate=args.rotate,
                                       bridge=bridge, ca_cert=args.ca_cert, ca_key=args.ca_key)
    except subprocess.CalledProcessError as error:
        raise HearthError(f"openssl failed: {error.stderr.decode(errors='replace').strip()}; "
                          "check that openssl is installed and --ca-cert/--ca-key match")
    except OSError as error:
        raise HearthError(f"cannot write {error.filename}: {error.strerror}") from None
    brokers = ", ".join(f"{args.out / broker.role} ({broker.address})"
                        for broker in inventory.brokers)
    print(f"hearth broker-config: wrote {len(written)} files; brokers: {brokers}; each role's "
          f"[mqtt] section and files: {args.out / 'clients'}/<account>/")
    return 0
