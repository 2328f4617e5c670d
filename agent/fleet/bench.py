"""The fleet benchmark (scripts/bench-fleet, docs/benchmarks.md "Fleet hub"): many sites'
uplinks into the hub of three nats-servers, and what the hub costs per site and per message.

Real parts where production has them: the hub's three servers and every site's leaf node are
nats-server processes on `hearth uplink nats-config`'s files, the hub's streams SITE_<site>
(R3, file storage) source each leaf's SITE stream across the leaf connection, and every message
goes into the site's stream as `hearth uplink` writes it (its subject, its Nats-Msg-Id, one at a
time, waiting for JetStream's acknowledgement). What is left out is each site's Mosquitto and
uplink process: they cost the site, not the hub, which is what is measured here.

The hub is measured from outside: CPU from /proc/<pid>/stat, memory from /proc/<pid>/status, the
end-to-end latency from the sender's `ts` in the payload to the message's arrival at a consumer
of the hub's stream (and to the hub stream's own timestamp of storing it).
"""

import asyncio
import dataclasses
import json
import os
import random
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

import nats
from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy

from agent.deploy.nats_config import (ACCOUNT, FLEET_USER, fleet_login, load_fleet,
                                      write_nats_configs)
from agent.fleet import streams
from agent.fleet.uplink import NatsSettings, load_nats_settings
from agent.fleet.subjects import (HUB_DOMAIN, MSG_ID_HEADER, hub_stream, message_id,
                                  site_domain, site_subjects, subject_for_topic)
from agent.mqtt import envelope
from agent.mqtt.topics import ROOT

NATS_SERVER = "/usr/sbin/nats-server"
SHOWCASE_EVENTS_PER_BOARD_H = 265 / 32
"""The simulator's showcase hour (agent/sim/site_scenarios/showcase.toml: a pump stop, a leader
crash and restart, a broker outage and a board's sensor fault in one hour) raised 265 events
from 32 boards. Four faults an hour at every site is a ceiling; a calm hour raises none."""
PUBLISH_TIMEOUT_S = 10.0
SITE_STORE_BYTES = 64 * 2**20
"""Each leaf node's stream limit here: a bench sends a few MB, and 300 default 8 GiB limits would
ask JetStream for more disk than the machine has."""
MODULES_PER_SITE = 8


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What one site sends up: its aggregated state (independent of its board count) and its
    boards' events (proportional to it), each event from a board picked at random."""

    telemetry_period_s: float = 10.0
    boards_per_site: int = 512
    events_per_board_h: float = SHOWCASE_EVENTS_PER_BOARD_H

    @property
    def events_per_site_s(self) -> float:
        return self.boards_per_site * self.events_per_board_h / 3600.0

    @property
    def messages_per_site_s(self) -> float:
        return 1.0 / self.telemetry_period_s + self.events_per_site_s


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: a value that was measured, never one between two."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))]


class Ports:
    """Free loopback ports below the kernel's ephemeral range: hundreds of leaf connections take
    ephemeral ports as their own ends, and one taken between choosing and listening would stop
    a server from starting."""

    def __init__(self, rng: random.Random):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        self.next_port = rng.randrange(10000, low - 2000)
        self.low = low

    def take(self) -> int:
        while self.next_port < self.low:
            port = self.next_port
            self.next_port += 1
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise OSError(f"no free port below {self.low}")


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (fields 14 and 15 of /proc/PID/stat,
    counted after the command's closing parenthesis, which may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def files_bytes(directory: Path) -> int:
    """The files' sizes under a directory (what they hold, not the blocks they take)."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent on anything but idle and I/O wait."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def site_state_payload(modules: int, rng: random.Random) -> dict:
    """A site role's state (agent/site/role.py state_payload), its numbers made up."""
    budgets = {f"m{n}": round(rng.uniform(500, 3000), 3) for n in range(1, modules + 1)}
    return {"demand_w": sum(budgets.values()), "demand_source": "temperature",
            "mode": "auto", "target_c": 55.0, "target_reason": "plan",
            "legionella": {"due": False, "last_done_s": 1.7e9},
            "loop_c": rng.uniform(50, 56), "capacity_w": 3000.0 * modules, "unmet_w": 0.0,
            "budgets_w": budgets, "power_w": sum(budgets.values()),
            "heat_w": 0.9 * sum(budgets.values()), "energy_electric_wh": rng.uniform(1e5, 1e7),
            "energy_heat_wh": rng.uniform(1e5, 1e7), "modules_available": modules}


def event_payload(rng: random.Random) -> dict:
    """A board's event as agent/mqtt/board_link.py publishes it."""
    return {"cause": "setpoint_source", "value": None,
            "message": "setpoint source fallback -> leader (leader silent 0 s)",
            "mode": "NORMAL", "severity": "info", "mono": rng.uniform(0, 1e6)}


class SiteSender:
    """One site's uplink as far as the hub can tell: its messages into the site's stream on its
    leaf node, one at a time, each with the uplink's subject and message id."""

    def __init__(self, site: str, traffic: Traffic, wall_clock: Callable[[], float],
                 rng: random.Random):
        self.site = site
        self.traffic = traffic
        self.wall_clock = wall_clock
        self.rng = rng
        self.envelopes: dict[str, envelope.Envelope] = {}
        self.sent: dict[str, float] = {}
        """Message id -> the `ts` it was sent with, for every message JetStream acknowledged."""
        self.jetstream = None
        self.connection = None
        self.busy = False
        """A message is on its way to the leaf node and not yet acknowledged."""

    async def connect(self, settings: NatsSettings) -> None:
        """As the uplink connects, with the [nats] section nats-config wrote for the site."""
        self.connection = await nats.connect(settings.server, user=settings.username,
                                             password=settings.password,
                                             max_reconnect_attempts=-1, reconnect_time_wait=1)
        self.jetstream = self.connection.jetstream(domain=site_domain(self.site))
        await streams.ensure_stream(self.jetstream, streams.site_stream_config(
            self.site, SITE_STORE_BYTES))

    def _topic(self, telemetry: bool) -> str:
        if telemetry:
            return f"{ROOT}/{self.site}/site/state"
        board = self.rng.randrange(self.traffic.boards_per_site)
        module = board % MODULES_PER_SITE + 1
        return f"{ROOT}/{self.site}/m{module}/b{board // MODULES_PER_SITE + 1:03d}/event"

    async def send(self, telemetry: bool) -> None:
        topic = self._topic(telemetry)
        base = topic.rsplit("/", 1)[0]  # the sender: the site role or one board
        sender = self.envelopes.get(base)
        if sender is None:
            sender = self.envelopes[base] = envelope.Envelope(str(uuid.uuid4()),
                                                              self.wall_clock)
        body = (site_state_payload(MODULES_PER_SITE, self.rng) if telemetry
                else event_payload(self.rng))
        message = sender.stamp(topic, body)
        ident = message_id(message["boot"], message["seq"], topic)
        await self.jetstream.publish(subject_for_topic(topic), envelope.encode(message),
                                     timeout=PUBLISH_TIMEOUT_S, headers={MSG_ID_HEADER: ident})
        self.sent[ident] = message["ts"]

    async def run(self, sending: asyncio.Event, stopping: asyncio.Event) -> None:
        """Telemetry every period (from a random phase, as sites start at any time) and events
        as a Poisson process at the traffic's mean rate, while `sending` is set."""
        event_rate = self.traffic.events_per_site_s
        scheduled = False
        while not stopping.is_set():
            if not scheduled or not sending.is_set():  # nothing is owed for a pause
                await sending.wait()
                scheduled = True
                now = time.monotonic()
                next_telemetry = now + self.rng.uniform(0, self.traffic.telemetry_period_s)
                next_event = (now + self.rng.expovariate(event_rate) if event_rate > 0
                              else float("inf"))
            due = min(next_telemetry, next_event)
            wait_s = due - time.monotonic()
            if wait_s > 0:
                try:
                    await asyncio.wait_for(stopping.wait(), wait_s)
                    return
                except asyncio.TimeoutError:
                    pass
                if not sending.is_set():
                    continue
            telemetry = next_telemetry <= next_event
            if telemetry:
                next_telemetry += self.traffic.telemetry_period_s
            else:
                next_event += self.rng.expovariate(event_rate)
            self.busy = True
            try:
                await self.send(telemetry)
            finally:
                self.busy = False

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


class HubReader:
    """The centre's view: one consumer per site's hub stream, noting when each message arrived."""

    def __init__(self, wall_clock: Callable[[], float]):
        self.wall_clock = wall_clock
        self.arrived: dict[str, tuple[float, float, float]] = {}
        """Message id -> (sender's ts, stored at the hub, read here), each wall-clock seconds."""
        self.duplicates = 0
        self.connection = None
        self.jetstream = None

    async def connect(self, servers: list[str], password: str) -> None:
        self.connection = await nats.connect(servers, user=FLEET_USER, password=password,
                                             max_reconnect_attempts=-1, reconnect_time_wait=1)
        self.jetstream = self.connection.jetstream(domain=HUB_DOMAIN)

    async def follow(self, site: str) -> None:
        await self.jetstream.subscribe(site_subjects(site), stream=hub_stream(site),
                                       ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
                                       cb=self._arrived)

    async def _arrived(self, message) -> None:
        read_s = self.wall_clock()
        ident = message.headers[MSG_ID_HEADER]
        if ident in self.arrived:
            self.duplicates += 1
            return
        sent_s = json.loads(message.data)["ts"]
        self.arrived[ident] = (sent_s, message.metadata.timestamp.timestamp(), read_s)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


@dataclasses.dataclass(frozen=True)
class Sample:
    """CPU so far of the hub's servers, the leaf nodes, this process and the machine."""

    monotonic_s: float
    hub_cpu_s: tuple[float, ...]
    leaves_cpu_s: float
    own_cpu_s: float
    machine_busy_s: float


class FleetBench:
    """A hub of three nats-servers and up to `max_sites` leaf nodes under `work`; sites are
    started in steps with add_sites(), and each step measured with measure()."""

    def __init__(self, work: Path, traffic: Traffic, max_sites: int, tls: bool,
                 wall_clock: Callable[[], float], seed: int = 1,
                 nats_server: str = NATS_SERVER):
        self.work = work
        self.traffic = traffic
        self.tls = tls
        self.wall_clock = wall_clock
        self.rng = random.Random(seed)
        self.nats_server = nats_server
        self.sites = [f"s{n:03d}" for n in range(1, max_sites + 1)]
        self.hubs: dict[str, subprocess.Popen] = {}
        self.leaves: dict[str, subprocess.Popen] = {}
        self.senders: list[SiteSender] = []
        self.reader = HubReader(wall_clock)
        self.sending = asyncio.Event()
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.out = work / "nats"
        self.hub_urls: list[str] = []
        self.ports: dict[str, int] = {}

    def _inventory(self) -> Path:
        ports = Ports(random.Random())  # not the seeded one: two runs at once differ
        hubs = "".join(
            f'[[hub]]\nname = "hub{n}"\nhost = "127.0.0.1"\nbind_address = "127.0.0.1"\n'
            f"client_port = {ports.take()}\ncluster_port = {ports.take()}\n"
            f'leaf_port = {ports.take()}\nstore_dir = "{self.work}/store/hub{n}"\n'
            for n in (1, 2, 3))
        sites = "".join(
            f'[[site]]\nname = "{site}"\nclient_port = {ports.take()}\n'
            f'store_dir = "{self.work}/store/{site}"\nmax_store_bytes = {SITE_STORE_BYTES}\n'
            for site in self.sites)
        path = self.work / "fleet.toml"
        path.write_text(f"tls = {'true' if self.tls else 'false'}\n"
                        f'etc = "{self.work}/etc"\n' + hubs + sites)
        return path

    def _installed(self, conf: Path) -> Path:
        """The config as its own box installs it: its tls/ under the fleet's `etc`, which on
        this one machine is each server's own directory."""
        text = conf.read_text().replace(f'"{self.work}/etc/', f'"{conf.parent}/')
        conf.write_text(text)
        return conf

    def _start(self, conf: Path, name: str) -> subprocess.Popen:
        log = (self.work / "logs" / f"{name}.log").open("ab")
        with log:
            return subprocess.Popen([self.nats_server, "-c", str(self._installed(conf))],
                                    stdout=log, stderr=subprocess.STDOUT)

    async def start_hub(self) -> None:
        """Write every config (the hub knows every site's login from the start), start the
        three hub servers and connect the centre's reader."""
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        fleet = load_fleet(self._inventory())
        write_nats_configs(fleet, self.out)
        self.ports = {site.name: site.client_port for site in fleet.sites}
        for hub in fleet.hubs:
            self.hubs[hub.name] = self._start(self.out / "hub" / hub.name / "nats.conf", hub.name)
        self.hub_urls, password = fleet_login(fleet, self.out)
        deadline = time.monotonic() + 30.0
        for hub in fleet.hubs:
            await _until(deadline, f"hub server {hub.name}", lambda hub=hub: _listening(
                hub.client_port))
        await self.reader.connect(self.hub_urls, password)

    async def add_sites(self, count: int, timeout_s: float = 300.0, parallel: int = 16) -> None:
        """Start leaf nodes until `count` sites run, make their streams at both ends, follow
        each at the hub, and send one message per new site through to the hub, so the step's
        measurement starts with every source flowing."""
        new = self.sites[len(self.leaves):count]
        for site in new:
            self.leaves[site] = self._start(self.out / "site" / site / "nats.conf", site)
        deadline = time.monotonic() + timeout_s
        gate = asyncio.Semaphore(parallel)

        async def bring_up(site: str) -> SiteSender:
            async with gate:
                await _until(deadline, f"the hub's stream of {site}", lambda: (
                    streams.ensure_stream(self.reader.jetstream,
                                          streams.hub_stream_config(site))))
                await self.reader.follow(site)
                sender = SiteSender(site, self.traffic, self.wall_clock, self.rng)
                await _until(deadline, f"the leaf node of {site}", lambda: _listening(
                    self.ports[site]))
                settings = load_nats_settings(self.out / "site" / site / "uplink.toml")
                await _until(deadline, f"the site stream of {site}", lambda: sender.connect(
                    settings))
                await sender.send(telemetry=True)
                return sender

        senders = await asyncio.gather(*(bring_up(site) for site in new))
        self.senders += senders
        if not await self.drain(max(1.0, deadline - time.monotonic())):
            missing = sorted({ident.split(":", 2)[2].split("/")[2] for ident in self.sent()
                              if ident not in self.reader.arrived})
            raise TimeoutError(f"no message of {len(missing)} sites reached the hub's reader "
                               f"in {timeout_s:.0f} s ({', '.join(missing[:10])}); see their "
                               f"leaf nodes' logs in {self.work / 'logs'}")
        self.tasks += [asyncio.ensure_future(sender.run(self.sending, self.stopping))
                       for sender in senders]

    def sent(self) -> dict[str, float]:
        return {ident: ts for sender in self.senders for ident, ts in sender.sent.items()}

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no sender has a message on its way and every message acknowledged has
        arrived at the hub's reader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(sender.busy for sender in self.senders) and \
                    set(self.sent()) <= set(self.reader.arrived):
                return True
            await asyncio.sleep(0.2)
        return False

    def sample(self) -> Sample:
        return Sample(time.monotonic(), tuple(process_cpu_s(p.pid) for p in self.hubs.values()),
                      sum(process_cpu_s(p.pid) for p in self.leaves.values()),
                      time.process_time(), machine_busy_s())

    async def hub_stream_totals(self) -> tuple[int, int]:
        """Messages and bytes in every running site's hub stream, as the hub counts them."""
        messages = stored_bytes = 0
        for sender in self.senders:
            state = (await self.reader.jetstream.stream_info(hub_stream(sender.site))).state
            messages += state.messages
            stored_bytes += state.bytes
        return messages, stored_bytes

    async def measure(self, idle_s: float, window_s: float, drain_s: float = 60.0) -> dict:
        """One step: a window with nothing sent (what the sites cost the hub by being there),
        then one at the traffic's rate; every message sent then must reach the hub."""
        self.sending.clear()
        await asyncio.sleep(1.0)
        before_idle = self.sample()
        await asyncio.sleep(idle_s)
        after_idle = self.sample()
        already = set(self.sent())
        self.sending.set()
        start_s = self.wall_clock()
        before = self.sample()
        await asyncio.sleep(window_s)
        after = self.sample()
        rss_mb = [process_rss_mb(p.pid) for p in self.hubs.values()]
        leaves_rss_mb = sum(process_rss_mb(p.pid) for p in self.leaves.values())
        self.sending.clear()
        drained = await self.drain(drain_s)
        sent = {ident: ts for ident, ts in self.sent().items() if ident not in already}
        arrived = {ident: self.reader.arrived[ident] for ident in sent
                   if ident in self.reader.arrived}
        in_window = [times for times in arrived.values() if times[0] >= start_s]
        read_ms = [(read - sent_s) * 1e3 for sent_s, _, read in in_window]
        stored_ms = [(stored - sent_s) * 1e3 for sent_s, stored, _ in in_window]
        hub_messages, hub_bytes = await self.hub_stream_totals()
        stream_files = [files_bytes(self.work / "store" / hub / "jetstream" / ACCOUNT / "streams")
                        for hub in self.hubs]
        return {
            "sites": len(self.senders), "idle_s": after_idle.monotonic_s
            - before_idle.monotonic_s, "window_s": after.monotonic_s - before.monotonic_s,
            "sent": len(sent), "received": len(arrived), "drained": drained,
            "duplicates": self.reader.duplicates,
            "messages_per_s": len(sent) / (after.monotonic_s - before.monotonic_s),
            "latency_read_ms": _spread(read_ms), "latency_stored_ms": _spread(stored_ms),
            "hub_cpu_idle_pct": _cpu_pct(before_idle, after_idle),
            "hub_cpu_pct": _cpu_pct(before, after),
            "hub_rss_mb": rss_mb,
            "leaves_cpu_pct": _share(after.leaves_cpu_s - before.leaves_cpu_s, before, after),
            "leaves_rss_mb": leaves_rss_mb,
            "bench_cpu_pct": _share(after.own_cpu_s - before.own_cpu_s, before, after),
            "machine_busy_pct": _share(after.machine_busy_s - before.machine_busy_s, before,
                                       after),
            "hub_stream_messages": hub_messages, "hub_stream_bytes": hub_bytes,
            "hub_stream_files_bytes": stream_files,
            "messages_total": len(self.sent()),
            "load_average": os.getloadavg()[0]}

    async def close(self) -> None:
        self.stopping.set()
        self.sending.set()
        for task in self.tasks:
            try:
                await asyncio.wait_for(task, 15)
            except (asyncio.TimeoutError, NatsError):
                task.cancel()
        for sender in self.senders:
            await sender.close()
        await self.reader.close()
        for process in [*self.leaves.values(), *self.hubs.values()]:
            process.terminate()
        for process in [*self.leaves.values(), *self.hubs.values()]:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _until(deadline: float, what: str, attempt) -> None:
    """Retry while the hub's cluster forms or a leaf node starts."""
    while True:
        try:
            await attempt()
            return
        except (NatsError, OSError, asyncio.TimeoutError) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not come up: {error!r}") from None
            await asyncio.sleep(0.5)


async def _listening(port: int) -> None:
    """Returns once something accepts TCP connections on the loopback port."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()


def _spread(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"count": 0}
    return {"count": len(values_ms), "p50": percentile(values_ms, 0.5),
            "p99": percentile(values_ms, 0.99), "max": max(values_ms)}


def _share(seconds: float, before: Sample, after: Sample) -> float:
    """CPU seconds over a window as % of one core."""
    return 100.0 * seconds / (after.monotonic_s - before.monotonic_s)


def _cpu_pct(before: Sample, after: Sample) -> list[float]:
    return [_share(b - a, before, after) for a, b in zip(before.hub_cpu_s, after.hub_cpu_s)]


@dataclasses.dataclass(frozen=True)
class HubCost:
    """The hub's cost fitted over the measured steps, CPU in % of one core and memory summed over
    its three servers: what a site costs by being there (its stream's raft group, its source's
    heartbeats), and what each message per second costs on top."""

    base_cpu_pct: float
    cpu_pct_per_site: float
    cpu_pct_per_message_s: float
    base_rss_mb: float
    rss_mb_per_site: float
    bytes_per_message: float
    """One replica of one message on a server's disk: its streams' files (blocks, indexes,
    per-subject state) over the messages in them. The raft logs beside them are compacted, so
    they do not grow with the streams."""


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares (intercept, slope); through the origin when there is one x."""
    if len(set(xs)) < 2:
        return 0.0, sum(ys) / sum(xs)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
             / sum((x - mean_x) ** 2 for x in xs))
    return mean_y - slope * mean_x, slope


def hub_cost(steps: list[dict]) -> HubCost:
    """Per site: the windows with nothing sent, against the number of sites. Per message: what
    the windows with traffic cost beyond the same step's idle window, against the rate."""
    sites = [float(step["sites"]) for step in steps]
    base_cpu, per_site = fit_line(sites, [sum(step["hub_cpu_idle_pct"]) for step in steps])
    extra = [sum(step["hub_cpu_pct"]) - sum(step["hub_cpu_idle_pct"]) for step in steps]
    rates = [step["messages_per_s"] for step in steps]
    per_message = sum(e * r for e, r in zip(extra, rates)) / sum(r * r for r in rates)
    base_rss, rss_per_site = fit_line(sites, [sum(step["hub_rss_mb"]) for step in steps])
    last = steps[-1]
    return HubCost(base_cpu, per_site, per_message, base_rss, rss_per_site,
                   max(last["hub_stream_files_bytes"]) / last["hub_stream_messages"])


def projection(cost: HubCost, sites: int, messages_per_site_s: float,
               retention_days: float) -> dict:
    """What a fleet needs at the hub from the measured cost: messages per second, cores and
    memory for the three servers together, and disk (every server holds one replica of every
    stream) per day and at the streams' retention."""
    messages_per_s = sites * messages_per_site_s
    cpu_pct = cost.base_cpu_pct + cost.cpu_pct_per_site * sites \
        + cost.cpu_pct_per_message_s * messages_per_s
    disk_gb_per_day = messages_per_s * 86400.0 * cost.bytes_per_message / 1e9
    return {"sites": sites, "messages_per_site_s": messages_per_site_s,
            "messages_per_s": messages_per_s, "cores": cpu_pct / 100.0,
            "cores_per_server": cpu_pct / 300.0,
            "rss_gb_per_server": (cost.base_rss_mb + cost.rss_mb_per_site * sites) / 3e3,
            "disk_gb_per_day_per_server": disk_gb_per_day,
            "disk_tb_per_server_at_retention": disk_gb_per_day * retention_days / 1e3,
            "retention_days": retention_days}
