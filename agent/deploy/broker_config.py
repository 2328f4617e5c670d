"""Mosquitto configuration for a Hearth site from its inventory: accounts, ACLs, TLS, bridge.

The broker is the only thing that can stop a board from writing another board's topics or a
leader's setpoints, so the ACLs here are the security boundary of the MQTT contract
(docs/mqtt.md): a board writes only its own status/state/event/reply and reads only its own
`cmd/#`, its own setpoint and its module's interlock; nobody connects anonymously, and no
account can take over another's connection (its client id is its username). One leader
board per module runs the module's Mosquitto; this module writes, for each of them, the
password file (mosquitto_passwd's `$7$` PBKDF2-SHA512 format), the ACL file, the broker
config and, on request, TLS material (via the openssl tool) and a bridge to a central broker.
Used by `hearth broker-config` and by scripts/provision, so there is one definition.
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
SITE_USER = "site"
OPERATOR_USER = "operator"
DEFAULT_BRIDGE_QUEUE = 10000
LEADER_COMMANDS = ("setpoint", "identify")
"""docs/mqtt.md's commands a leader may send; the rest are the operator's. Enforced here, by
topic, because the payload's `by` field is only what the sender claims."""
RESERVED_BOARD_NAMES = frozenset({"leader"})
"""`<module>/leader/...` is the leader's subtree: a board called `leader` would own it."""
RESERVED_MODULE_NAMES = frozenset({"site"})
"""`hearth/v1/<site>/site/...` holds the site topics: a module called `site` would own them."""
TOP_FIELDS = {
    "site": IDENTITY_FIELDS["site"],
    "tls": Field(bool, "serve MQTT over TLS (a site CA is generated unless one is given)",
                 default=False),
    "port": Field(int, "the brokers' listener port (default 8883 with TLS, else 1883)",
                  default=None, min=1, max=65535),
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
    "host": Field(str, "the name boards connect to for this module's broker",
                  pattern=r"[^\s]+", example="hearth-m1.local"),
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


@dataclasses.dataclass(frozen=True)
class Leader:
    module: str
    board: str
    host: str

    @property
    def username(self) -> str:
        return f"leader.{self.module}"


@dataclasses.dataclass(frozen=True)
class Inventory:
    site: str
    modules: tuple[str, ...]
    boards: tuple[Board, ...]
    leaders: tuple[Leader, ...]
    tls: bool
    port: int | None
    bind_address: str | None
    operators: tuple[str, ...] = ()
    """Names of operator accounts besides `operator`: one account holds one connection."""

    @property
    def operator_usernames(self) -> list[str]:
        return [OPERATOR_USER, *(f"{OPERATOR_USER}.{name}" for name in self.operators)]

    @property
    def listener_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls else 1883

    def bridge_username(self, module: str) -> str:
        """Unique across a fleet on the central broker: names cannot contain '.'."""
        return f"bridge.{self.site}.{module}"


@dataclasses.dataclass(frozen=True)
class Bridge:
    """Where a site's brokers forward their topics: the central broker, optionally over TLS."""

    host: str
    port: int
    cafile: Path | None = None
    queue: int = DEFAULT_BRIDGE_QUEUE


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
    leaders = _leaders(check, file, document, top["site"], modules, boards)
    operators = top["operators"] or ()
    for position, name in enumerate(operators, start=1):
        if name in operators[:position - 1]:
            check.report(file, f"operators[{position}]", "a name no other operator account has",
                         value=name, hint="the broker gives an account one connection at a time")
    check.raise_problems("the inventory", InventoryError)
    return Inventory(top["site"], tuple(modules), tuple(boards), tuple(leaders), top["tls"],
                     top["port"], top["bind_address"], operators)


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


def _leaders(check: TableCheck, file: str, document: dict, site: str | None,
             modules: list[str], boards: list[Board]) -> list[Leader]:
    leaders: dict[str, str] = {}  # module -> its [[leader]]'s key path
    found = []
    for at, entry in check.tables(document.get("leader", ABSENT), file, "leader"):
        values = check.fields(entry, LEADER_FIELDS, file, f"{at}.", "a [[leader]]")
        module, board, host = values["module"], values["board"], values["host"]
        if module is not None and module not in modules:
            check.report(file, f"{at}.module", _one_of_modules(modules), value=module)
            continue
        if module in leaders:
            check.report(file, f"{at}.module", f"a module without a [[leader]] ({leaders[module]} "
                         "leads it)", value=module, hint="one leader board runs each module's "
                         "broker")
            continue
        if site is None or None in (module, board, host):
            continue
        leaders[module] = at
        known = [b.identity.board for b in boards if b.identity.module == module]
        if board not in known:
            check.report(file, f"{at}.board", f"a [[board]] of module {module}: "
                         + (", ".join(map(repr, known)) or "it has none"), value=board,
                         hint=suggest(board, known))
            continue
        found.append(Leader(module, board, host))
    if site is not None and modules and not check.problems:
        for module in modules:
            if module not in leaders:
                check.report(file, "leader", f"a [[leader]] for module {module}",
                             hint="every module needs exactly one: the board that runs its "
                             "broker")
    return found


def _one_of_modules(modules: list[str]) -> str:
    return "one of the [[module]] names: " + (", ".join(map(repr, modules)) or "none")


def acl_text(inventory: Inventory, module: str) -> str:
    """Per-user blocks, because the username `m1.b07` cannot be turned into the topic levels
    `m1/b07` by a `%u` pattern. Mosquitto denies whatever no line grants."""
    site_root = f"{TOPIC_ROOT}/{inventory.site}"
    module_root = f"{site_root}/{module}"
    blocks = [f"# Mosquitto ACL of module {module}, site {inventory.site}. Generated by hearth "
              "broker-config;\n# re-run it instead of editing. Anything not granted is denied."]
    for board in inventory.boards:
        if board.identity.module != module:
            continue
        own = f"{module_root}/{board.identity.board}"
        blocks.append("\n".join([
            f"user {board.username}",
            *(f"topic write {own}/{kind}" for kind in ("status", "state", "event", "reply")),
            f"topic read {own}/cmd/#",
            f"topic read {module_root}/leader/setpoint/{board.identity.board}",
            f"topic read {module_root}/leader/interlock",
            f"topic read {module_root}/leader/status"]))
    leader = next(leader for leader in inventory.leaders if leader.module == module)
    blocks.append("\n".join([
        f"user {leader.username}",
        f"topic read {module_root}/#",
        f"topic write {module_root}/leader/setpoint/+",
        *(f"topic write {module_root}/leader/{kind}" for kind in ("interlock", "status",
                                                                   "state", "event")),
        *(f"topic write {module_root}/+/cmd/{name}" for name in LEADER_COMMANDS),
        f"topic read {site_root}/site/#",
        "topic readwrite homeassistant/#"]))
    blocks.append("\n".join([
        f"user {SITE_USER}",
        f"topic read {site_root}/#",
        f"topic write {site_root}/+/leader/budget",
        f"topic readwrite {site_root}/site/#",
        "topic readwrite homeassistant/#"]))
    blocks += ["\n".join([
        f"user {operator}",
        f"topic read {site_root}/#",
        "topic read homeassistant/#",
        f"topic write {site_root}/+/+/cmd/#",
        f"topic write {site_root}/site/demand",
        f"topic write {site_root}/{TARGET_SET}"]) for operator in inventory.operator_usernames]
    return "\n\n".join(blocks) + "\n"


def mosquitto_conf(inventory: Inventory, leader: Leader, etc: str) -> str:
    """`use_username_as_clientid`: Mosquitto closes a connection (and fires its Last Will) when
    another logs in with the same client id, so without it any account could knock the leader
    off by borrowing its client id. With it, an account's client id is its username: only the
    holder of an account's password can take that account's connection over."""
    listener = f"listener {inventory.listener_port}"
    if inventory.bind_address is not None:
        listener += f" {inventory.bind_address}"
    lines = [f"# Mosquitto for module {leader.module} of site {inventory.site}, on board "
             f"{leader.board}. Generated by hearth broker-config; re-run it instead of editing.",
             "per_listener_settings false", "allow_anonymous false",
             f"password_file {etc}/passwd", f"acl_file {etc}/acl", listener,
             "# One connection per account: its client id is its username (docs/deployment.md).",
             "use_username_as_clientid true"]
    if inventory.tls:
        lines += [f"cafile {etc}/tls/ca.crt", f"certfile {etc}/tls/server.crt",
                  f"keyfile {etc}/tls/server.key", "tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def bridge_conf(inventory: Inventory, leader: Leader, bridge: Bridge, password: str,
                etc: str) -> str:
    """Appended to mosquitto.conf rather than kept in a file of its own: Mosquitto reads
    `include_dir` only in its main config file, and ours is already an included conf.d file, so
    a nested include_dir would be ignored without a word. See docs/bridge.md for each setting."""
    module_root = f"{TOPIC_ROOT}/{inventory.site}/{leader.module}"
    name = f"hearth-{inventory.site}-{leader.module}"
    lines = [
        f"# Bridge of module {leader.module}, site {inventory.site} to the central broker. "
        "Generated by hearth broker-config.",
        f"# Every client's queue on this broker is bounded by this (the bridge's too): beyond "
        "it, QoS 1 messages are dropped.",
        f"max_queued_messages {bridge.queue}",
        f"connection {name}",
        f"address {bridge.host}:{bridge.port}",
        f"topic {module_root}/# out 1",
        f"topic {TOPIC_ROOT}/{inventory.site}/site/# out 1",
        f"remote_clientid {name}",
        f"local_clientid {name}-local",
        f"remote_username {inventory.bridge_username(leader.module)}",
        f"remote_password {password}",
        "cleansession false",
        "local_cleansession false",
        "bridge_attempt_unsubscribe false",
        "bridge_protocol_version mqttv311",
        "try_private false",
        "restart_timeout 1 60",
        "keepalive_interval 30",
        "notifications true",
        f"notification_topic {module_root}/leader/bridge",
    ]
    if bridge.cafile is not None:
        lines += [f"bridge_cafile {etc}/bridge/central-ca.crt", "bridge_insecure false",
                  "bridge_tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def central_acl_text(inventory: Inventory) -> str:
    """Each bridge may write only its own module's subtree and the site topics at the central
    broker, so one compromised leader cannot speak for other modules or sites."""
    blocks = [f"# Central broker ACL lines for site {inventory.site}'s bridges; merge into the "
              "central broker's acl_file. Generated by hearth broker-config."]
    for module in inventory.modules:
        root = f"{TOPIC_ROOT}/{inventory.site}"
        blocks.append(f"user {inventory.bridge_username(module)}\n"
                      f"topic write {root}/{module}/#\n"
                      f"topic write {root}/site/#")
    return "\n\n".join(blocks) + "\n"


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


def make_tls(out: Path, inventory: Inventory, ca_cert: Path | None = None,
             ca_key: Path | None = None) -> None:
    """A site CA (made here, or the operator's own given as ca_cert/ca_key) signs one server
    certificate per leader, named for the host boards connect to. Existing keys are kept."""
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
    for leader in inventory.leaders:
        tls = out / "leaders" / leader.module / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        if (tls / "server.crt").exists() and (tls / "ca.crt").read_bytes() == \
                (ca / "ca.crt").read_bytes():
            continue
        extensions = tls / "server.ext"
        extensions.write_text(f"subjectAltName=DNS:{leader.host}\n"
                              "extendedKeyUsage=serverAuth\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(tls / "server.key"), "-out", str(tls / "server.csr"),
                "-subj", f"/CN={leader.host}")
        openssl("x509", "-req", "-in", str(tls / "server.csr"), "-CA", str(ca / "ca.crt"),
                "-CAkey", str(ca / "ca.key"), "-CAcreateserial", "-out", str(tls / "server.crt"),
                "-days", "1825", "-extfile", str(extensions))
        (tls / "server.key").chmod(0o600)
        (tls / "server.csr").unlink()
        extensions.unlink()
        (tls / "ca.crt").write_bytes((ca / "ca.crt").read_bytes())


def usernames(inventory: Inventory, bridge: Bridge | None) -> list[str]:
    names = [board.username for board in inventory.boards]
    names += [leader.username for leader in inventory.leaders]
    names += [SITE_USER, *inventory.operator_usernames]
    if bridge is not None:
        names += [inventory.bridge_username(module) for module in inventory.modules]
    return names


def write_broker_configs(inventory: Inventory, out: Path, etc: str = DEFAULT_BROKER_ETC, *,
                         rotate: Collection[str] | None = None, bridge: Bridge | None = None,
                         ca_cert: Path | None = None, ca_key: Path | None = None) -> list[Path]:
    """Write credentials/, leaders/<module>/ (and central/ with a bridge) under `out`; returns
    the files written. `etc` is where a leader's passwd, acl, tls/ and bridge/ live on the board.
    `rotate`: None keeps every existing password, an empty collection renews all, else the
    named users'. Re-running with the same inputs rewrites identical files."""
    names = usernames(inventory, bridge)
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
        write_atomic(path, f"# MQTT login of {username}; keep secret, install in /etc/hearth/ "
                           "of that board (mode 0640, group hearth).\n"
                           f'[mqtt]\nusername = "{username}"\n'
                           f'password = "{passwords[username]}"\n', 0o600)
        written.append(path)
    if inventory.tls:
        make_tls(out, inventory, ca_cert, ca_key)
    for leader in inventory.leaders:
        directory = out / "leaders" / leader.module
        module_users = [board.username for board in inventory.boards
                        if board.identity.module == leader.module]
        module_users += [leader.username, SITE_USER, *inventory.operator_usernames]
        write_atomic(directory / "passwd",
                     passwd_text({user: passwords[user] for user in module_users},
                                 _existing_hashes(directory / "passwd")), 0o600)
        write_atomic(directory / "acl", acl_text(inventory, leader.module))
        config = mosquitto_conf(inventory, leader, etc)
        if bridge is not None:
            # The bridge's password makes the config a secret: 0600 here, and the leader image
            # should install it readable by root and the mosquitto group only.
            config += bridge_conf(inventory, leader, bridge,
                                  passwords[inventory.bridge_username(leader.module)], etc)
            if bridge.cafile is not None:
                write_atomic(directory / "bridge" / "central-ca.crt",
                             bridge.cafile.read_bytes())
                written.append(directory / "bridge" / "central-ca.crt")
        write_atomic(directory / "mosquitto.conf", config, 0o600 if bridge else 0o644)
        written += [directory / "passwd", directory / "acl", directory / "mosquitto.conf"]
    if bridge is not None:
        central = out / "central"
        bridge_users = {inventory.bridge_username(m): passwords[inventory.bridge_username(m)]
                        for m in inventory.modules}
        write_atomic(central / "passwd",
                     passwd_text(bridge_users, _existing_hashes(central / "passwd")), 0o600)
        write_atomic(central / "acl", central_acl_text(inventory))
        written += [central / "passwd", central / "acl"]
    return written

