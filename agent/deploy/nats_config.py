"""NATS configuration for the fleet tier (docs/fleet.md): the hub's three clustered servers and
each site's leaf node, from one fleet inventory, with accounts, passwords and optional TLS.

One inventory for both ends because they must agree: the hub holds every site's leaf login,
and a site's leaf node needs the hub's addresses and its own login. A site's Mosquitto
inventory knows neither, so this is a sibling of agent/deploy/broker_config.py (and of
`hearth broker-config`) rather than a part of it; it reuses its password keeping, atomic writes
and openssl helpers. The leaf node's `uplink` login is the one `hearth uplink` uses.
"""

import dataclasses
import json
import secrets
import tomllib
from pathlib import Path

from agent.deploy.broker_config import (UPLINK_USER, InventoryError, _subject_alt_name, openssl,
                                        sign_certificate, write_atomic)
from agent.errors import ConfigFileError
from agent.fleet.streams import source_deliver_prefix
from agent.fleet.subjects import HUB_DOMAIN, SITE_STREAM, site_domain, site_subjects
from agent.identity import IDENTITY_FIELDS
from agent.schema import Field
from agent.tables import ABSENT, TableCheck

ACCOUNT = "HEARTH"
"""The one account that holds Hearth's subjects and streams, at the hub and on every leaf."""
CLUSTER_NAME = "hearth-hub"
FLEET_USER = "fleet"
"""The centre's consumers (and whoever creates the hub's streams) log in to the hub as this."""
DEFAULT_STORE = "/var/lib/nats/hearth"
DEFAULT_ETC = "/etc/nats/hearth"
HOST_FIELD = Field(str, "a host name or address", pattern=r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}"
                   r"[A-Za-z0-9])?", example="hub1.example.net")
TOP_FIELDS = {
    "tls": Field(bool, "leaf connections over TLS, both ends with a certificate of the fleet "
                 "CA (generated with openssl)", default=False),
    "etc": Field(str, "where each server's config, passwords and tls/ live on its box",
                 default=DEFAULT_ETC, pattern=r"/\S*", example=DEFAULT_ETC),
}
HUB_FIELDS = {
    "name": Field(str, "the server's name in the cluster", pattern=r"[a-z0-9][a-z0-9_-]{0,31}",
                  example="hub1"),
    "host": HOST_FIELD,
    "bind_address": Field(str, "the address it listens on (default all)", default="0.0.0.0",
                          pattern=r"\S+"),
    "client_port": Field(int, "port for the centre's clients", default=4222, min=1, max=65535),
    "cluster_port": Field(int, "port for the other hub servers", default=6222, min=1,
                          max=65535),
    "leaf_port": Field(int, "port the sites' leaf nodes connect to", default=7422, min=1,
                       max=65535),
    "store_dir": Field(str, "JetStream's file storage", default=DEFAULT_STORE, pattern=r"/\S*"),
}
SITE_FIELDS = {
    "name": IDENTITY_FIELDS["site"],
    "bind_address": Field(str, "the leaf node's client address (the uplink's)",
                          default="127.0.0.1", pattern=r"\S+"),
    "client_port": Field(int, "the leaf node's client port", default=4222, min=1, max=65535),
    "store_dir": Field(str, "JetStream's file storage on the site's box",
                       default=DEFAULT_STORE, pattern=r"/\S*"),
    "max_store_bytes": Field(int, "the most the site's stream may keep on disk",
                             default=8 * 2**30, min=2**20),
}


class NatsInventoryError(InventoryError):
    """The fleet inventory cannot be used; the message names the file, key and value."""


@dataclasses.dataclass(frozen=True)
class HubServer:
    name: str
    host: str
    bind_address: str
    client_port: int
    cluster_port: int
    leaf_port: int
    store_dir: str


@dataclasses.dataclass(frozen=True)
class LeafSite:
    name: str
    bind_address: str
    client_port: int
    store_dir: str
    max_store_bytes: int

    @property
    def leaf_user(self) -> str:
        """The site's login at the hub; '.' never occurs in a site name."""
        return f"leaf.{self.name}"


@dataclasses.dataclass(frozen=True)
class Fleet:
    hubs: tuple[HubServer, ...]
    sites: tuple[LeafSite, ...]
    tls: bool
    etc: str


def load_fleet(path: Path) -> Fleet:
    """The fleet inventory: three [[hub]] servers and the [[site]]s; every problem at once."""
    check = TableCheck()
    file = str(path)
    document = check.read_toml(path, "pass the fleet inventory (docs/fleet.md)")
    if document is None:
        check.raise_problems("the fleet inventory", NatsInventoryError)
    top = check.fields(document, TOP_FIELDS, file, "", "the fleet inventory",
                       other_keys=("hub", "site"))
    hubs = [HubServer(**check.fields(entry, HUB_FIELDS, file, f"{at}.", "a [[hub]]"))
            for at, entry in check.tables(document.get("hub", ABSENT), file, "hub")]
    sites = [LeafSite(**check.fields(entry, SITE_FIELDS, file, f"{at}.", "a [[site]]"))
             for at, entry in check.tables(document.get("site", ABSENT), file, "site")]
    if not check.problems:
        if len(hubs) != 3:
            check.report(file, "hub", "three [[hub]] servers", value=len(hubs),
                         hint="the hub's streams keep 3 replicas, one per server")
        for what, names in (("hub", [hub.name for hub in hubs]),
                            ("site", [site.name for site in sites])):
            for name in {name for name in names if names.count(name) > 1}:
                check.report(file, what, f"a name no other [[{what}]] has", value=name)
        if not sites:
            check.report(file, "site", "at least one [[site]]",
                         hint='add one per site, e.g. [[site]] name = "maple-school"')
        if sites and any(site.name == HUB_DOMAIN for site in sites):
            check.report(file, "site", f"a site name other than {HUB_DOMAIN!r}", value=HUB_DOMAIN,
                         hint="the hub's JetStream domain has that name")
    check.raise_problems("the fleet inventory", NatsInventoryError)
    return Fleet(tuple(hubs), tuple(sites), top["tls"], top["etc"])


def _quoted(text: str) -> str:
    """A NATS config string: JSON's quoting is what its parser reads."""
    return json.dumps(text)


def fleet_login(fleet: Fleet, out: Path) -> tuple[list[str], str]:
    """The hub's client URLs and the `fleet` account's password that `hearth uplink
    nats-config --out OUT` wrote, for the tools that work at the centre."""
    credentials = out / "credentials" / f"{FLEET_USER}.toml"
    try:
        password = tomllib.loads(credentials.read_text())["nats"]["password"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
        raise ConfigFileError(f"{credentials}: no [nats] password ({error}); run hearth uplink "
                              "nats-config with this --out first") from None
    return [f"nats://{hub.host}:{hub.client_port}" for hub in fleet.hubs], password


def leaf_permissions(site: LeafSite) -> str:
    """What a site's leaf login may do at the hub: what the hub's sourcing of its stream needs
    and no more, so one site can neither read nor write another's. At the hub a leaf login's
    `publish` is what the leaf may send in and `subscribe` what it may take out.

    In: its own subjects, what its stream delivers (`deliver.<site>`), the replies to the
    hub's JetStream requests (`$JSC.R.<token>`: the hub subscribes only while a request of its
    own waits, with a token no site sees) and the servers' loop detection (`$LDS`). Out: its
    own subjects, the hub's requests to its JetStream domain, and the hub's answers to its
    stream's flow control (`$JS.FC.SITE.<consumer>`; without them a backlog stops after its
    first few megabytes). Every site's stream is named SITE, so a site could ask for another's
    flow-control answers too: empty messages that carry nothing of the other site's."""
    publish = [site_subjects(site.name), f"{source_deliver_prefix(site.name)}.>", "$JSC.R.>",
               "$LDS.>"]
    subscribe = [site_subjects(site.name), f"$JS.{site_domain(site.name)}.API.>",
                 f"$JS.FC.{SITE_STREAM}.>"]
    return (f"{{publish: {{allow: [{', '.join(map(_quoted, publish))}]}}, "
            f"subscribe: {{allow: [{', '.join(map(_quoted, subscribe))}]}}}}")


def hub_conf(fleet: Fleet, hub: HubServer, passwords: dict[str, str]) -> str:
    """One hub server: clustered with the other two, JetStream in domain `hub`, leaf nodes
    accepted into the HEARTH account, one login per site's leaf node and one for the centre."""
    routes = ", ".join(_quoted(f"nats-route://{other.host}:{other.cluster_port}")
                       for other in fleet.hubs if other != hub)
    users = [f"      {{user: {_quoted(site.leaf_user)}, "
             f"password: {_quoted(passwords[site.leaf_user])}, "
             f"permissions: {leaf_permissions(site)}}}" for site in fleet.sites]
    users.append(f"      {{user: {_quoted(FLEET_USER)}, "
                 f"password: {_quoted(passwords[FLEET_USER])}}}")
    # no_advertise: a leaf node keeps to the addresses it was given, not the cluster's own
    # view of them (internal addresses, or another path than the site's WAN).
    leafnodes = [f"  listen: {_quoted(f'{hub.bind_address}:{hub.leaf_port}')}",
                 "  no_advertise: true"]
    if fleet.tls:
        leafnodes += ["  tls {", f"    cert_file: {_quoted(f'{fleet.etc}/tls/server.crt')}",
                      f"    key_file: {_quoted(f'{fleet.etc}/tls/server.key')}",
                      f"    ca_file: {_quoted(f'{fleet.etc}/tls/ca.crt')}",
                      "    verify: true", "  }"]
    return "\n".join([
        f"# Hub server {hub.name} of the Hearth fleet. Generated by hearth uplink nats-config; "
        "re-run it instead of editing.",
        f"server_name: {_quoted(hub.name)}",
        f"listen: {_quoted(f'{hub.bind_address}:{hub.client_port}')}",
        "jetstream {", f"  domain: {_quoted(HUB_DOMAIN)}",
        f"  store_dir: {_quoted(hub.store_dir)}", "}",
        "cluster {", f"  name: {_quoted(CLUSTER_NAME)}",
        f"  listen: {_quoted(f'{hub.bind_address}:{hub.cluster_port}')}",
        f"  routes: [{routes}]", "}",
        "leafnodes {", *leafnodes, "}",
        "accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: [",
        ",\n".join(users), "    ]", "  }", "}", ""])


def leaf_conf(fleet: Fleet, site: LeafSite, passwords: dict[str, str]) -> str:
    """A site's leaf node: JetStream of its own in domain `<site>` (so the site keeps writing
    while the hub is away), the uplink's login, and one remote that binds the local HEARTH
    account to the site's login at the hub, trying each hub server in turn."""
    scheme = "tls" if fleet.tls else "nats-leaf"
    login = f"{site.leaf_user}:{passwords[site.leaf_user]}"  # url-safe: see _password
    urls = ", ".join(_quoted(f"{scheme}://{login}@{hub.host}:{hub.leaf_port}")
                     for hub in fleet.hubs)
    remote = [f"    urls: [{urls}]", f"    account: {ACCOUNT}"]
    if fleet.tls:
        remote += ["    tls {", f"      cert_file: {_quoted(f'{fleet.etc}/tls/client.crt')}",
                   f"      key_file: {_quoted(f'{fleet.etc}/tls/client.key')}",
                   f"      ca_file: {_quoted(f'{fleet.etc}/tls/ca.crt')}", "    }"]
    return "\n".join([
        f"# Leaf node of site {site.name} in the Hearth fleet. Generated by hearth uplink "
        "nats-config; re-run it instead of editing.",
        f"server_name: {_quoted(f'leaf-{site.name}')}",
        f"listen: {_quoted(f'{site.bind_address}:{site.client_port}')}",
        "jetstream {", f"  domain: {_quoted(site_domain(site.name))}",
        f"  store_dir: {_quoted(site.store_dir)}",
        f"  max_file_store: {site.max_store_bytes * 5 // 4}", "}",  # the stream's and room
        "leafnodes {", "  remotes: [", "   {", *remote, "   }", "  ]", "}",
        "accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: [",
        f"      {{user: {_quoted(UPLINK_USER)}, password: "
        f"{_quoted(passwords[uplink_user(site)])}}}",
        "    ]", "  }", "}", ""])


def uplink_user(site: LeafSite) -> str:
    """The key of a site's uplink password among the fleet's (its login on the leaf is
    UPLINK_USER)."""
    return f"{UPLINK_USER}.{site.name}"


def _password(path: Path) -> str:
    """Kept once made (a re-run must not lock a site out); url-safe, as it goes in a URL."""
    if not path.exists():
        return secrets.token_urlsafe(24)
    try:
        return tomllib.loads(path.read_text())["nats"]["password"]
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        raise ConfigFileError(f"{path}: no [nats] password in it; delete the file to make a "
                              "new password, or restore it from a backup") from None


def _tls(out: Path, fleet: Fleet) -> None:
    """A fleet CA signs a server certificate per hub server (for its host) and a client
    certificate per site's leaf node (CN its login); existing ones are kept."""
    ca = out / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    if not (ca / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.crt"),
                "-days", "3650", "-subj", "/CN=Hearth fleet CA")
        (ca / "ca.key").chmod(0o600)
    pairs = [(out / "hub" / hub.name / "tls", "server", f"/CN={hub.host}",
              f"subjectAltName={_subject_alt_name(hub.host)}\nextendedKeyUsage=serverAuth\n")
             for hub in fleet.hubs]
    pairs += [(out / "site" / site.name / "tls", "client", f"/CN={site.leaf_user}",
               "extendedKeyUsage=clientAuth\n") for site in fleet.sites]
    for directory, stem, subject, extensions in pairs:
        sign_certificate(directory, stem, subject, extensions, ca)


def write_nats_configs(fleet: Fleet, out: Path) -> list[Path]:
    """hub/<server>/nats.conf, site/<site>/nats.conf and uplink.toml, and credentials/ (the
    passwords, kept between runs) under `out`; returns the files written. Re-running with the
    same inventory rewrites identical files."""
    logins = [site.leaf_user for site in fleet.sites] + [FLEET_USER]
    logins += [uplink_user(site) for site in fleet.sites]
    passwords = {}
    written = []
    for login in logins:
        path = out / "credentials" / f"{login}.toml"
        passwords[login] = _password(path)
        write_atomic(path, f"# NATS login {login}; keep secret.\n[nats]\n"
                     f"password = {_quoted(passwords[login])}\n", 0o600)
        written.append(path)
    if fleet.tls:
        _tls(out, fleet)
    for hub in fleet.hubs:
        path = out / "hub" / hub.name / "nats.conf"
        write_atomic(path, hub_conf(fleet, hub, passwords), 0o600)
        written.append(path)
    for site in fleet.sites:
        directory = out / "site" / site.name
        write_atomic(directory / "nats.conf", leaf_conf(fleet, site, passwords), 0o600)
        write_atomic(directory / "uplink.toml", uplink_section(site, passwords[uplink_user(site)]),
                     0o600)
        written += [directory / "nats.conf", directory / "uplink.toml"]
    return written


def uplink_section(site: LeafSite, password: str) -> str:
    """The [nats] section of the site's `hearth uplink` config: its leaf node and login."""
    host = "127.0.0.1" if site.bind_address in ("0.0.0.0", "::") else site.bind_address
    return (f"# The [nats] section of hearth uplink's config at site {site.name}. Generated by "
            "hearth uplink nats-config; keep secret.\n[nats]\n"
            f"server = {_quoted(f'nats://{host}:{site.client_port}')}\n"
            f"username = {_quoted(UPLINK_USER)}\npassword = {_quoted(password)}\n"
            f"max_store_bytes = {site.max_store_bytes}\n")
