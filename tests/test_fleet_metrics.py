"""The fleet's metrics at the centre (issue 19): each site's hub stream into VictoriaMetrics with
the senders' timestamps, agreeing with the fleet ledger, and nothing doubled or lost across a
crash of the feed between VictoriaMetrics taking a batch and the feed recording it."""

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from agent.cli import main as hearth
from agent.deploy.nats_config import FLEET_USER, fleet_login, load_fleet
from agent.fleet.centre import FleetLedger, SiteConsumer
from agent.fleet.ledger import month_of
from agent.fleet.ledger_file import LedgerFile
from agent.fleet.metrics_feed import (CONSUMER, STATE_VERSION, FeedStateDamaged, MetricsFeed,
                                      SiteSeries, exposition)
from agent.fleet.subjects import HUB_DOMAIN, MSG_ID_HEADER, hub_stream, message_id, \
    subject_for_topic
from agent.fleet.victoria import MetricsStoreError, VictoriaMetrics, duration_ms
from agent.mqtt import envelope
from agent.persist import StateStore
from test_broker_config import free_port
from test_fleet_centre import jetstream_server  # noqa: F401 (a fixture)
from test_metrics import assert_promtool_clean

VICTORIA_METRICS = "/usr/bin/victoria-metrics"
NATS_SERVER = "/usr/sbin/nats-server"
SITES = {"maple-school": 1.0, "oak-pool": 0.4}
"""Each site and how large its modules' power is."""
STATE_PERIOD_S = 60.0
LEADER_TIMEOUT_S = 300.0
DAY_S = 86400.0


def day_end_s() -> float:
    """The last UTC midnight at least an hour ago: the day before it is wholly in the past, so
    VictoriaMetrics files every sample (it drops samples from the future)."""
    return (time.time() - 3600.0) // DAY_S * DAY_S


def site_messages(site: str, scale: float, start_s: float, end_s: float
                  ) -> list[tuple[str, bytes]]:
    """Two modules' leader states every minute from `start_s` to a little after `end_s`, in
    the order the site's broker carries them, and a board event an hour. m2's leader restarts
    at 10:00 with a counter lower than before (its ledger file was lost): a new segment, which
    a raw counter would show as a reset."""
    clock = [start_s]
    stamps = {module: envelope.Envelope(f"{site}-{module}-a", lambda: clock[0])
              for module in ("m1", "m2")}
    board = envelope.Envelope(f"{site}-b01", lambda: clock[0])
    electric_wh = {"m1": 50000.0, "m2": 20000.0}
    restart_s = end_s - DAY_S + 10 * 3600.0
    messages = []
    step = 0
    t = start_s
    while t <= end_s + 2 * STATE_PERIOD_S:
        for module, power_w in (("m1", scale * (1500.0 + 400.0 * (step % 7) / 7)),
                                ("m2", scale * 900.0)):
            if module == "m2" and t == restart_s:
                stamps["m2"] = envelope.Envelope(f"{site}-m2-b", lambda: clock[0])
                electric_wh["m2"] *= 0.4
            electric_wh[module] += power_w * STATE_PERIOD_S / 3600.0
            topic = f"hearth/v1/{site}/{module}/leader/state"
            clock[0] = t
            messages.append((topic, envelope.encode(stamps[module].stamp(topic, {
                "power_w": power_w, "heat_w": 0.93 * power_w, "efficiency": 0.93,
                "boards_by_mode": {"NORMAL": 30, "LIMITED": step % 3},
                "energy_electric_wh": electric_wh[module],
                "energy_heat_wh": 0.93 * electric_wh[module]}))))
        if step % 60 == 0:
            topic = f"hearth/v1/{site}/m1/b01/event"
            clock[0] = t + 1.0
            messages.append((topic, envelope.encode(board.stamp(topic, {
                "cause": "soc_temp", "severity": "warning", "message": "SoC at 78.0 C"}))))
        t += STATE_PERIOD_S
        step += 1
    return messages


def leader_states_of(messages) -> list[tuple[int, str]]:
    """(stream sequence, module) of every leader state, as the stream numbers them."""
    return [(index + 1, topic.split("/")[3]) for index, (topic, _) in enumerate(messages)
            if topic.endswith("/leader/state")]


async def fill_streams(servers: list[str], password: str | None,
                       messages: dict[str, list]) -> None:
    """Each site's messages into its SITE_<site> with the uplink's subjects and ids."""
    connection = await nats.connect(servers, user=FLEET_USER if password else None,
                                    password=password)
    jetstream = connection.jetstream(domain=HUB_DOMAIN if password else None)
    for site, site_list in messages.items():
        await jetstream.add_stream(StreamConfig(name=hub_stream(site),
                                                subjects=[f"hearth.{site}.>"]))
        for index in range(0, len(site_list), 1000):
            publishes = []
            for topic, payload in site_list[index:index + 1000]:
                data = envelope.decode(payload)
                publishes.append(jetstream.publish(subject_for_topic(topic), payload, headers={
                    MSG_ID_HEADER: message_id(data["boot"], data["seq"], topic)}))
            await asyncio.gather(*publishes)
    await connection.close()


class Victoria:
    """Debian's victoria-metrics on a loopback port, with the flags docs/fleet.md asks for."""

    def __init__(self, directory: Path, dedup: bool = True, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = ["-dedup.minScrapeInterval=1ms"] if dedup else []
        self.process = subprocess.Popen(
            [VICTORIA_METRICS, f"-storageDataPath={directory}",
             f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=1y",
             "-loggerLevel=ERROR", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
                return
            time.sleep(0.1)
        raise AssertionError("victoria-metrics did not answer /health")

    def query(self, expression: str, at_s: float) -> dict[str, float]:
        """An instant query: each series' value by its labels (without the name)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).close()
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression, "time": f"{at_s:.3f}"})
        with urllib.request.urlopen(url, timeout=10) as answer:
            result = json.load(answer)["data"]["result"]
        return {",".join(f"{k}={v}" for k, v in sorted(entry["metric"].items())
                         if k != "__name__"):
                float(entry["value"][1]) for entry in result}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def victoria(tmp_path):
    server = Victoria(tmp_path / "victoria")
    yield server
    server.close()


def fleet_files(tmp_path: Path, client_port: int) -> tuple[Path, Path]:
    """A fleet inventory whose hub1 is the test's JetStream server (hub2 and hub3 are ports
    nobody listens on: the fleet's tools must get by with one server of three), and `hearth
    uplink nats-config`'s directory with the fleet login's password."""
    ports = [client_port, free_port(), free_port()]
    hubs = "".join(f'[[hub]]\nname = "hub{n}"\nhost = "127.0.0.1"\nclient_port = {port}\n'
                   for n, port in enumerate(ports, 1))
    sites = "".join(f'[[site]]\nname = "{site}"\n' for site in SITES)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'tls = false\netc = "{tmp_path}/etc"\n' + hubs + sites)
    out = tmp_path / "nats"
    assert hearth(["uplink", "nats-config", "--fleet", str(fleet), "--out", str(out)]) == 0
    return fleet, out


@pytest.fixture
def hub(tmp_path):
    """One JetStream server in the hub's domain with the HEARTH account and the fleet login,
    as hub_conf writes them; the test's streams take published messages, where the hub's
    source them from the sites (the consumers cannot tell the difference)."""
    port = free_port()
    fleet, out = fleet_files(tmp_path, port)
    servers, password = fleet_login(load_fleet(fleet), out)
    config = tmp_path / "hub.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ domain: "{HUB_DOMAIN}", store_dir: "{tmp_path / "js"}" }}\n'
        f'accounts {{ HEARTH {{ jetstream: enabled, users: [{{user: "{FLEET_USER}", '
        f'password: {json.dumps(password)}}}] }} }}\n')
    process = subprocess.Popen([NATS_SERVER, "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        time.sleep(0.1)
    yield fleet, out, [f"nats://127.0.0.1:{port}"], password
    process.terminate()
    process.wait(10)


class CutAfter:
    """`os` as StateStore calls it, whose rename fails after `writes` good ones: the feed dies
    after VictoriaMetrics took a batch and before the batch's state is on disk."""

    def __init__(self, writes: int):
        self.writes = writes

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, source, target):
        if self.writes == 0:
            raise OSError("power cut")
        self.writes -= 1
        os.replace(source, target)


async def first_life(servers, password, victoria_url: str, state_dir: Path) -> None:
    """The feed in this process, dying in its third state write."""
    connection = await nats.connect(servers, user=FLEET_USER, password=password)
    jetstream = connection.jetstream(domain=HUB_DOMAIN)
    for site in SITES:
        feed = MetricsFeed(jetstream, site, StateStore(state_dir, os_calls=CutAfter(2)),
                           VictoriaMetrics(victoria_url), fetch_timeout_s=2.0)
        await feed.start()
        with pytest.raises(OSError, match="power cut"):
            await feed.pump()
    await connection.close()


async def ledger_of(servers, password, directory: Path) -> None:
    """The fleet ledger of the same streams, by the centre's own consumer."""
    connection = await nats.connect(servers, user=FLEET_USER, password=password)
    jetstream = connection.jetstream(domain=HUB_DOMAIN)
    for site in SITES:
        ledger = FleetLedger(site, LedgerFile(directory, site), time.time,
                             logging.getLogger("test"), LEADER_TIMEOUT_S)
        consumer = SiteConsumer(jetstream, ledger, fetch_timeout_s=2.0)
        await consumer.start()
        await consumer.pump()
    await connection.close()


async def ack_floor(servers, password, site: str) -> int:
    connection = await nats.connect(servers, user=FLEET_USER, password=password)
    info = await connection.jetstream(domain=HUB_DOMAIN).consumer_info(hub_stream(site),
                                                                       CONSUMER)
    await connection.close()
    return info.ack_floor.stream_seq


def ledger_day_wh(directory: Path, site: str, start_s: float, end_s: float
                  ) -> dict[str, dict[str, float]]:
    """The ledger's rows within [start_s, end_s): per kind, per module, Wh."""
    ledger_file = LedgerFile(directory, site)
    rows = [row for month in sorted({month_of(start_s), month_of(end_s - 1.0)})
            for row in ledger_file.read_month(month)
            if row["start_s"] >= start_s and row["end_s"] <= end_s]
    assert len(rows) == 96
    return {kind: {module: sum(row[kind].get(module, 0.0) for row in rows)
                   for module in ("m1", "m2")} for kind in ("electric_wh", "heat_wh")}


def test_metrics_agree_with_the_ledger_across_a_crash_and_a_restart(tmp_path, hub, victoria):
    """A day and a quarter of two sites into the hub's streams; the feed dies between
    VictoriaMetrics taking a batch and its state file, and `hearth fleet metrics` carries on
    as a process. Every leader state is one sample in VictoriaMetrics (none doubled by the
    replay, none lost), and each site's and module's energy over the day is the fleet
    ledger's."""
    fleet, out, servers, password = hub
    end_s = day_end_s()
    start_s = end_s - DAY_S
    messages = {site: site_messages(site, scale, start_s - 6 * 3600.0, end_s)
                for site, scale in SITES.items()}
    asyncio.run(fill_streams(servers, password, messages))
    state_dir = tmp_path / "metrics-state"

    asyncio.run(first_life(servers, password, victoria.url, state_dir))
    last_at_s = end_s + 3 * STATE_PERIOD_S
    for site in SITES:
        saved = StateStore(state_dir).read(f"{site}.json", STATE_VERSION, {}).payload["hub_seq"]
        states = leader_states_of(messages[site])
        in_victoria = victoria.query(
            f'sum(count_over_time(hearth_fleet_module_power_watts{{site="{site}"}}[2d]))',
            last_at_s)
        assert sum(in_victoria.values()) > sum(seq <= saved for seq, _ in states), \
            "the crash left nothing to replay"

    asyncio.run(ledger_of(servers, password, tmp_path / "ledger"))

    log = tmp_path / "feed.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "metrics", "--fleet", str(fleet), "--out",
         str(out), "--victoria-metrics", victoria.url, "--state-dir", str(state_dir)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        expected = {site: leader_states_of(site_list)[-1][0]
                    for site, site_list in messages.items()}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError):
                if all(StateStore(state_dir).read(f"{site}.json", STATE_VERSION, {})
                       .payload["hub_seq"] == seq for site, seq in expected.items()):
                    break
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text()
    assert "fleet metrics maple-school:" in log.read_text(), log.read_text()

    for site in SITES:
        assert asyncio.run(ack_floor(servers, password, site)) == expected[site]
        states = leader_states_of(messages[site])
        counts = victoria.query(
            f'count_over_time(hearth_fleet_module_power_watts{{site="{site}"}}[2d])', last_at_s)
        assert counts == {f"module={module},site={site}": float(
            sum(1 for _, m in states if m == module)) for module in ("m1", "m2")}
        ledger = ledger_day_wh(tmp_path / "ledger", site, start_s, end_s)
        for kind, family in (("electric_wh", "electric"), ("heat_wh", "heat")):
            name = f'hearth_fleet_site_{family}_energy_joules_total{{site="{site}"}}'
            at_end, at_start = (victoria.query(f"last_over_time({name}[2d])", at_s - 0.001)
                                for at_s in (end_s, start_s))
            (day_j,) = {key: at_end[key] - at_start[key] for key in at_end}.values()
            assert day_j / 3600.0 == pytest.approx(sum(ledger[kind].values()), rel=1e-3), \
                (site, kind)
            modules = victoria.query(
                f'increase(hearth_fleet_module_{family}_energy_joules_total'
                f'{{site="{site}"}}[1d])', end_s - 0.001)
            for module in ("m1", "m2"):
                assert modules[f"module={module},site={site}"] / 3600.0 == pytest.approx(
                    ledger[kind][module], rel=1e-3), (site, kind, module)
    boards = victoria.query('hearth_fleet_module_boards{site="oak-pool",module="m1"}',
                            end_s - 0.001)
    assert boards["mode=NORMAL,module=m1,site=oak-pool"] == 30.0
    assert boards["mode=FAULT,module=m1,site=oak-pool"] == 0.0


def test_the_text_sent_passes_promtool():
    """What one batch sends, every family present, an odd module name and a mode this release
    does not know: `promtool check metrics` finds nothing."""
    series = SiteSeries("maple-school")
    stamp = envelope.Envelope("boot-a", lambda: 1796083200.5)
    samples = []
    for seq, module in enumerate(("m1", 'm"2\\x'), 1):
        topic = f"hearth/v1/maple-school/{module}/leader/state"
        payload = envelope.encode(stamp.stamp(topic, {
            "power_w": 1500.0, "heat_w": 1400.0, "efficiency": 0.93,
            "boards_by_mode": {"NORMAL": 30, "MAINTENANCE": 1},
            "energy_electric_wh": 1000.0, "energy_heat_wh": 930.0}))
        samples += series.offer(subject_for_topic(topic), payload, seq)
    text = exposition(samples)
    assert_promtool_clean(text)
    assert 'hearth_fleet_module_boards{site="maple-school",module="m\\"2\\\\x",mode="FAULT"} ' \
        '0.0 1796083200500' in text
    assert 'mode="MAINTENANCE"} 1.0' in text
    assert 'hearth_fleet_site_electric_energy_joules_total{site="maple-school"} ' \
        f'{2000.0 * 3600.0!r} 1796083200500' not in text  # same millisecond: one site sample
    assert text.count("hearth_fleet_site_electric_energy_joules_total{") == 1


def test_what_cannot_be_a_sample_changes_nothing_but_the_position():
    series = SiteSeries("s1")
    good = envelope.Envelope("boot-a", lambda: 1000.0)
    topic = "hearth/v1/s1/m1/leader/state"
    first = series.offer(subject_for_topic(topic), envelope.encode(good.stamp(
        topic, {"energy_electric_wh": 100.0, "power_w": 10.0})), 1)
    assert [sample.family.name for sample in first] == [
        "hearth_fleet_module_electric_energy_joules_total", "hearth_fleet_module_power_watts",
        "hearth_fleet_site_electric_energy_joules_total"]
    before = series.state()
    for seq, payload in enumerate((b"not json", b'{"v": 1, "boot": "x", "seq": 1}',
                                   b'{"v": 1, "boot": "x", "seq": 1, "ts": -5}',
                                   b'{"v": 1, "boot": "x", "seq": 1, "ts": 1e300}'), 2):
        assert series.offer(subject_for_topic(topic), payload, seq) == []
    assert series.rejected_messages == 4
    assert series.state() == {**before, "hub_seq": 5}
    odd = series.offer(subject_for_topic(topic), envelope.encode(good.stamp(topic, {
        "power_w": float("nan"), "boards_by_mode": {"NORMAL": -1}})), 6)
    assert odd == []  # same millisecond as the first: the module's series only move forward


def test_a_sample_older_than_its_series_is_carried_by_the_next():
    """A leader's clock steps back: its sample is not filed before higher totals (it would read
    as a counter reset); its energy shows in the next sample."""
    clock = [2000.0]
    leader = envelope.Envelope("boot-a", lambda: clock[0])
    series = SiteSeries("s1")
    topic = "hearth/v1/s1/m1/leader/state"
    sent = []
    for seq, (at_s, wh) in enumerate(((2000.0, 100.0), (1990.0, 110.0), (2010.0, 120.0)), 1):
        clock[0] = at_s
        sent += [sample for sample in series.offer(subject_for_topic(topic), envelope.encode(
            leader.stamp(topic, {"energy_electric_wh": wh})), seq)
            if sample.family.name.startswith("hearth_fleet_module")]
    assert [(sample.ms, sample.value / 3600.0) for sample in sent] == [
        (2000000, 100.0), (2010000, 120.0)]


def test_a_damaged_state_file_stops_that_site_and_says_what_to_do(tmp_path):
    store = StateStore(tmp_path)
    store.write("s1.json", STATE_VERSION, {"hub_seq": 7, "site_ms": 0, "module_ms": {}})
    feed = MetricsFeed(None, "s1", store, VictoriaMetrics("http://127.0.0.1:1"))
    with pytest.raises(FeedStateDamaged, match=r"state file .*s1.json cannot be used "
                       r"\(energy is not an object\).*move it aside"):
        asyncio.run(feed.start())
    (tmp_path / "s1.json").write_text("{torn")
    with pytest.raises(FeedStateDamaged, match="corrupt or truncated"):
        feed.resume()
    assert (tmp_path / "s1.json").read_text() == "{torn"


def test_a_replay_is_harmless_only_where_victoria_metrics_deduplicates(tmp_path, victoria,
                                                                        capsys):
    """VictoriaMetrics' own behaviour, the reason for the flag: a batch sent twice is stored
    twice without -dedup.minScrapeInterval and once with it. `hearth fleet metrics` refuses a
    server without it."""
    plain = Victoria(tmp_path / "plain", dedup=False)
    try:
        text = ("# HELP t_total t.\n# TYPE t_total counter\n"
                f't_total{{site="s"}} 1.0 {int(day_end_s()) * 1000 - 60000}\n')
        for server in (plain, victoria):
            for _ in range(2):
                VictoriaMetrics(server.url).import_text(text)
        stored = {server: sum(server.query("count_over_time(t_total[1h])", day_end_s())
                              .values()) for server in (plain, victoria)}
        assert stored == {plain: 2.0, victoria: 1.0}
        VictoriaMetrics(victoria.url).check_deduplicates()
        with pytest.raises(MetricsStoreError, match="-dedup.minScrapeInterval=1ms"):
            VictoriaMetrics(plain.url).check_deduplicates()
        fleet, out = fleet_files(tmp_path, free_port())
        assert hearth(["fleet", "metrics", "--fleet", str(fleet), "--out", str(out),
                       "--victoria-metrics", plain.url, "--state-dir", str(tmp_path)]) == 2
        assert "runs with -dedup.minScrapeInterval not set" in capsys.readouterr().err
    finally:
        plain.close()


@pytest.mark.parametrize("text, ms", [("1ms", 1.0), ("1s", 1000.0), ("1m30s", 90000.0),
                                      ("0.5s", 500.0), ("0s", 0.0), ("", None), ("1d", None),
                                      ("30 s", None), ("1s junk", None)])
def test_the_dedup_interval_is_read_as_victoria_metrics_prints_it(text, ms):
    """What /flags shows, in ms: the feed wants more than 0 and at most a second."""
    assert duration_ms(text) == ms


def test_a_batch_victoria_metrics_did_not_take_is_sent_again(tmp_path, jetstream_server):
    """VictoriaMetrics is down: the batch stays pending, nothing is recorded or acknowledged;
    once it is up the same batch goes in first, once."""
    site = "maple-school"
    at_s = day_end_s() - 3600.0
    messages = site_messages(site, 1.0, at_s - 600.0, at_s)
    states = leader_states_of(messages)
    asyncio.run(fill_streams([jetstream_server], None, {site: messages}))
    port = free_port()
    store = StateStore(tmp_path / "state")

    async def run() -> None:
        connection = await nats.connect(jetstream_server)
        jetstream = connection.jetstream()
        feed = MetricsFeed(jetstream, site, store,
                           VictoriaMetrics(f"http://127.0.0.1:{port}", timeout_s=5.0))
        await feed.start()
        with pytest.raises(MetricsStoreError, match="cannot be reached"):
            await feed.pump()
        assert feed.pending is not None and not store.path(f"{site}.json").exists()
        info = await jetstream.consumer_info(hub_stream(site), CONSUMER)
        assert info.ack_floor.stream_seq == 0
        server = Victoria(tmp_path / "victoria-late", port=port)
        try:
            await feed.pump()
            assert feed.pending is None
            assert store.read(f"{site}.json", STATE_VERSION, {}).payload["hub_seq"] == \
                states[-1][0]
            info = await jetstream.consumer_info(hub_stream(site), CONSUMER)
            assert info.ack_floor.stream_seq == states[-1][0]
            counts = server.query(
                f'count_over_time(hearth_fleet_module_power_watts{{site="{site}"}}[1d])',
                at_s + 3600.0)
            assert counts == {f"module={module},site={site}": float(
                sum(1 for _, m in states if m == module)) for module in ("m1", "m2")}
        finally:
            server.close()
        await connection.close()

    asyncio.run(run())


def test_the_fleet_ledger_waits_for_a_stream_not_made_yet_then_follows_it(tmp_path, hub):
    """Started before `hearth uplink hub-streams` made the sites' streams (or while the hub
    elects their leaders), `hearth fleet ledger` waits and says why instead of exiting with a
    traceback, and follows each stream once it is there."""
    fleet, out, servers, password = hub
    ledger_dir = tmp_path / "ledger"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "fleet", "ledger", "--fleet", str(fleet), "--out",
         str(out), "--ledger-dir", str(ledger_dir), "--leader-timeout", str(LEADER_TIMEOUT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3.0)
        assert process.poll() is None, process.stdout.read()
        end_s = day_end_s()
        asyncio.run(fill_streams(servers, password, {
            site: site_messages(site, scale, end_s - 3 * 3600.0, end_s)
            for site, scale in SITES.items()}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                any(path.stat().st_size for path in ledger_dir.glob(f"{site}-*.jsonl"))
                for site in SITES):
            time.sleep(0.5)
    finally:
        process.terminate()
        status = process.wait(timeout=20)
    output = process.stdout.read()
    assert status == 0, output
    for site in SITES:
        assert f"fleet ledger {site}: the hub did not take its consumer" in output, output
        assert any(path.stat().st_size for path in ledger_dir.glob(f"{site}-*.jsonl")), output
