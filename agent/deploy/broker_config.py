"""Mosquitto configuration for a Hearth site from its inventory: accounts, ACLs, TLS, bridges.

The broker is the only thing that can stop a board from writing another board's topics or a
leader's setpoints, so the ACLs here are the security boundary of the MQTT contract
(docs/mqtt.md): a board writes only its own status/state/event/reply and reads only its own
`cmd/#`, its own setpoint and its module's interlock; nobody connects anonymously, and no
account can take over another's connection (its client id is its username). One Mosquitto
serves the whole site (every module's boards and leaders, the site role, Home Assistant and the
operators), optionally with a standby on another box bridged to it; this module writes, for
each, the password file (mosquitto_passwd's `$7$` PBKDF2-SHA512 format), the ACL file and the
broker config; for every account the `[mqtt]` section of its role's config (the brokers in
order); on request TLS material (via the openssl tool: a site CA, server and client
certificates) and a bridge to a central broker. Used by `hearth broker-config` and by
scripts/provision, so there is one definition.
"""

import base64
import dataclasses
import hashlib
import hmac
import secrets
import subprocess
import tomllib
from collections.abc import Collection
from pathlib import Path

from agent.errors import ConfigFileError, ConfigValueError
from agent.identity import (IDENTITY_FIELDS, NAME_PATTERN, NAME_RULE, TABLE_ENTRY_FIELDS,
                            Identity, parse_serial)
from agent.schema import Field
from agent.tables import ABSENT, TableCheck, suggest
from agent.site.role import TARGET_SET

# mosquitto_passwd's "$7$" hash: PBKDF2-HMAC-SHA512, 101 iterations and a 12-byte salt by
# default (mosquitto's password_mosq.h), written as $7$<iterations>$<base64 salt>$<base64 hash>.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
TOPIC_ROOT = "hearth/v1"
DEFAULT_BROKER_ETC = "/etc/mosquitto/hearth"
CLIENT_ETC = "/etc/hearth/mqtt"
"""Where a role's credentials and TLS files live on its box, one directory per account, so a
leader board holds its board's and its leader's side by side."""
SITE_USER = "site"
OPERATOR_USER = "operator"
STANDBY_USER = "standby"
"""The standby broker's bridge logs in to the primary with this account."""
UPLINK_USER = "uplink"
"""`hearth uplink` reads the whole site with this account (docs/fleet.md) and writes nothing."""
DEFAULT_BRIDGE_QUEUE = 10000
HA_PREFIX = "homeassistant"
HA_STATUS = f"{HA_PREFIX}/status"
MODE_SET = "site/mode/set"
LEADER_COMMANDS = ("setpoint", "identify")
"""docs/mqtt.md's commands a leader may send; the rest are the operator's. Enforced here, by
topic, because the payload's `by` field is only what the sender claims."""
RESERVED_BOARD_NAMES = frozenset({"leader"})
"""`<module>/leader/...` is the leader's subtree: a board called `leader` would own it."""
RESERVED_MODULE_NAMES = frozenset({"site"})
"""`hearth/v1/<site>/site/...` holds the site topics: a module called `site` would own them."""
BROKER_RULE = "a host name or address, optionally with :port"
BROKER_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(:[0-9]{1,5})?"
TOP_FIELDS = {
    "site": IDENTITY_FIELDS["site"],
    "broker": Field(str, "the site broker every role connects to: " + BROKER_RULE,
                    pattern=BROKER_PATTERN, example="hearth-broker.local"),
    "standby": Field(str, "a standby broker on another box, bridged to the site broker, that "
                     "clients move to when it is gone: " + BROKER_RULE + "; empty for none",
                     default="", pattern=f"({BROKER_PATTERN})?", example="hearth-standby.local"),
    "tls": Field(bool, "serve MQTT over TLS with client certificates (a site CA is generated "
                 "unless one is given)", default=False),
    "port": Field(int, "the brokers' listener port where `broker`/`standby` name none (default "
                  "8883 with TLS, else 1883)", default=None, min=1, max=65535),
    "bind_address": Field(str, "the address the brokers listen on (default all)", default=None,
                          pattern=r"\S+", example="192.168.1.10"),
    "operators": Field(list, "operator accounts besides `operator`, one per tool or person",
                       default=[], items=Field(str, "an operator account: " + NAME_RULE,
                                               pattern=NAME_PATTERN, example="homeassistant")),
}
MODULE_FIELDS = {"name": IDENTITY_FIELDS["module"]}
BOARD_FIELDS = {
    "module": IDENTITY_FIELDS["module"],
    "name": IDENTITY_FIELDS["board"],
    "serial": TABLE_ENTRY_FIELDS["serial"],
    "slot": TABLE_ENTRY_FIELDS["slot"],
}
LEADER_FIELDS = {
    "module": IDENTITY_FIELDS["module"],
    "board": IDENTITY_FIELDS["board"],
    "config": Field(str, "the leader board's hearth.toml, relative to the inventory: "
                    "scripts/provision lets hearth-leader.service open the devices of its module "
                    "sensors", default=None, pattern=r"[^\x00]+", example="leader-m1.toml"),
}


class InventoryError(ConfigValueError):
    """The inventory cannot be used; the message names the file, entry, key and value."""


def mosquitto_hash(password: str, salt: bytes | None = None,
                   iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, encoded: str) -> bool:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    _, _, iterations, salt, digest = parts
    expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                   int(iterations))
    return hmac.compare_digest(expected, base64.b64decode(digest))


@dataclasses.dataclass(frozen=True)
class Board:
    identity: Identity
    serial: str | None
    slot: int | None

    @property
    def username(self) -> str:
        """'.' cannot occur in a name, so module.board is unambiguous; ':' would break the
        password file."""
        return f"{self.identity.module}.{self.identity.board}"

    @property
    def updater_username(self) -> str:
        """The board's updater (hearth-updater.service): an account of its own, because an
        account holds one connection and the board's is the agent's."""
        return f"updater.{self.identity.module}.{self.identity.board}"


@dataclasses.dataclass(frozen=True)
class Leader:
    module: str
    board: str
    config: Path | None = None

    @property
    def username(self) -> str:
        return f"leader.{self.module}"


@dataclasses.dataclass(frozen=True)
class SiteBroker:
    """One of the site's brokers as its clients reach it; `role` names it (`broker` or
    `standby`) in file names and comments."""

    role: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """What a client's `[mqtt] brokers` lists: always with the port, so a client's own
        default (which follows its ca_file) cannot send it to another listener."""
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Inventory:
    site: str
    modules: tuple[str, ...]
    boards: tuple[Board, ...]
    leaders: tuple[Leader, ...]
    broker: SiteBroker
    standby: SiteBroker | None
    tls: bool
    bind_address: str | None
    operators: tuple[str, ...] = ()
    """Names of operator accounts besides `operator`: one account holds one connection."""

    @property
    def operator_usernames(self) -> list[str]:
        return [OPERATOR_USER, *(f"{OPERATOR_USER}.{name}" for name in self.operators)]

    @property
    def brokers(self) -> list[SiteBroker]:
        """In the order clients try them: the site broker first."""
        return [self.broker] + ([self.standby] if self.standby is not None else [])

    @property
    def bridge_username(self) -> str:
        """The site's account at a central broker: unique across a fleet, as names cannot
        contain '.'."""
        return f"bridge.{self.site}"


@dataclasses.dataclass(frozen=True)
class Bridge:
    """Where a site's broker forwards its topics: the central broker, optionally over TLS."""

    host: str
    port: int
    cafile: Path | None = None
    queue: int = DEFAULT_BRIDGE_QUEUE


def ha_device_topic(*names: str) -> str:
    """Home Assistant's discovery topic of the device `hearth_<site>[_<module>[_<board>]]`
    (docs/mqtt.md): '-' is not allowed in a discovery node id."""
    return f"{HA_PREFIX}/device/" + "_".join(("hearth", *names)).replace("-", "_") + "/config"


def parse_bridge_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InventoryError(f"--bridge {text!r} is not HOST:PORT (e.g. "
                             "'central.example.net:8883')")
    return host, int(port)


def load_inventory(path: Path) -> Inventory:
    """Read and check a site inventory; every problem at once, each naming the file, the
    entry's key, its value and what was expected (ConfigFileError when it is not TOML)."""
    check = TableCheck()
    file = str(path)
    document = check.read_toml(path, "pass the site inventory (docs/deployment.md)")
    if document is None:
        check.raise_problems("the inventory", InventoryError)
    top = check.fields(document, TOP_FIELDS, file, "", "the inventory",
                       other_keys=("module", "board", "leader"))
    modules = _modules(check, file, document)
    boards = _boards(check, file, document, top["site"], modules)
    leaders = _leaders(check, path, document, top["site"], modules, boards)
    operators = top["operators"] or ()
    for position, name in enumerate(operators, start=1):
        if name in operators[:position - 1]:
            check.report(file, f"operators[{position}]", "a name no other operator account has",
                         value=name, hint="the broker gives an account one connection at a time")
    default_port = top["port"] or (8883 if top["tls"] else 1883)
    broker = _site_broker(check, file, "broker", top["broker"], default_port)
    standby = _site_broker(check, file, "standby", top["standby"] or None, default_port)
    if broker is not None and standby is not None and broker.address == standby.address:
        check.report(file, "standby", f"another broker than `broker` ({broker.address})",
                     value=top["standby"], hint="the standby runs on a second box; leave it "
                     "out for a site without one")
    _device_ids_unique(check, file, boards)
    check.raise_problems("the inventory", InventoryError)
    return Inventory(top["site"], tuple(modules), tuple(boards), tuple(leaders), broker, standby,
                     top["tls"], top["bind_address"], operators)


def _site_broker(check: TableCheck, file: str, key: str, text: str | None,
                 default_port: int) -> SiteBroker | None:
    if text is None:
        return None
    host, colon, port = text.partition(":")
    if colon and not 1 <= int(port) <= 65535:
        check.report(file, key, f"{BROKER_RULE}, the port from 1 to 65535", value=text)
        return None
    return SiteBroker(key, host, int(port) if colon else default_port)


def _device_ids_unique(check: TableCheck, file: str, boards: list[Board]) -> None:
    """Home Assistant's device ids join the names with '_' and turn '-' into '_', so module
    `m-1`'s board `x` and module `m`'s board `1-x` would be one device (and one ACL line)."""
    seen: dict[str, Identity] = {}
    for board in boards:
        identity = board.identity
        topic = ha_device_topic(identity.site, identity.module, identity.board)
        if topic in seen:
            check.report(file, "board", f"boards whose Home Assistant device ids differ: "
                         f"{seen[topic]} and {identity} are both {topic.split('/')[2]}",
                         hint="rename one of them ('-' and '_' count as the same there)")
        seen.setdefault(topic, identity)


def _modules(check: TableCheck, file: str, document: dict) -> list[str]:
    modules: dict[str, str] = {}  # name -> its key path
    for at, entry in check.tables(document.get("module", ABSENT), file, "module"):
        name = check.fields(entry, MODULE_FIELDS, file, f"{at}.", "a [[module]]")["name"]
        if name in modules:
            check.report(file, f"{at}.name", f"a name no other [[module]] has ({modules[name]} "
                         "has it)", value=name)
            continue
        if name in RESERVED_MODULE_NAMES:  # kept as a module, so its boards are not blamed too
            check.report(file, f"{at}.name", f"a name other than {name!r}", value=name,
                         hint=f"hearth/v1/<site>/{name}/ holds the site topics; choose another "
                         "module name")
        if name is not None:
            modules[name] = at
    if not modules and not check.problems:
        check.report(file, "module", "at least one [[module]] table",
                     hint='add one per oil loop, e.g. [[module]] name = "m1"')
    return list(modules)


def _boards(check: TableCheck, file: str, document: dict, site: str | None,
            modules: list[str]) -> list[Board]:
    boards: dict[Identity, str] = {}  # identity -> its key path
    found = []
    serials: dict[int, Identity] = {}
    slots: dict[tuple[str, int], Identity] = {}
    for at, entry in check.tables(document.get("board", ABSENT), file, "board"):
        values = check.fields(entry, BOARD_FIELDS, file, f"{at}.", "a [[board]]")
        module, name, serial, slot = (values[key] for key in ("module", "name", "serial", "slot"))
        if module is not None and module not in modules:
            check.report(file, f"{at}.module", _one_of_modules(modules), value=module)
            module = None
        if name in RESERVED_BOARD_NAMES:
            check.report(file, f"{at}.name", f"a name other than {name!r}", value=name,
                         hint=f"<module>/{name}/ holds the leader's topics; choose another "
                         "board name")
            name = None
        if None in (site, module, name):
            continue
        identity = Identity(site, module, name)
        if identity in boards:
            check.report(file, f"{at}.name", f"a name no other [[board]] of module {module} has "
                         f"({boards[identity]} has it)", value=name)
            continue
        boards[identity] = at
        if serial is not None:
            try:
                key = parse_serial(serial)
            except ValueError:
                check.report(file, f"{at}.serial", "a hexadecimal serial number like "
                             "'10000000a1b2c3d4'", value=serial)
                continue
            if key in serials:
                check.report(file, f"{at}.serial", f"a serial no other board has ({serials[key]} "
                             "has it)", value=serial)
            serials.setdefault(key, identity)
        if slot is not None:
            if (module, slot) in slots:
                check.report(file, f"{at}.slot", f"a slot no other board of module {module} "
                             f"has ({slots[module, slot]} has it)", value=slot)
            slots.setdefault((module, slot), identity)
        found.append(Board(identity, serial, slot))
    return found


def _leaders(check: TableCheck, path: Path, document: dict, site: str | None,
             modules: list[str], boards: list[Board]) -> list[Leader]:
    file = str(path)
    leaders: dict[str, str] = {}  # module -> its [[leader]]'s key path
    found = []
    for at, entry in check.tables(document.get("leader", ABSENT), file, "leader"):
        if "host" in entry:   # before the site broker, each leader board ran its module's
            check.report(file, f"{at}.host", "no host in a [[leader]]", value=entry.pop("host"),
                         hint="one broker serves the whole site now: name it once with the "
                         "top-level `broker` key (and `standby`), docs/deployment.md")
        values = check.fields(entry, LEADER_FIELDS, file, f"{at}.", "a [[leader]]")
        module, board = values["module"], values["board"]
        config = path.parent / values["config"] if values["config"] is not None else None
        if module is not None and module not in modules:
            check.report(file, f"{at}.module", _one_of_modules(modules), value=module)
            continue
        if module in leaders:
            check.report(file, f"{at}.module", f"a module without a [[leader]] ({leaders[module]} "
                         "leads it)", value=module, hint="one leader board runs each module's "
                         "`hearth leader`")
            continue
        if site is None or None in (module, board):
            continue
        leaders[module] = at
        known = [b.identity.board for b in boards if b.identity.module == module]
        if board not in known:
            check.report(file, f"{at}.board", f"a [[board]] of module {module}: "
                         + (", ".join(map(repr, known)) or "it has none"), value=board,
                         hint=suggest(board, known))
            continue
        found.append(Leader(module, board, config))
    if site is not None and modules and not check.problems:
        for module in modules:
            if module not in leaders:
                check.report(file, "leader", f"a [[leader]] for module {module}",
                             hint="every module needs exactly one: the board that runs its "
                             "`hearth leader`")
    return found


def _one_of_modules(modules: list[str]) -> str:
    return "one of the [[module]] names: " + (", ".join(map(repr, modules)) or "none")


def acl_text(inventory: Inventory) -> str:
    """Per-user blocks, because the username `m1.b07` cannot be turned into the topic levels
    `m1/b07` by a `%u` pattern. Mosquitto denies whatever no line grants. One file for the
    whole site: the same on the site broker and the standby."""
    site = inventory.site
    site_root = f"{TOPIC_ROOT}/{site}"
    blocks = [f"# Mosquitto ACL of site {site}. Generated by hearth broker-config; re-run it "
              "instead of editing.\n# Anything not granted is denied."]
    for board in inventory.boards:
        module_root = f"{site_root}/{board.identity.module}"
        own = f"{module_root}/{board.identity.board}"
        blocks.append("\n".join([
            f"user {board.username}",
            *(f"topic write {own}/{kind}" for kind in ("status", "state", "event", "reply")),
            f"topic read {own}/cmd/#",
            f"topic read {module_root}/leader/setpoint/{board.identity.board}",
            f"topic read {module_root}/leader/interlock",
            f"topic read {module_root}/leader/status"]))
        blocks.append("\n".join([
            f"user {board.updater_username}",
            f"topic read {own}/cmd/update",
            f"topic read {own}/state",
            f"topic write {own}/update",
            f"topic write {own}/reply"]))
    for leader in inventory.leaders:
        module_root = f"{site_root}/{leader.module}"
        blocks.append("\n".join([
            f"user {leader.username}",
            f"topic read {module_root}/#",
            f"topic write {module_root}/leader/setpoint/+",
            *(f"topic write {module_root}/leader/{kind}" for kind in ("interlock", "status",
                                                                       "state", "event")),
            *(f"topic write {module_root}/+/cmd/{name}" for name in LEADER_COMMANDS),
            f"topic read {site_root}/site/#",
            f"topic read {HA_STATUS}",
            f"topic write {ha_device_topic(site, leader.module)}",
            *(f"topic write {ha_device_topic(site, leader.module, board.identity.board)}"
              for board in inventory.boards if board.identity.module == leader.module)]))
    blocks.append("\n".join([
        f"user {SITE_USER}",
        f"topic read {site_root}/#",
        f"topic write {site_root}/+/leader/budget",
        f"topic readwrite {site_root}/site/#",
        f"topic read {HA_STATUS}",
        f"topic write {ha_device_topic(site)}"]))
    # Home Assistant logs in as an operator: it reads everything, announces itself on
    # homeassistant/status (birth and last will) and sets the site's target and mode. An
    # operator's `hearth update rollout` sends cmd/update and keeps update/state.
    blocks += ["\n".join([
        f"user {operator}",
        f"topic read {site_root}/#",
        f"topic read {HA_PREFIX}/#",
        f"topic write {HA_STATUS}",
        f"topic write {site_root}/+/+/cmd/#",
        f"topic write {site_root}/update/state",
        f"topic write {site_root}/site/demand",
        f"topic write {site_root}/{TARGET_SET}",
        f"topic write {site_root}/{MODE_SET}"]) for operator in inventory.operator_usernames]
    blocks.append("\n".join([f"user {UPLINK_USER}", f"topic read {site_root}/#"]))
    if inventory.standby is not None:
        blocks.append("\n".join([
            f"# The standby's bridge carries every message of the site both ways.",
            f"user {STANDBY_USER}",
            f"topic readwrite {site_root}/#",
            f"topic readwrite {HA_PREFIX}/#"]))
    return "\n\n".join(blocks) + "\n"


def mosquitto_conf(inventory: Inventory, broker: SiteBroker, etc: str) -> str:
    """`use_username_as_clientid`: Mosquitto closes a connection (and fires its Last Will) when
    another logs in with the same client id, so without it any account could knock the leader
    off by borrowing its client id. With it, an account's client id is its username: only the
    holder of an account's password can take that account's connection over.

    `persistence true` keeps retained messages and the queues of absent QoS 1 subscribers
    across a broker restart; `persistence_location` is left to the distribution's own
    mosquitto.conf (Debian's sets /var/lib/mosquitto/), which refuses a second one."""
    listener = f"listener {broker.port}"
    if inventory.bind_address is not None:
        listener += f" {inventory.bind_address}"
    lines = [f"# Mosquitto {broker.role} of site {inventory.site} ({broker.host}). Generated by "
             "hearth broker-config; re-run it instead of editing.",
             "per_listener_settings false", "allow_anonymous false",
             f"password_file {etc}/passwd", f"acl_file {etc}/acl",
             "persistence true", listener,
             "# One connection per account: its client id is its username (docs/deployment.md).",
             "use_username_as_clientid true"]
    if inventory.tls:
        lines += ["# Both a client certificate of the site CA and the account's password: "
                  "docs/deployment.md.",
                  f"cafile {etc}/tls/ca.crt", f"certfile {etc}/tls/server.crt",
                  f"keyfile {etc}/tls/server.key", "require_certificate true",
                  "tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def standby_bridge_conf(inventory: Inventory, password: str, etc: str) -> str:
    """The standby's link to the site broker: everything of the site, both ways, so clients
    that failed over at different moments (some on the standby, some still on the primary)
    still form one site. Mosquitto to Mosquitto with try_private, so neither broker sends a
    message back where it came from."""
    site_root = f"{TOPIC_ROOT}/{inventory.site}"
    name = f"hearth-{inventory.site}-standby"
    lines = [
        f"# Bridge of the standby to the site broker of {inventory.site}. Generated by hearth "
        "broker-config.",
        f"connection {name}",
        f"address {inventory.broker.address}",
        f"topic {site_root}/# both 1",
        f"topic {HA_PREFIX}/# both 1",
        f"remote_clientid {STANDBY_USER}",
        f"local_clientid {name}-local",
        f"remote_username {STANDBY_USER}",
        f"remote_password {password}",
        "cleansession false",
        "try_private true",
        "restart_timeout 1 30",
        "keepalive_interval 15",
        "notifications false",
    ]
    if inventory.tls:
        lines += [f"bridge_cafile {etc}/tls/ca.crt", f"bridge_certfile {etc}/tls/bridge.crt",
                  f"bridge_keyfile {etc}/tls/bridge.key", "bridge_insecure false",
                  "bridge_tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def bridge_conf(inventory: Inventory, bridge: Bridge, password: str, etc: str) -> str:
    """Appended to mosquitto.conf rather than kept in a file of its own: Mosquitto reads
    `include_dir` only in its main config file, and ours is already an included conf.d file, so
    a nested include_dir would be ignored without a word. See docs/bridge.md for each setting."""
    site_root = f"{TOPIC_ROOT}/{inventory.site}"
    name = f"hearth-{inventory.site}"
    lines = [
        f"# Bridge of site {inventory.site} to the central broker. Generated by hearth "
        "broker-config.",
        f"# Every client's queue on this broker is bounded by this (the bridge's too): beyond "
        "it, QoS 1 messages are dropped.",
        f"max_queued_messages {bridge.queue}",
        f"connection {name}",
        f"address {bridge.host}:{bridge.port}",
        f"topic {site_root}/# out 1",
        f"remote_clientid {name}",
        f"local_clientid {name}-local",
        f"remote_username {inventory.bridge_username}",
        f"remote_password {password}",
        "cleansession false",
        "local_cleansession false",
        "bridge_attempt_unsubscribe false",
        "bridge_protocol_version mqttv311",
        "try_private false",
        "restart_timeout 1 60",
        "keepalive_interval 30",
        "notifications true",
        f"notification_topic {site_root}/site/bridge",
    ]
    if bridge.cafile is not None:
        lines += [f"bridge_cafile {etc}/bridge/central-ca.crt", "bridge_insecure false",
                  "bridge_tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def central_acl_text(inventory: Inventory) -> str:
    """The site's bridge may write only its own site's subtree at the central broker, so one
    compromised site broker cannot speak for other sites."""
    return (f"# Central broker ACL lines for site {inventory.site}'s bridge; merge into the "
            "central broker's acl_file. Generated by hearth broker-config.\n\n"
            f"user {inventory.bridge_username}\n"
            f"topic write {TOPIC_ROOT}/{inventory.site}/#\n")


def mqtt_section(inventory: Inventory, username: str) -> str:
    """The `[mqtt]` section of this account's role config: every role lists the site's brokers
    in the order to try them, and finds its own files under CLIENT_ETC/<username>/."""
    home = f"{CLIENT_ETC}/{username}"
    brokers = ", ".join(f'"{broker.address}"' for broker in inventory.brokers)
    lines = [f"# The [mqtt] section for account {username} of site {inventory.site}: put it in "
             "that role's config",
             f"# and install this directory as {home}/. Generated by hearth broker-config.",
             "[mqtt]", f"brokers = [{brokers}]", f'username = "{username}"',
             f'password_file = "{home}/credentials.toml"']
    if inventory.tls:
        lines += [f'ca_file = "{home}/ca.crt"', f'cert_file = "{home}/client.crt"',
                  f'key_file = "{home}/client.key"']
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Temp file and rename: a reader (or a broker reloading on SIGHUP) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        temporary.write_bytes(text)
    else:
        temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)


def _password(path: Path, rotate: bool) -> str:
    """Keep a password once made: a re-run must not lock boards out."""
    if path.exists() and not rotate:
        try:
            return tomllib.loads(path.read_text())["mqtt"]["password"]
        except (tomllib.TOMLDecodeError, KeyError, TypeError):
            raise ConfigFileError(f"{path}: no [mqtt] password in it; delete the file to make "
                                  "a new password, or restore it from a backup") from None
    return secrets.token_urlsafe(24)


def _existing_hashes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {user: encoded for user, encoded in pairs}


def passwd_text(passwords: dict[str, str], existing: dict[str, str]) -> str:
    """An unchanged password keeps its hash (and salt), so a re-run rewrites identical files."""
    lines = []
    for user, password in passwords.items():
        encoded = existing.get(user)
        if encoded is None or not check_mosquitto_hash(password, encoded):
            encoded = mosquitto_hash(password)
        lines.append(f"{user}:{encoded}\n")
    return "".join(lines)


def openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def sign_certificate(directory: Path, stem: str, subject: str, extensions: str,
                     ca: Path) -> None:
    """A new EC key and a certificate for it signed by the site CA, unless one signed by this
    CA is there already (kept: a re-run must not change what boards hold)."""
    certificate = directory / f"{stem}.crt"
    directory.mkdir(parents=True, exist_ok=True)
    if certificate.exists() and (directory / "ca.crt").exists() and \
            (directory / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes():
        return
    key, request, extfile = (directory / f"{stem}.{suffix}" for suffix in ("key", "csr", "ext"))
    extfile.write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", subject)
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca / "ca.crt"), "-CAkey",
            str(ca / "ca.key"), "-CAcreateserial", "-out", str(certificate), "-days", "1825",
            "-extfile", str(extfile))
    key.chmod(0o600)
    request.unlink()
    extfile.unlink()
    write_atomic(directory / "ca.crt", (ca / "ca.crt").read_bytes())


def _subject_alt_name(host: str) -> str:
    kind = "IP" if host.replace(".", "").isdigit() or ":" in host else "DNS"
    return f"{kind}:{host}"


def make_tls(out: Path, inventory: Inventory, accounts: list[str], ca_cert: Path | None = None,
             ca_key: Path | None = None) -> None:
    """A site CA (made here, or the operator's own given as ca_cert/ca_key) signs a server
    certificate per broker, named for the host clients connect to, and a client certificate
    per account (CN the username). Existing keys are kept."""
    ca = out / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    if ca_cert is not None and ca_key is not None:
        write_atomic(ca / "ca.crt", ca_cert.read_bytes())
        write_atomic(ca / "ca.key", ca_key.read_bytes(), 0o600)
    elif not (ca / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.crt"),
                "-days", "3650", "-subj", f"/CN=Hearth {inventory.site} CA")
        (ca / "ca.key").chmod(0o600)
    for broker in inventory.brokers:
        sign_certificate(out / broker.role / "tls", "server", f"/CN={broker.host}",
                f"subjectAltName={_subject_alt_name(broker.host)}\n"
                "extendedKeyUsage=serverAuth\n", ca)
    for username in accounts:
        sign_certificate(out / "clients" / username, "client", f"/CN={username}",
                "extendedKeyUsage=clientAuth\n", ca)
    if inventory.standby is not None:
        for suffix in ("crt", "key"):
            write_atomic(out / "standby" / "tls" / f"bridge.{suffix}",
                         (out / "clients" / STANDBY_USER / f"client.{suffix}").read_bytes(),
                         0o600 if suffix == "key" else 0o644)


def site_usernames(inventory: Inventory) -> list[str]:
    """Every account of the site's brokers, in password-file order."""
    names = [board.username for board in inventory.boards]
    names += [board.updater_username for board in inventory.boards]
    names += [leader.username for leader in inventory.leaders]
    names += [SITE_USER, *inventory.operator_usernames, UPLINK_USER]
    if inventory.standby is not None:
        names.append(STANDBY_USER)
    return names


def write_broker_configs(inventory: Inventory, out: Path, etc: str = DEFAULT_BROKER_ETC, *,
                         standby_etc: str | None = None, rotate: Collection[str] | None = None,
                         bridge: Bridge | None = None, ca_cert: Path | None = None,
                         ca_key: Path | None = None) -> list[Path]:
    """Write credentials/, clients/<user>/, broker/ (and standby/, central/ with a bridge) under
    `out`; returns the files written. `etc` (`standby_etc`) is where the site broker's (the
    standby's) passwd, acl, tls/ and bridge/ live on its box. `rotate`: None keeps every
    existing password, an empty collection renews all, else the named users'. Re-running with
    the same inputs rewrites identical files."""
    accounts = site_usernames(inventory)
    names = accounts + ([inventory.bridge_username] if bridge is not None else [])
    if rotate:
        unknown = set(rotate) - set(names)
        if unknown:
            raise InventoryError(f"--rotate {', '.join(sorted(unknown))}: no such MQTT user; "
                                 f"users are {', '.join(names)}")
    written = []
    passwords = {}
    for username in names:
        path = out / "credentials" / f"{username}.toml"
        renew = rotate is not None and (not rotate or username in rotate)
        passwords[username] = _password(path, renew)
        credentials = (f"# MQTT login of {username}; keep secret (mode 0600, or 0640 group "
                       f"hearth).\n[mqtt]\nusername = \"{username}\"\n"
                       f"password = \"{passwords[username]}\"\n")
        write_atomic(path, credentials, 0o600)
        written.append(path)
        if username in accounts and username != STANDBY_USER:
            client = out / "clients" / username
            write_atomic(client / "credentials.toml", credentials, 0o600)
            write_atomic(client / "mqtt.toml", mqtt_section(inventory, username))
            written += [client / "credentials.toml", client / "mqtt.toml"]
    if inventory.tls:
        make_tls(out, inventory, accounts, ca_cert, ca_key)
        written += [out / "clients" / name / f"{stem}"
                    for name in accounts for stem in ("ca.crt", "client.crt", "client.key")]
    passwd = passwd_text({user: passwords[user] for user in accounts},
                         _existing_hashes(out / "broker" / "passwd"))
    acl = acl_text(inventory)
    for broker in inventory.brokers:
        directory = out / broker.role
        broker_etc = etc if broker.role == "broker" else (standby_etc or etc)
        write_atomic(directory / "passwd", passwd, 0o600)
        write_atomic(directory / "acl", acl)
        config = mosquitto_conf(inventory, broker, broker_etc)
        secret = broker.role == "standby" or bridge is not None
        if broker.role == "standby":
            config += standby_bridge_conf(inventory, passwords[STANDBY_USER], broker_etc)
        elif bridge is not None:
            # Only the site broker bridges to the centre: the standby's messages reach it
            # through the standby's own bridge, and a second uplink would send them twice.
            config += bridge_conf(inventory, bridge, passwords[inventory.bridge_username],
                                  broker_etc)
            if bridge.cafile is not None:
                write_atomic(directory / "bridge" / "central-ca.crt", bridge.cafile.read_bytes())
                written.append(directory / "bridge" / "central-ca.crt")
        # A bridge's password makes the config a secret: 0600 here, and the image installs
        # it readable by root and the mosquitto group only.
        write_atomic(directory / "mosquitto.conf", config, 0o600 if secret else 0o644)
        written += [directory / "passwd", directory / "acl", directory / "mosquitto.conf"]
    if bridge is not None:
        central = out / "central"
        bridge_users = {inventory.bridge_username: passwords[inventory.bridge_username]}
        write_atomic(central / "passwd",
                     passwd_text(bridge_users, _existing_hashes(central / "passwd")), 0o600)
        write_atomic(central / "acl", central_acl_text(inventory))
        written += [central / "passwd", central / "acl"]
    return written
