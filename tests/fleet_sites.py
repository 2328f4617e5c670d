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
import subprocess
import sys
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
from agent.fleet.ledger_file import LedgerFile
from agent.fleet.subjects import HUB_DOMAIN, MSG_ID_HEADER, SITE_STREAM, hub_stream
from agent.mqtt import envelope
from test_broker_config import Mosquitto, free_port, login
from test_deployed_site import BOARD_BASE, Roles
from test_fleet_uplink import Wan, hub_streams_made, start_nats

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
        relay = {free_port(): target for target in hub_leaf_ports}
        self.leaf_conf = nats_out / "site" / name / "nats.conf"
        text = self.leaf_conf.read_text()
        for local, target in relay.items():  # the leaf reaches the hub through the WAN relay
            text = text.replace(f"@127.0.0.1:{target}\"", f"@127.0.0.1:{local}\"")
        self.leaf_conf.write_text(text)
        self.wan = Wan(relay)
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
            + "[leader]\nperiod_s = 1.0\n")
        (self.configs / "site.toml").write_text(
            BOARD_BASE + identity + 'board = "b01"\n' + self._mqtt("site")
            + "[site]\nperiod_s = 1.0\ntarget_c = 55.0\n")
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
        self.logs = directory / "logs"
        self.logs.mkdir()
        self.hubs: dict[int, subprocess.Popen] = {}
        self.sites: dict[str, Site] = {}
        self.ledger_dir = directory / "fleet-ledger"
        self.ledger_roles = Roles(self.logs)

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

    def hub_records(self, site: str) -> list[tuple[str, int, str]]:
        """(boot, seq, topic) of every message in the site's hub stream, in stream order; each
        message's id checked against its envelope."""
        return asyncio.run(_hub_records(*self.login(), site))

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


async def _hub_records(servers: list[str], password: str, site: str):
    connection = await nats.connect(servers, user=FLEET_USER, password=password)
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
    await connection.close()
    return records


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
