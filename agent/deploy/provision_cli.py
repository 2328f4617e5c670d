"""Generates a site's identities, MQTT credentials and leader broker configs from its inventory.

Usage: scripts/provision INVENTORY.toml OUT_DIR [--broker-etc DIR]. See docs/deployment.md."""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from agent.deploy.provision import provision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provision", description=__doc__.split("\n")[0])
    parser.add_argument("inventory", type=Path, help="the site inventory (docs/deployment.md)")
    parser.add_argument("out", type=Path, help="directory to write into (kept between runs)")
    parser.add_argument("--broker-etc", default="/etc/mosquitto/hearth",
                        help="where a leader's passwd, acl and tls/ live on the board")
    args = parser.parse_args(argv)
    try:
        written = provision(args.inventory, args.out, args.broker_etc)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"provision: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"provision: openssl failed: {error.stderr.decode(errors='replace').strip()}",
              file=sys.stderr)
        return 2
    print(f"provision: wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
