"""The fleet ledger at the centre (issue 19): a site's hub stream made into the same ledger rows
the site's own recorder writes, across a restart of the consumer, and billed from."""

import asyncio
import calendar
import contextlib
import csv
import io
import logging
import socket
import subprocess
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from agent.cli import main as hearth
from agent.fleet.centre import CONSUMER, FleetLedger, SiteConsumer
from agent.fleet.ledger_file import LedgerFile
from agent.fleet.ledger_recorder import LedgerRecorder
from agent.fleet.report import energy_csv
from agent.fleet.subjects import MSG_ID_HEADER, hub_stream, message_id, subject_for_topic
from agent.mqtt import envelope
from agent.mqtt.link import Message
from agent.mqtt.topics import topic_matches
from test_broker_config import free_port

SITE = "maple-school"
MONTH = "2026-12"
STATE_PERIOD_S = 120.0
LEADER_TIMEOUT_S = 300.0
"""States every two minutes keep a month to 45,000 messages; the timeout is the site's own
rule scaled the same way, and both ledgers use it."""
NATS_SERVER = "/usr/sbin/nats-server"


def month_of_leader_states() -> tuple[list[tuple[str, bytes]], dict[str, float]]:
    """Two modules' leader states and their boards' events through December 2026, in the order
    the site broker would carry them, and each module's electricity in Wh (the truth). m2's
    leader restarts on the 10th (a new boot, counters carried on); m1's leader is silent for
    three hours on the 20th; one state after the month closes its last quarter hour."""
    start_s = calendar.timegm((2026, 12, 1, 0, 0, 0))
    end_s = calendar.timegm((2027, 1, 1, 0, 0, 0))
    clock = [start_s]
    stamps = {"m1": envelope.Envelope("m1-boot-a", lambda: clock[0]),
              "m2": envelope.Envelope("m2-boot-a", lambda: clock[0])}
    board = envelope.Envelope("b01-boot", lambda: clock[0])
    electric_wh = {"m1": 1000.0, "m2": 50.0}
    first_wh = dict(electric_wh)
    messages = []
    t = start_s
    step = 0
    while t <= end_s + 1:
        for module, power_w in (("m1", 1500.0 + 400 * (step % 7) / 7), ("m2", 900.0)):
            if module == "m1" and 20 * 86400 <= t - start_s < 20 * 86400 + 3 * 3600:
                continue
            if module == "m2" and t - start_s == 10 * 86400:
                stamps["m2"] = envelope.Envelope("m2-boot-b", lambda: clock[0])
            electric_wh[module] += power_w * STATE_PERIOD_S / 3600.0
            topic = f"hearth/v1/{SITE}/{module}/leader/state"
            clock[0] = t
            payload = stamps[module].stamp(topic, {
                "energy_electric_wh": electric_wh[module],
                "energy_heat_wh": 0.93 * electric_wh[module]})
            messages.append((topic, envelope.encode(payload)))
        if step % 500 == 0:
            topic = f"hearth/v1/{SITE}/m1/b01/event"
            clock[0] = t + 1
            messages.append((topic, envelope.encode(board.stamp(topic, {
                "cause": "soc_temp", "severity": "error" if step % 1000 else "info",
                "message": "SoC at 79.1 C"}))))
        t += STATE_PERIOD_S
        step += 1
    return messages, {module: electric_wh[module] - first_wh[module] for module in electric_wh}


class CarriedLink:
    """The site broker as LedgerRecorder sees it: the same messages, in the same order."""

    def __init__(self):
        self.handlers = []

    def subscribe(self, topic_filter, handler):
        self.handlers.append((topic_filter, handler))

    def deliver(self, topic: str, payload: bytes) -> None:
        for topic_filter, handler in self.handlers:
            if topic_matches(topic_filter, topic):
                handler(Message(topic, payload))


def site_ledger(directory: Path, messages) -> list[dict]:
    """The site's own ledger of these messages: agent/fleet/ledger_recorder.py on the
    senders' clock, as if each arrived when it was sent."""
    clock = [envelope.decode(messages[0][1])["ts"]]
    link = CarriedLink()
    recorder = LedgerRecorder(SITE, link, LedgerFile(directory, SITE), lambda: clock[0],
                              leader_timeout_s=LEADER_TIMEOUT_S)
    recorder.start()
    for topic, payload in messages:
        clock[0] = envelope.decode(payload)["ts"]
        recorder.tick()
        link.deliver(topic, payload)
    return LedgerFile(directory, SITE).read_month(MONTH)


@pytest.fixture
def jetstream_server(tmp_path):
    """One JetStream server on loopback; the test's stream takes published messages, where the
    hub's sources them from the site (the rows cannot tell the difference)."""
    port = free_port()
    process = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port),
                                "-sd", str(tmp_path / "js")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        time.sleep(0.1)
    yield f"nats://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


async def fill_stream(server: str, messages) -> None:
    """The month into SITE_<site> with the uplink's subjects and Nats-Msg-Id."""
    connection = await nats.connect(server)
    jetstream = connection.jetstream()
    await jetstream.add_stream(StreamConfig(name=hub_stream(SITE),
                                            subjects=[f"hearth.{SITE}.>"]))
    for index in range(0, len(messages), 1000):
        publishes = []
        for topic, payload in messages[index:index + 1000]:
            data = envelope.decode(payload)
            publishes.append(jetstream.publish(subject_for_topic(topic), payload, headers={
                MSG_ID_HEADER: message_id(data["boot"], data["seq"], topic)}))
        await asyncio.gather(*publishes)
    await connection.close()


async def consume(server: str, directory: Path, max_messages: int | None) -> tuple[int, int]:
    """One life of the fleet ledger: how many messages it took, and the consumer's ack floor.
    It ends as a crash would: nothing is flushed or acknowledged on the way out."""
    connection = await nats.connect(server)
    jetstream = connection.jetstream()
    ledger = FleetLedger(SITE, LedgerFile(directory, SITE), time.time,
                         logging.getLogger("test"), LEADER_TIMEOUT_S)
    consumer = SiteConsumer(jetstream, ledger, fetch_timeout_s=2.0)
    await consumer.start()
    taken = await consumer.pump(max_messages)
    await asyncio.sleep(0.5)
    floor = (await jetstream.consumer_info(hub_stream(SITE), CONSUMER)).ack_floor.stream_seq
    await connection.close()
    return taken, floor


def kwh_by_module(text: str) -> dict[str, list[float]]:
    totals: dict[str, list[float]] = {}
    for line in csv.DictReader(io.StringIO(text)):
        entry = totals.setdefault(line["module"], [0.0, 0.0, 0.0])
        for index, key in enumerate(("electricity_kwh", "heat_kwh", "uptime_h")):
            entry[index] += float(line[key])
    return totals


def test_fleet_ledger_equals_the_sites_own_across_a_restart(tmp_path, jetstream_server,
                                                           capsys):
    messages, truth_wh = month_of_leader_states()
    asyncio.run(fill_stream(jetstream_server, messages))
    fleet_dir = tmp_path / "fleet"
    first, floor = asyncio.run(consume(jetstream_server, fleet_dir, len(messages) // 2))
    written = LedgerFile(fleet_dir, SITE).read_month(MONTH)
    assert first == len(messages) // 2 and written
    assert floor == written[-1]["hub_seq"], "acknowledged beyond the last row on disk"
    second, floor = asyncio.run(consume(jetstream_server, fleet_dir, None))
    fleet_rows = LedgerFile(fleet_dir, SITE).read_month(MONTH)
    assert second == len(messages) - written[-1]["hub_seq"]  # the rest, and only once
    assert floor == fleet_rows[-1]["hub_seq"]
    site_rows = site_ledger(tmp_path / "site", messages)

    assert len(fleet_rows) == len(site_rows) == 31 * 96
    for fleet, site in zip(fleet_rows, site_rows):  # quarter hour by quarter hour
        assert (fleet["start_s"], fleet["end_s"]) == (site["start_s"], site["end_s"])
        for name in ("electric_wh", "heat_wh", "up_s"):
            assert fleet[name] == pytest.approx(site[name], rel=1e-3, abs=1e-6), name
    for name in ("electric_wh", "heat_wh", "up_s"):
        for module in ("m1", "m2"):
            fleet = sum(row[name].get(module, 0.0) for row in fleet_rows)
            site = sum(row[name].get(module, 0.0) for row in site_rows)
            assert fleet == pytest.approx(site, rel=1e-3), (name, module)
    for module, wh in truth_wh.items():
        fleet = sum(row["electric_wh"].get(module, 0.0) for row in fleet_rows)
        assert fleet == pytest.approx(wh, rel=1e-3), module
    assert [event["id"] for row in fleet_rows for event in row["events"]] == \
        [event["id"] for row in site_rows for event in row["events"]]
    m1_up_h = sum(row["up_s"]["m1"] for row in fleet_rows) / 3600.0
    assert m1_up_h == pytest.approx(31 * 24 - 3, abs=0.1)  # the silent three hours are not up

    assert hearth(["fleet", "energy", "--site", SITE, "--month", MONTH,
                   "--ledger-dir", str(fleet_dir)]) == 0
    billed = kwh_by_module(capsys.readouterr().out)
    expected = kwh_by_module(energy_csv(SITE, site_rows, MONTH))
    assert billed.keys() == expected.keys() == {"m1", "m2"}
    for module in billed:
        assert billed[module] == pytest.approx(expected[module], rel=1e-3)


def test_energy_for_a_month_with_no_fleet_ledger_says_what_to_check(tmp_path, capsys):
    assert hearth(["fleet", "energy", "--site", SITE, "--month", MONTH,
                   "--ledger-dir", str(tmp_path)]) == 2
    assert "hearth fleet ledger" in capsys.readouterr().err
