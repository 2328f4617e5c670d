"""Turn a site inventory into what each board and leader needs: identity files, the identity
table, per-board MQTT credentials, each leader's Mosquitto configuration (password file in
mosquitto_passwd's PBKDF2-SHA512 format, ACL keeping every board to its own topics) and,
optionally, TLS material made with the openssl command-line tool."""

import base64
import dataclasses
import hashlib
import hmac
import os
import secrets
import subprocess
import tomllib
from pathlib import Path

from agent.identity import Identity, identity_from_mapping

# mosquitto_passwd's "$7$" hash: PBKDF2-HMAC-SHA512, 101 iterations and a 12-byte salt by
# default (mosquitto's password_mosq.h), written as $7$<iterations>$<base64 salt>$<base64 hash>.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
TOPIC_ROOT = "hearth/v1"


class InventoryError(ValueError):
    """The inventory cannot be used; the message names the entry, key and value."""


def mosquitto_hash(password: str, salt: bytes | None = None,
                   iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, encoded: str) -> bool:
    _, kind, iterations, salt, digest = encoded.split("$")
    if kind != "7":
        return False
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


@dataclasses.dataclass(frozen=True)
class Inventory:
    site: str
    boards: list[Board]
    leaders: list[Leader]
    tls: bool
    port: int


def load_inventory(path: Path) -> Inventory:
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    where = str(path)
    site = identity_from_mapping({"site": document.get("site"), "module": "m", "board": "b"},
                                 where).site
    modules = []
    for number, module in enumerate(document.get("module", []), start=1):
        modules.append(identity_from_mapping({"site": site, "module": module.get("name"),
                                              "board": "b"}, f"{where} [[module]] #{number}")
                       .module)
    if len(set(modules)) != len(modules) or not modules:
        raise InventoryError(f"{where}: [[module]] names must be present and unique, got "
                             f"{modules}")
    boards, seen_serials, seen_slots = [], {}, {}
    for number, entry in enumerate(document.get("board", []), start=1):
        at = f"{where} [[board]] #{number}"
        identity = identity_from_mapping({"site": site, "module": entry.get("module"),
                                          "board": entry.get("name")}, at)
        if identity.module not in modules:
            raise InventoryError(f"{at}: module = {identity.module!r} is not a [[module]] name "
                                 f"({', '.join(modules)})")
        serial, slot = entry.get("serial"), entry.get("slot")
        if serial is not None:
            try:
                key = int(serial, 16)
            except (TypeError, ValueError):
                raise InventoryError(f"{at}: serial = {serial!r} is not hexadecimal") from None
            if key in seen_serials:
                raise InventoryError(f"{at}: serial {serial} is also board "
                                     f"{seen_serials[key]}")
            seen_serials[key] = identity
        if slot is not None:
            if not isinstance(slot, int) or not 1 <= slot <= 63:
                raise InventoryError(f"{at}: slot = {slot!r} is not an integer from 1 to 63")
            if (identity.module, slot) in seen_slots:
                raise InventoryError(f"{at}: slot {slot} of module {identity.module} is also "
                                     f"board {seen_slots[identity.module, slot]}")
            seen_slots[identity.module, slot] = identity
        boards.append(Board(identity, serial, slot))
    names = [board.identity for board in boards]
    if len(set(names)) != len(names):
        raise InventoryError(f"{where}: a board name appears twice in one module")
    leaders = []
    for number, entry in enumerate(document.get("leader", []), start=1):
        at = f"{where} [[leader]] #{number}"
        leader = Leader(entry.get("module"), entry.get("board"), entry.get("host", ""))
        if Identity(site, leader.module, leader.board) not in names:
            raise InventoryError(f"{at}: module {leader.module!r} board {leader.board!r} is "
                                 "not a [[board]]")
        if not leader.host:
            raise InventoryError(f"{at}: host is missing; give the name boards connect to, "
                                 "e.g. 'hearth-m1.local'")
        leaders.append(leader)
    led = [leader.module for leader in leaders]
    if sorted(led) != sorted(modules):
        raise InventoryError(f"{where}: every module needs exactly one [[leader]]; modules "
                             f"{modules}, leaders for {led}")
    tls = bool(document.get("tls", False))
    port = document.get("port", 8883 if tls else 1883)
    return Inventory(site, boards, leaders, tls, port)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)


def _password(path: Path) -> str:
    """Keep a password once made: re-running provision must not lock boards out."""
    if path.exists():
        return tomllib.loads(path.read_text())["mqtt"]["password"]
    return secrets.token_urlsafe(24)


def openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def make_tls(out: Path, inventory: Inventory) -> None:
    ca = out / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    if not (ca / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.crt"),
                "-days", "3650", "-subj", f"/CN=Hearth {inventory.site} CA")
        (ca / "ca.key").chmod(0o600)
    for leader in inventory.leaders:
        tls = out / "leaders" / leader.module / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        if (tls / "server.crt").exists():
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


def broker_config(inventory: Inventory, leader: Leader, etc: str) -> str:
    lines = [f"# Mosquitto for module {leader.module} of site {inventory.site}, on board "
             f"{leader.board}. Generated by scripts/provision; re-run it instead of editing.",
             "per_listener_settings false", "allow_anonymous false",
             f"password_file {etc}/passwd", f"acl_file {etc}/acl",
             f"listener {inventory.port}"]
    if inventory.tls:
        lines += [f"cafile {etc}/tls/ca.crt", f"certfile {etc}/tls/server.crt",
                  f"keyfile {etc}/tls/server.key", "tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def acl(inventory: Inventory, module: str, leader: Leader) -> str:
    """Each board reads and writes only its own subtree and reads its module's leader topics;
    the leader owns the module subtree; the site user owns the site and discovery topics."""
    module_root = f"{TOPIC_ROOT}/{inventory.site}/{module}"
    blocks = [f"# Generated by scripts/provision for module {module}; re-run it to change."]
    for board in inventory.boards:
        if board.identity.module == module:
            blocks.append(f"user {board.username}\n"
                          f"topic readwrite {module_root}/{board.identity.board}/#\n"
                          f"topic read {module_root}/leader/#")
    blocks.append(f"user leader.{module}\ntopic readwrite {module_root}/#")
    blocks.append(f"user site\ntopic readwrite {TOPIC_ROOT}/{inventory.site}/#\n"
                  "topic readwrite homeassistant/#")
    return "\n\n".join(blocks) + "\n"


def provision(inventory_path: Path, out: Path, broker_etc: str = "/etc/mosquitto/hearth") -> \
        list[Path]:
    """Write everything under `out`; returns the files written. Safe to re-run: passwords and
    TLS keys already there are kept."""
    inventory = load_inventory(inventory_path)
    written = []
    table = [f"# Generated by scripts/provision from {inventory_path.name}: serial numbers and "
             "slot straps to board names. Install as /etc/hearth/identity-table.toml.",
             f'site = "{inventory.site}"']
    for board in inventory.boards:
        identity = board.identity
        path = out / "identities" / identity.module / f"{identity.board}.toml"
        _write(path, f"# Identity of {identity}; scripts/flash --identity-file {path.name}\n"
                     f'[identity]\nsite = "{identity.site}"\nmodule = "{identity.module}"\n'
                     f'board = "{identity.board}"\n')
        written.append(path)
        entry = [f'\n[[board]]\nmodule = "{identity.module}"\nboard = "{identity.board}"']
        if board.serial is not None:
            entry.append(f'serial = "{board.serial}"')
        if board.slot is not None:
            entry.append(f"slot = {board.slot}")
        table.append("\n".join(entry))
    _write(out / "identity-table.toml", "\n".join(table) + "\n")
    written.append(out / "identity-table.toml")

    users = {board.username: board for board in inventory.boards}
    users.update({f"leader.{leader.module}": leader for leader in inventory.leaders})
    users["site"] = None
    passwords = {}
    for username in users:
        path = out / "credentials" / f"{username}.toml"
        passwords[username] = _password(path)
        _write(path, f"# MQTT login of {username}; keep secret, install in /etc/hearth/ of "
                     "that board (mode 0640, group hearth).\n"
                     f'[mqtt]\nusername = "{username}"\npassword = "{passwords[username]}"\n',
               0o600)
        written.append(path)
    if inventory.tls:
        make_tls(out, inventory)
    for leader in inventory.leaders:
        directory = out / "leaders" / leader.module
        module_users = [u for u, owner in users.items()
                        if owner is None or getattr(owner, "module", None) == leader.module
                        or getattr(getattr(owner, "identity", None), "module", None)
                        == leader.module]
        _write(directory / "passwd", "".join(f"{u}:{mosquitto_hash(passwords[u])}\n"
                                             for u in module_users), 0o600)
        _write(directory / "acl", acl(inventory, leader.module, leader))
        _write(directory / "mosquitto.conf", broker_config(inventory, leader, broker_etc))
        written += [directory / "passwd", directory / "acl", directory / "mosquitto.conf"]
    os.sync()
    return written
