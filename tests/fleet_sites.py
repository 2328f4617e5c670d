"""Two simulated sites and a three-server hub on loopback, every role its own process: the
fleet's acceptance scenario (issue 19), run by tests/test_fleet_sites.py with a cut the suite
can afford and by scripts/fleet-outage with the issue's ten minutes (the same code; only the
cut's length differs).

Each site: its Mosquitto on `hearth broker-config`'s files, the site role, a leader and its
simulated boards (`hearth agent --sim`), `hearth uplink run`, its leaf node on `hearth uplink
nats-config`'s files, reaching the hub through a WAN relay the scenario can cut. An operator
(Home Assistant's account) asks for heat and switches each board between `mode safe` and
`mode auto`, so the boards raise events while they count energy, and it records everything
the site broker carries: what the hub must hold exactly once.
"""

import asyncio
import contextlib
import dataclasses
import datetime
import json
import queue
import signal
import socket
import subprocess
import threading
import time
import tomllib
import uuid
from pathlib import Path

import nats
import paho.mqtt.client as paho_client
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main as hearth
from agent.deploy.broker_config import CLIENT_ETC
from agent.deploy.nats_config import FLEET_USER, fleet_login, load_fleet
from agent.fleet.centre import CONSUMER
from agent.fleet.ledger_file import LedgerFile
from agent.fleet.subjects import HUB_DOMAIN, MSG_ID_HEADER, SITE_STREAM, hub_stream
from agent.mqtt import envelope
from test_broker_config import Mosquitto, free_port, login
from test_deployed_site import BOARD_BASE, Roles

SITES = ("maple-school", "oak-pool")
MODULE = "m1"
BOARDS = ("b01", "b02", "b03")
DEMAND_W = 10.0
"""About two thirds of three simulated boards: each gets a share and none sits at its limit."""
ROW_S = 10.0
"""The fleet ledger's rows in the scenario: a quarter hour would close none in a few minutes."""
TOGGLE_S = 2.0
"""How often the operator switches one board between `mode safe` and `mode auto` (each an
event of the board's)."""
WAIT_S = 60.0
LOST_AFTER_S = 10.0
"""How long a restarted hub server is up, its stream replicas current, before a consumer
replica it has not answered since it started counts as lost (a live one answers its leader
within a second)."""


NATS_SERVER = "/usr/sbin/nats-server"
NOWHERE = "127.0.0.1:9"
"""Where each hub server says its leaf listener is (a port nothing listens on): a hub tells a
leaf node its own leaf address even with no_advertise, and on loopback that address would
reach the hub without the WAN relay, so a cut would not cut."""


class Wan:
    """The site's internet: a TCP relay per hub server between the leaf node and the hub, that
    the test can cut (every connection closed, new ones refused) and restore."""

    def __init__(self, targets: dict[int, int]):
        self.targets = targets  # local port -> hub leaf port
        self.up = threading.Event()
        self.up.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        for local, target in targets.items():
            listener = socket.create_server(("127.0.0.1", local))
            threading.Thread(target=self._accept, args=(listener, target), daemon=True).start()

    def _accept(self, listener: socket.socket, target: int) -> None:
        while True:
            inside, _ = listener.accept()
            if not self.up.is_set():
                inside.close()
                continue
            try:
                outside = socket.create_connection(("127.0.0.1", target), timeout=2)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)  # the timeout was for connecting: a quiet link stays up
            with self.lock:
                self.sockets += [inside, outside]
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets = []

    def restore(self) -> None:
        self.up.set()


def hub_streams_made(fleet: Path, nats_out: Path) -> bool:
    """`hearth uplink hub-streams`, False while the hub's cluster is still forming."""
    try:
        return hearth(["uplink", "hub-streams", "--fleet", str(fleet), "--out",
                       str(nats_out)]) == 0
    except (OSError, nats.errors.Error, asyncio.TimeoutError):
        return False


def start_nats(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([NATS_SERVER, "-c", str(config)], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def advertise_nowhere(nats_out: Path) -> None:
    """Each hub server's config, as generated, with its leaf listener's address said to be
    NOWHERE: a site reaches the hub only through the addresses it was given, as over a WAN."""
    for config in nats_out.glob("hub/*/nats.conf"):
        text = config.read_text()
        assert "  no_advertise: true\n" in text
        config.write_text(text.replace("  no_advertise: true\n", "  no_advertise: true\n"
                                       f"  advertise: \"{NOWHERE}\"\n"))


def leaf_behind_wan(leaf_conf: Path, hub_leaf_ports: list[int]) -> "Wan":
    """The site's leaf node config, as generated, reaching each hub server through a relay of
    the returned WAN instead of directly."""
    relay = {free_port(): target for target in hub_leaf_ports}
    text = leaf_conf.read_text()
    for local, target in relay.items():
        assert f"@127.0.0.1:{target}\"" in text
        text = text.replace(f"@127.0.0.1:{target}\"", f"@127.0.0.1:{local}\"")
    leaf_conf.write_text(text)
    return Wan(relay)


def site_inventory(site: str, port: int) -> str:
    return (f'site = "{site}"\nbroker = "localhost"\nport = {port}\n'
            'bind_address = "127.0.0.1"\noperators = ["homeassistant"]\n'
            f'[[module]]\nname = "{MODULE}"\n'
            + "".join(f'[[board]]\nmodule = "{MODULE}"\nname = "{board}"\n' for board in BOARDS)
            + f'[[leader]]\nmodule = "{MODULE}"\nboard = "b01"\n')


def fleet_inventory(directory: Path) -> tuple[Path, dict[str, int]]:
    """Three hub servers and SITES on loopback, each on ports of its own."""
    ports = {f"hub{n}{kind}": free_port() for n in (1, 2, 3) for kind in "crl"}
    ports.update({site: free_port() for site in SITES})
    text = f'etc = "{directory}/etc"\n' + "".join(
        f'[[hub]]\nname = "hub{n}"\nhost = "127.0.0.1"\nbind_address = "127.0.0.1"\n'
        f'client_port = {ports[f"hub{n}c"]}\ncluster_port = {ports[f"hub{n}r"]}\n'
        f'leaf_port = {ports[f"hub{n}l"]}\nstore_dir = "{directory}/store/hub{n}"\n'
        for n in (1, 2, 3)) + "".join(
        f'[[site]]\nname = "{site}"\nclient_port = {ports[site]}\n'
        f'store_dir = "{directory}/store/{site}"\nmax_store_bytes = {2**28}\n' for site in SITES)
    path = directory / "fleet.toml"
    path.write_text(text)
    return path, ports


class Operator:
    """Home Assistant's account on one site broker: records every message of the site with the
    time it came, asks for heat and switches boards' modes."""

    def __init__(self, out: Path, port: int, site: str):
        self.site = site
        self.received: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str, bytes]] = []
        account = login(out, "operator.homeassistant")
        self.client = paho_client.Client(CallbackAPIVersion.VERSION2,
                                         client_id=account["username"])
        self.client.username_pw_set(account["username"], account["password"])
        self.client.on_message = lambda client, userdata, message: self.received.put(
            (time.time(), message.topic, bytes(message.payload)))
        self.client.on_connect = lambda client, userdata, flags, reason, properties: (
            client.subscribe(f"hearth/v1/{site}/#", qos=1))
        self.stamp = envelope.Envelope(f"operator-{uuid.uuid4()}", time.time)
        self.demand_s = -float("inf")
        self.toggles = 0
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def pump(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.seen.append(self.received.get_nowait())

    def keep_demand(self) -> None:
        """The site forgets a request after its demand timeout: ask again every 10 s."""
        if time.monotonic() - self.demand_s >= 10.0:
            topic = f"hearth/v1/{self.site}/site/demand"
            self.client.publish(topic, envelope.encode(self.stamp.stamp(
                topic, {"demand_w": DEMAND_W})), qos=1)
            self.demand_s = time.monotonic()

    def toggle(self) -> None:
        """The next board in turn to `mode safe` or back to `mode auto`: an event each."""
        board = BOARDS[self.toggles % len(BOARDS)]
        mode = "safe" if (self.toggles // len(BOARDS)) % 2 == 0 else "auto"
        topic = f"hearth/v1/{self.site}/{MODULE}/{board}/cmd/mode"
        self.client.publish(topic, envelope.encode(self.stamp.stamp(topic, {
            "id": f"t{self.toggles}", "by": "operator", "args": {"mode": mode}})), qos=1)
        self.toggles += 1

    def carried(self, kind: str) -> list[tuple[str, int, str]]:
        """(boot, seq, topic) of every `event` or `leader/state` of the site, as it came."""
        self.pump()
        found = []
        for _, topic, payload in self.seen:
            if (kind == "event" and topic.endswith("/event")) or (
                    kind == "state" and topic.endswith("/leader/state")):
                data = json.loads(payload)
                found.append((data["boot"], data["seq"], topic))
        return found

    def leader_totals(self) -> list[tuple[float, float, float]]:
        """(ts, electricity Wh, heat Wh) of each leader state, as the leader published them."""
        self.pump()
        totals = []
        for _, topic, payload in self.seen:
            if topic.endswith("/leader/state"):
                data = json.loads(payload)
                if data.get("energy_electric_wh") is not None:
                    totals.append((data["ts"], data["energy_electric_wh"],
                                   data["energy_heat_wh"]))
        return totals

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Site:
    """One site's broker and processes; its leaf node reaches the hub through `wan`."""

    def __init__(self, name: str, directory: Path, nats_out: Path, hub_leaf_ports: list[int],
                 with_broker: bool = True):
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True)
        self.nats_out = nats_out
        self.port = free_port()
        self.out = directory / "mqtt"
        self.roles = Roles(directory)
        self.leaf: subprocess.Popen | None = None
        self.broker: Mosquitto | None = None
        self.operator: Operator | None = None
        self.leaf_conf = nats_out / "site" / name / "nats.conf"
        self.wan = leaf_behind_wan(self.leaf_conf, hub_leaf_ports)
        self.configs = directory / "configs"
        if with_broker:
            inventory = directory / "site.toml"
            inventory.write_text(site_inventory(name, self.port))
            assert hearth(["broker-config", "--inventory", str(inventory), "--out",
                           str(self.out), "--broker-etc", str(self.out / "broker")]) == 0
            self.broker = Mosquitto(self.out / "broker/mosquitto.conf", self.port,
                                    directory / "mosquitto").start()
            self.operator = Operator(self.out, self.port, name)
            self.configs.mkdir()
            self._write_configs()

    def _mqtt(self, account: str) -> str:
        text = (self.out / "clients" / account / "mqtt.toml").read_text()
        return text.replace(f"{CLIENT_ETC}/", f"{self.out}/clients/")

    def _write_configs(self) -> None:
        identity = f'[identity]\nsite = "{self.name}"\nmodule = "{MODULE}"\n'
        (self.configs / "leader.toml").write_text(
            BOARD_BASE + identity + 'board = "b01"\n' + self._mqtt(f"leader.{MODULE}")
            + "[leader]\nperiod_s = 1.0\nmetrics_port = 0\n")
        (self.configs / "site.toml").write_text(
            BOARD_BASE + identity + 'board = "b01"\n' + self._mqtt("site")
            + "[site]\nperiod_s = 1.0\ntarget_c = 55.0\nmetrics_port = 0\n")
        for board in BOARDS:
            (self.configs / f"{board}.toml").write_text(
                identity + f'board = "{board}"\n' + self._mqtt(f"{MODULE}.{board}"))
        (self.configs / "uplink-mqtt.toml").write_text(self._mqtt("uplink"))

    def start_leaf(self) -> None:
        self.leaf = start_nats(self.leaf_conf, self.directory / "leaf.log")

    def stop_leaf(self) -> None:
        self.leaf.send_signal(signal.SIGTERM)
        self.leaf.wait(30)

    def start_role(self, role: str) -> None:
        """`uplink`, `site`, `leader` or a board, as its unit starts it."""
        state = ["--state-dir", str(self.directory / f"state-{role}")]
        if role == "uplink":
            self.roles.start(role, "uplink", "run", "--site", self.name, "--mqtt",
                             str(self.configs / "uplink-mqtt.toml"), "--nats",
                             str(self.nats_out / "site" / self.name / "uplink.toml"))
        elif role in ("site", "leader"):
            self.roles.start(role, role, "--config", str(self.configs / f"{role}.toml"), *state)
        else:
            self.roles.start(role, "agent", "--sim", "--quiet", "--console-socket", "",
                             "--config", str(self.configs / f"{role}.toml"), *state)

    def restart_role(self, role: str) -> None:
        self.roles.stop(role)
        self.start_role(role)

    def uplink_session_ready(self) -> bool:
        return "(session " in self.roles.log("uplink")

    def close(self) -> None:
        if self.operator is not None:
            self.operator.close()
        self.roles.close()
        if self.leaf is not None and self.leaf.poll() is None:
            self.leaf.kill()
            self.leaf.wait(10)
        if self.broker is not None:
            self.broker.stop()


class Fleet:
    """The hub's three servers, SITES, and `hearth fleet ledger` as a process."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.inventory, self.ports = fleet_inventory(directory)
        self.nats_out = directory / "nats"
        assert hearth(["uplink", "nats-config", "--fleet", str(self.inventory), "--out",
                       str(self.nats_out)]) == 0
        advertise_nowhere(self.nats_out)
        self.logs = directory / "logs"
        self.logs.mkdir()
        self.hubs: dict[int, subprocess.Popen] = {}
        self.started_s: dict[str, float] = {}
        """Hub server name -> when it was last started (time.monotonic)."""
        self.sites: dict[str, Site] = {}
        self.ledger_dir = directory / "fleet-ledger"
        self.ledger_roles = Roles(self.logs)
        self.unsettled: str | None = None
        self.consumers_made_again: list[str] = []
        """Consumer replicas a restarted hub server came back without (docs/fleet.md "A
        consumer replica that never comes back"), as "<site> on <server>"."""

    def start_hubs(self) -> None:
        for n in (1, 2, 3):
            self.start_hub(n)
        deadline = time.monotonic() + WAIT_S
        while not hub_streams_made(self.inventory, self.nats_out):
            assert time.monotonic() < deadline, "the hub's cluster never made the streams"
            time.sleep(1)

    def start_hub(self, n: int) -> None:
        self.hubs[n] = start_nats(self.nats_out / "hub" / f"hub{n}" / "nats.conf",
                                  self.logs / f"hub{n}.log")
        self.started_s[f"hub{n}"] = time.monotonic()

    def stop_hub(self, n: int, signum: int = signal.SIGTERM) -> None:
        self.hubs[n].send_signal(signum)
        self.hubs[n].wait(30)

    def add_sites(self, with_brokers: bool = True) -> None:
        leaf_ports = [self.ports[f"hub{n}l"] for n in (1, 2, 3)]
        for site in SITES:
            self.sites[site] = Site(site, self.directory / site, self.nats_out, leaf_ports,
                                    with_brokers)

    def start_ledger(self) -> None:
        self.ledger_roles.start("ledger", "fleet", "ledger", "--fleet", str(self.inventory),
                                "--out", str(self.nats_out), "--ledger-dir",
                                str(self.ledger_dir), "--row-s", str(ROW_S))

    def stop_ledger(self) -> None:
        self.ledger_roles.stop("ledger")

    def login(self) -> tuple[list[str], str]:
        return fleet_login(load_fleet(self.inventory), self.nats_out)

    def password(self, login: str) -> str:
        """A NATS login's password as `hearth uplink nats-config` kept it."""
        text = (self.nats_out / "credentials" / f"{login}.toml").read_text()
        return tomllib.loads(text)["nats"]["password"]

    def hub_counts(self) -> dict[str, int]:
        """Messages in each site's hub stream (-1 while the hub cannot say)."""
        return asyncio.run(_hub_counts(*self.login()))

    def hub_settled(self) -> bool:
        """Every site's stream and its `ledger` consumer have a leader and all three replicas
        current: the point at which an operator restarts the next hub server."""
        self.unsettled = asyncio.run(_hub_settled(*self.login()))
        return self.unsettled is None

    def lost_consumer_replicas(self) -> list[str]:
        """The `ledger` consumers' replicas that a restarted hub server has not answered for
        since it started, though it has been up LOST_AFTER_S and is current in the site's
        stream: what nats-server 2.9.10 loses (docs/fleet.md), which no wait would bring
        back, told apart from a replica still catching up (that one answers)."""
        now_s = time.monotonic()
        up_s = {name: now_s - started_s for name, started_s in self.started_s.items()}
        try:
            clusters = asyncio.run(_hub_clusters(*self.login()))
        except (nats.errors.Error, asyncio.TimeoutError):
            return []
        return lost_replicas(clusters, up_s)

    def settle(self, n: int, step) -> None:
        """Wait until hub server `n`, just started, is back and current. Should it come back
        without its replicas of the ledger's consumers, do what docs/fleet.md tells an
        operator: restart `hearth fleet ledger`, which makes its consumers again from its own
        files, on all three servers."""
        def settled() -> bool:
            if self.hub_settled():
                return True
            if lost := self.lost_consumer_replicas():
                self.consumers_made_again += lost
                self.stop_ledger()
                self.start_ledger()
            return False

        wait_until(f"hub{n} back in the cluster and current", settled, step=step,
                   detail=lambda: self.unsettled)

    def hub_records(self, site: str) -> list[tuple[str, int, str]] | None:
        """(boot, seq, topic) of every message in the site's hub stream, in stream order, each
        message's id checked against its envelope; None while the hub cannot say (a server
        lost, its cluster electing a leader)."""
        try:
            return asyncio.run(_hub_records(*self.login(), site))
        except (nats.errors.Error, asyncio.TimeoutError):
            return None

    def ledger_rows(self, site: str) -> list[dict]:
        rows = []
        ledger = LedgerFile(self.ledger_dir, site)
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        months = sorted({(start + datetime.timedelta(days=day)).strftime("%Y-%m")
                         for day in (0, 1, 2)})
        for month in months:
            with contextlib.suppress(Exception):
                rows += ledger.read_month(month)
        return rows

    def close(self) -> None:
        for site in self.sites.values():
            site.close()
        self.ledger_roles.close()
        for process in self.hubs.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


async def _hub_counts(servers: list[str], password: str) -> dict[str, int]:
    connection = await nats.connect(servers, user=FLEET_USER, password=password,
                                    max_reconnect_attempts=2)
    jetstream = connection.jetstream(domain=HUB_DOMAIN)
    counts = {}
    for site in SITES:
        try:
            counts[site] = (await jetstream.stream_info(hub_stream(site))).state.messages
        except (nats.errors.Error, asyncio.TimeoutError):
            counts[site] = -1
    await connection.close()
    return counts


async def _hub_clusters(servers: list[str], password: str) -> dict[str, tuple]:
    """Site -> (its hub stream's cluster info, its `ledger` consumer's)."""
    connection = await nats.connect(servers, user=FLEET_USER, password=password,
                                    max_reconnect_attempts=2)
    jetstream = connection.jetstream(domain=HUB_DOMAIN)
    try:
        return {site: ((await jetstream.stream_info(hub_stream(site))).cluster,
                       (await jetstream.consumer_info(hub_stream(site), CONSUMER)).cluster)
                for site in SITES}
    finally:
        await connection.close()


async def _hub_settled(servers: list[str], password: str) -> str | None:
    """None when settled, else what is not."""
    try:
        clusters = await _hub_clusters(servers, password)
    except (nats.errors.Error, asyncio.TimeoutError) as error:
        return repr(error)
    for site, infos in clusters.items():
        for cluster in infos:
            replicas = cluster.replicas or []
            if cluster.leader is None or len(replicas) != 2 or not all(
                    replica.current for replica in replicas):
                return f"{site}: {cluster}"
    return None


def lost_replicas(clusters: dict[str, tuple], up_s: dict[str, float]) -> list[str]:
    """"<site> on <server>" for each consumer replica not current whose server has been up
    LOST_AFTER_S, leads or is current in the site's stream, and has not answered the consumer's
    leader since before it started (`active`, nanoseconds since it last did)."""
    lost = []
    for site, (stream, consumer) in clusters.items():
        in_stream = {stream.leader} | {replica.name for replica in stream.replicas or []
                                       if replica.current}
        for replica in consumer.replicas or []:
            server_up_s = up_s.get(replica.name, 0.0)
            if (not replica.current and replica.name in in_stream
                    and server_up_s > LOST_AFTER_S
                    and (replica.active or 0) / 1e9 > server_up_s):
                lost.append(f"{site} on {replica.name}")
    return lost


async def _hub_records(servers: list[str], password: str, site: str):
    connection = await nats.connect(servers, user=FLEET_USER, password=password,
                                    max_reconnect_attempts=2)
    try:
        jetstream = connection.jetstream(domain=HUB_DOMAIN)
        subscription = await jetstream.subscribe(f"hearth.{site}.>", stream=hub_stream(site),
                                                 ordered_consumer=True)
        count = (await jetstream.stream_info(hub_stream(site))).state.messages
        records = []
        while len(records) < count:
            message = await subscription.next_msg(timeout=10)
            data = envelope.decode(message.data)
            topic = "hearth/v1/" + message.subject.split(".", 1)[1].replace(".", "/")
            assert message.headers[MSG_ID_HEADER] == f"{data['boot']}:{data['seq']}:{topic}"
            records.append((data["boot"], data["seq"], topic))
        return records
    finally:
        await connection.close()


def in_order(records: list[tuple[str, int, str]]) -> bool:
    """Each sender's (boot, topic) sequence numbers rise through the records."""
    last: dict[tuple[str, str], int] = {}
    for boot, seq, topic in records:
        if seq <= last.get((boot, topic), 0):
            return False
        last[(boot, topic)] = seq
    return True


@dataclasses.dataclass
class Verdict:
    """What the hub holds of one site, against what its broker carried."""

    site: str
    events: int
    states: int
    missing: int
    doubled: int
    in_order: bool

    @property
    def exactly_once(self) -> bool:
        return self.missing == 0 and self.doubled == 0 and self.in_order


def verdict(site: str, carried_events, carried_states, hub) -> Verdict:
    """Every event and every leader state the site broker carried (`carried_*`) in the hub
    once, each sender's in order."""
    expected = set(carried_events) | set(carried_states)
    held = [record for record in hub if record[2].endswith(("/event", "/leader/state"))]
    return Verdict(site, len(carried_events), len(carried_states),
                   len(expected - set(held)), len(held) - len(set(held)), in_order(held))


def ledger_against_leaders(rows: list[dict], totals) -> tuple[float, float, float]:
    """(the fleet ledger's electricity, the leader's own over the same time, the difference in
    %): the rows' sum against the rise of the totals the leader published from its first
    state to the last one before the last row's end."""
    end_s = rows[-1]["end_s"]
    before = [total for total in totals if total[0] < end_s]
    leader_wh = before[-1][1] - totals[0][1]
    fleet_wh = sum(sum(row["electric_wh"].values()) for row in rows)
    return fleet_wh, leader_wh, 100.0 * abs(fleet_wh - leader_wh) / leader_wh


async def leaf_connection(fleet: "Fleet", site: str, **options):
    """A client on the site's leaf node with the uplink's login: what anyone at the site
    reaches the hub through."""
    settings = tomllib.loads((fleet.nats_out / "site" / site / "uplink.toml").read_text())["nats"]
    return await nats.connect(settings["server"], user=settings["username"],
                              password=settings["password"], **options)


async def leaf_messages(fleet: "Fleet", site: str) -> int:
    """Messages in the site's own stream SITE on its leaf node."""
    connection = await leaf_connection(fleet, site)
    try:
        return (await connection.jetstream(domain=site).stream_info(SITE_STREAM)).state.messages
    finally:
        await connection.close()


@dataclasses.dataclass
class Outcome:
    """What the scenario found, for the test's asserts and the script's report."""

    cut_s: float
    queued_at_site: int = 0
    """Messages the cut site's leaf node stored that the hub had not got when the link came
    back."""
    drain_s: float = 0.0
    """From the link's return until the hub held all of them."""
    during_cut: list[Verdict] = dataclasses.field(default_factory=list)
    """Events and leader states up to the end of the cut and the lost hub server."""
    whole_run: list[Verdict] = dataclasses.field(default_factory=list)
    """Events over the whole run, every role restarted (leader states are QoS 0: those sent
    while an uplink restarted are not queued for it)."""
    ledger: dict[str, tuple[float, float, float]] = dataclasses.field(default_factory=dict)
    """Site -> (the fleet ledger's electricity in Wh, its leader's own, the difference in %)."""
    rows: dict[str, int] = dataclasses.field(default_factory=dict)
    consumers_made_again: list[str] = dataclasses.field(default_factory=list)
    """Ledger consumer replicas a restarted hub server came back without, made again by
    restarting `hearth fleet ledger` (Fleet.settle)."""
    wall_s: float = 0.0


def keep_running(fleet: Fleet, seconds: float) -> None:
    """The operator's work at every site for `seconds`: demand kept, a board's mode switched
    every TOGGLE_S; every process must stay up."""
    deadline = time.monotonic() + seconds
    next_toggle_s = time.monotonic()
    while time.monotonic() < deadline:
        for site in fleet.sites.values():
            site.roles.check_alive()
            site.operator.keep_demand()
            site.operator.pump()
            if time.monotonic() >= next_toggle_s:
                site.operator.toggle()
        if time.monotonic() >= next_toggle_s:
            next_toggle_s += TOGGLE_S
        fleet.ledger_roles.check_alive()
        time.sleep(0.2)


def wait_until(what: str, condition, timeout_s: float = WAIT_S, step=None, detail=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s ({detail()})"
        if step is not None:
            step()
        time.sleep(0.5)
    return value


def verdicts(fleet: Fleet, with_states: bool) -> list[Verdict]:
    """Each site's hub stream against what its broker carried until now (waiting, up to
    WAIT_S, for the hub to catch up)."""
    found = []
    for name, site in fleet.sites.items():
        events = site.operator.carried("event")
        states = site.operator.carried("state") if with_states else []
        def complete(name=name, events=events, states=states) -> Verdict | None:
            records = fleet.hub_records(name)
            found = records is not None and verdict(name, events, states, records)
            return found if found and found.missing == 0 else None

        held = wait_until(f"{name}'s hub stream holding what its broker carried", complete,
                          step=lambda: keep_running(fleet, 0.5))
        found.append(held)
    return found


def run_outage(directory: Path, cut_s: float, say=print) -> Outcome:
    """The acceptance scenario: two sites heating into a three-server hub; the first site's
    WAN cut for `cut_s` while its boards raise events and count energy, a hub server SIGKILLed
    as the link returns; then every role at both sites and at the centre restarted in turn."""
    started_s = time.monotonic()
    outcome = Outcome(cut_s)
    fleet = Fleet(directory)
    try:
        fleet.start_hubs()
        fleet.add_sites()
        for site in fleet.sites.values():
            site.start_leaf()
            site.start_role("uplink")
        for site in fleet.sites.values():  # its session exists before anyone speaks
            wait_until(f"{site.name}'s uplink reading its broker", site.uplink_session_ready)
        fleet.start_ledger()
        for site in fleet.sites.values():
            for role in ("site", "leader", *BOARDS):
                site.start_role(role)
        for site in fleet.sites.values():
            wait_until(f"{site.name}'s leader counting energy", lambda site=site: (
                lambda totals: len(totals) > 2 and totals[-1][1] > totals[0][1])(
                site.operator.leader_totals()), step=lambda: keep_running(fleet, 1.0))
        say(f"fleet-outage: two sites heating, {len(BOARDS)} boards each "
            f"({time.monotonic() - started_s:.0f} s)")
        keep_running(fleet, 5.0)

        cut = fleet.sites[SITES[0]]
        cut.wan.cut()
        say(f"fleet-outage: {cut.name}'s link to the hub cut for {cut_s:g} s")
        keep_running(fleet, cut_s)
        at_site = asyncio.run(leaf_messages(fleet, cut.name))
        outcome.queued_at_site = at_site - fleet.hub_counts()[cut.name]
        cut.wan.restore()
        restored_s = time.monotonic()
        keep_running(fleet, 2.0)
        fleet.stop_hub(2, signal.SIGKILL)
        say(f"fleet-outage: link back, {outcome.queued_at_site} messages queued at the site; "
            "hub2 killed (SIGKILL)")
        # The hub's source retries a site it cannot reach less often the longer it is away,
        # so after a long cut it may take minutes to notice the link is back.
        wait_until("the hub holding what the cut site stored", lambda: (
            fleet.hub_counts()[cut.name] >= at_site), timeout_s=max(WAIT_S, cut_s),
            step=lambda: keep_running(fleet, 0.5))
        outcome.drain_s = time.monotonic() - restored_s
        keep_running(fleet, 3.0)
        outcome.during_cut = verdicts(fleet, with_states=True)

        fleet.start_hub(2)
        fleet.settle(2, step=lambda: keep_running(fleet, 0.5))
        for site in fleet.sites.values():
            for role in ("leader", *BOARDS, "site", "uplink"):
                site.restart_role(role)
                keep_running(fleet, 1.0)
            site.stop_leaf()
            site.start_leaf()
            keep_running(fleet, 2.0)
        for n in (1, 2, 3):  # one by one: two of three keep the streams' quorum
            fleet.stop_hub(n)
            fleet.start_hub(n)
            keep_running(fleet, 3.0)
            fleet.settle(n, step=lambda: keep_running(fleet, 0.5))
        fleet.stop_ledger()
        fleet.start_ledger()
        say("fleet-outage: every role at both sites and at the centre restarted")
        keep_running(fleet, 3 * ROW_S)
        outcome.whole_run = verdicts(fleet, with_states=False)
        keep_running(fleet, ROW_S)  # the ledger's rows close on the next states
        fleet.stop_ledger()
        for name, site in fleet.sites.items():
            rows = fleet.ledger_rows(name)
            outcome.rows[name] = len(rows)
            if rows:
                outcome.ledger[name] = ledger_against_leaders(rows,
                                                              site.operator.leader_totals())
        outcome.consumers_made_again = fleet.consumers_made_again
    finally:
        fleet.close()
    outcome.wall_s = time.monotonic() - started_s
    return outcome


def report(outcome: Outcome) -> str:
    """The scenario's findings, a few lines a person reads at a glance."""
    lines = [f"WAN cut: {outcome.cut_s:g} s; messages queued at the site during the cut: "
             f"{outcome.queued_at_site}; hub held them all {outcome.drain_s:.1f} s after the "
             "link returned (one hub server SIGKILLed 2 s after)"]
    for title, found in (("cut and lost hub server", outcome.during_cut),
                         ("every role restarted", outcome.whole_run)):
        for v in found:
            lines.append(f"{title}: {v.site}: {v.events} events, {v.states} leader states "
                         f"carried; missing {v.missing}, twice {v.doubled}, in order "
                         f"{'yes' if v.in_order else 'NO'}: "
                         f"{'exactly once' if v.exactly_once else 'FAILED'}")
    for site, (fleet_wh, leader_wh, percent) in outcome.ledger.items():
        lines.append(f"fleet ledger {site}: {fleet_wh:.3f} Wh in {outcome.rows[site]} rows, "
                     f"its leader's {leader_wh:.3f} Wh: {percent:.4f} % apart")
    if outcome.consumers_made_again:
        lines.append("ledger consumer replicas a restarted hub server came back without, "
                     "made again by restarting hearth fleet ledger: "
                     + ", ".join(outcome.consumers_made_again))
    lines.append(f"run took {outcome.wall_s:.0f} s")
    return "\n".join(lines)
