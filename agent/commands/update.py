"""`hearth update`: roll a signed bundle out to a site's boards from the site box, see where each
board is, or only serve bundles (docs/updates.md, "Rolling out from the site")."""

import argparse
import json
import signal
import time
import uuid
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, load_connection
from agent.errors import ConfigValueError, MessageError
from agent.mqtt.board_link import link_settings
from agent.mqtt.link import Link
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import ROOT
from agent.persist import DEFAULT_STATE_DIR, StateStore
from agent.update.bundle import check
from agent.update.bundle_server import BundleServer
from agent.update.rollout import (RECORD_NAME, Bundle, Rollout, RolloutSettings,
                                  checked_leader_state, checked_update, new_record, plan_waves,
                                  read_record, resumed)

DEFAULT_LISTEN = "0.0.0.0:8480"
FLUSH_S = 5.0
"""How long a rollout that ends waits for its last messages to reach the broker."""
LISTEN_S = 15.0
"""How long a new rollout listens for the site's leaders before it plans its waves."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "update", help="roll a signed update bundle out to the site's boards, module by module",
        description="Serve a RAUC bundle over HTTP on the site box and send it to the boards: a "
        "canary, then a share of each module, then the rest, never more boards of a module at "
        "once than its budget allows; stop at the first failure.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help=f"[mqtt] with an operator account (the file `hearth broker-config` "
                        f"writes for it, or a role config) (default {DEFAULT_CONFIG_PATH})")
    common.add_argument("--site", metavar="SITE",
                        help="the site (default: [identity] site of the config)")
    common.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where the rollout keeps its record (default {DEFAULT_STATE_DIR})")
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                         help=f"the bundle server's address (default {DEFAULT_LISTEN})")
    serving.add_argument("--advertise", metavar="HOST",
                         help="the site box's name or address as the boards reach it (default: "
                         "the --listen host, or this host's name when listening on all)")

    rollout = actions.add_parser("rollout", parents=[common, serving],
                                 help="serve BUNDLE and update every board of the site with it")
    rollout.add_argument("bundle", type=Path, metavar="BUNDLE", help="the signed .raucb")
    rollout.add_argument("--keyring", type=Path, required=True, metavar="FILE",
                         help="the site's update CA certificate (`hearth bundle keygen`'s "
                         "ca/ca.crt): the bundle is checked as a board checks it, and its "
                         "version read, before any board is sent it")
    rollout.add_argument("--share", type=float, default=25.0, metavar="PCT",
                         help="the second wave: this share of each module (default 25)")
    rollout.add_argument("--board-timeout", type=float, default=2700.0, metavar="S",
                         help="a board silent this long after its command has failed "
                         "(default 2700)")
    rollout.add_argument("--force", action="store_true",
                         help="install on boards running a newer version too (a downgrade)")
    rollout.add_argument("--retry-failed", action="store_true",
                         help="going on with a paused rollout: send the failed boards again")
    rollout.set_defaults(run=run_rollout)

    status = actions.add_parser("status", parents=[common],
                                help="each board's installed version and update state")
    status.add_argument("--wait", type=float, default=3.0, metavar="S",
                        help="how long to collect the boards' retained update topics "
                        "(default 3)")
    status.set_defaults(run=run_status)

    serve = actions.add_parser("serve", parents=[serving],
                               help="only serve bundles over HTTP (for a board updated by hand)")
    serve.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE")
    serve.set_defaults(run=run_serve)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _advertised(args: argparse.Namespace) -> str:
    host = _address(args.listen)[0]
    if args.advertise:
        return args.advertise
    import socket
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def _site_link(args: argparse.Namespace, name: str) -> tuple[str, Link]:
    mqtt, identity = load_connection(args.config)
    site = args.site or (identity.site if identity is not None else None)
    if site is None:
        raise ConfigValueError(f"{args.config} has no [identity] site: name the site with "
                               "--site")
    link = Link(link_settings(mqtt), client_id=f"hearth-{site}-{name}",
                outbox=Outbox(args.state_dir / f"{name}-outbox"), boot=str(uuid.uuid4()))
    return site, link


def _stop_requested() -> list[bool]:
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    return stop


def run_rollout(args: argparse.Namespace) -> int:
    site, link = _site_link(args, "update")
    store = StateStore(args.state_dir)
    record = read_record(store)
    version = check(args.bundle, args.keyring).version  # BundleError: what a board would say
    settings = RolloutSettings(share_pct=args.share, board_timeout_s=args.board_timeout,
                               force=args.force)
    with BundleServer([args.bundle], _address(args.listen)) as server:
        served = server.files[args.bundle.name]
        bundle = Bundle(served.name, server.url(_advertised(args), served.name), version,
                        served.sha256, served.size)
        if record is not None and record["state"] != "done":
            if record["bundle"]["sha256"] != bundle.sha256:
                print(f"hearth update: a rollout of {record['bundle']['name']} "
                      f"({record['bundle']['version']}) is {record['state']}; go on with that "
                      f"bundle, or move {store.path(RECORD_NAME)} aside to start another")
                return 2
            record = resumed(record, args.retry_failed)
            record["bundle"]["url"] = bundle.url
        link.start()
        try:
            if record is None or record["state"] == "done":
                record = _new_rollout(site, link, bundle, settings)
                if record is None:
                    return 2
            rollout = Rollout(site, link, store, record, settings)
            rollout.start()
            stop = _stop_requested()
            rollout.run(lambda: bool(stop))
            summary = rollout.summary(every_board=True)
            deadline = time.monotonic() + FLUSH_S  # the last update/state reaches the broker
            while not link.idle() and time.monotonic() < deadline:
                link.poll(timeout_s=0.1)
        finally:
            link.close()
    _print_summary(summary)
    return 0 if summary["state"] == "done" and not summary["counts"]["skipped"] else 1


def _new_rollout(site: str, link: Link, bundle: Bundle, settings: RolloutSettings):
    """Listen for the leaders' states, plan the waves from the boards they know."""
    boards: dict[str, list[str]] = {}

    def on_leader(message) -> None:
        try:
            boards[message.topic.split("/")[3]] = list(checked_leader_state(
                message.data()).boards)
        except MessageError:
            pass  # the rollout itself counts and logs what it rejects

    link.subscribe(f"{ROOT}/{site}/+/leader/state", on_leader)
    deadline = time.monotonic() + LISTEN_S
    while time.monotonic() < deadline:
        link.poll(timeout_s=0.2)
    waves = plan_waves(boards, settings.share_pct)
    if not waves:
        print(f"hearth update: no leader/state heard from site {site} in {LISTEN_S:g} s, so "
              "no boards to update; check that the leaders run and that [mqtt] reaches the "
              "site broker")
        return None
    return new_record(bundle, waves, settings.force, time.time())


def _print_summary(summary: dict) -> None:
    print(f"rollout of {summary['bundle']} ({summary['version']}): {summary['state']}")
    if summary["reason"]:
        print(f"  {summary['reason']}")
    for key, board in summary["boards"].items():
        line = f"  {key:<24} {board['status']:<8} installed {board['installed'] or '?'}"
        if board["reason"]:
            line += f"  ({board['reason']})"
        print(line)


def run_status(args: argparse.Namespace) -> int:
    site, link = _site_link(args, "update-status")
    heard: dict[str, dict] = {}
    rollout: list[dict] = []

    def on_update(message) -> None:
        key = "/".join(message.topic.split("/")[3:5])
        try:
            update = checked_update(message.data())
        except MessageError as error:
            heard[key] = {"problem": str(error)}
            return
        heard[key] = {"installed": update.installed, "slot": update.slot, "state": update.state,
                      "target": update.target, "reason": update.reason}

    def on_rollout(message) -> None:
        try:
            rollout.append(message.data())
        except MessageError:
            pass

    link.subscribe(f"{ROOT}/{site}/+/+/update", on_update)
    link.subscribe(f"{ROOT}/{site}/update/state", on_rollout)
    link.start()
    deadline = time.monotonic() + args.wait
    try:
        while time.monotonic() < deadline:
            link.poll(timeout_s=0.2)
    finally:
        link.close()
    if rollout:
        state = rollout[-1]
        print(f"rollout of {state.get('bundle')} ({state.get('version')}): {state.get('state')}"
              + (f": {state['reason']}" if state.get("reason") else ""))
    if not heard:
        print(f"no board of site {site} has said anything on its update topic")
        return 1
    print(f"{'board':<24} {'installed':<10} {'slot':<4} {'state':<12} target  reason")
    for key, facts in sorted(heard.items()):
        if "problem" in facts:
            print(f"{key:<24} unreadable update topic: {facts['problem']}")
            continue
        print(f"{key:<24} {facts['installed'] or '?':<10} {facts['slot'] or '?':<4} "
              f"{facts['state']:<12} {facts['target'] or '-':<7} {facts['reason'] or ''}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    host = _advertised(args)
    with BundleServer(list(args.bundles), _address(args.listen)) as server:
        for name, served in server.files.items():
            print(json.dumps({"url": server.url(host, name), "sha256": served.sha256,
                              "size_bytes": served.size}), flush=True)
        stop = _stop_requested()
        while not stop:
            time.sleep(0.5)
    return 0
