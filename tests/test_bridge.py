"""The bridge `hearth broker-config --bridge` generates, between two real Mosquitto brokers on
loopback: the site broker's messages reach the central broker, and across a central restart the QoS 1 events
queued at the site survive up to the bridge queue's bound while QoS 0 telemetry and the overflow
are lost, every loss showing as a sequence gap to the central receiver (docs/bridge.md)."""

import json
import time
import uuid
from pathlib import Path

import pytest
from test_broker_config import INVENTORY, Client, Mosquitto, free_port, login

from agent.cli import main as hearth
from agent.deploy.broker_config import mosquitto_hash

ROOT = "hearth/v1/maple-school/m1"
BRIDGE_QUEUE = 20
OUTAGE_EVENTS = 30
OUTAGE_STATES = 5


def envelope(boot: str, seq: int, **fields) -> str:
    return json.dumps({"v": 1, "boot": boot, "seq": seq, "ts": time.time(), **fields})


def seq_gaps(seqs: list[int]) -> list[int]:
    """What a receiver can tell from sequence numbers alone: the numbers it never saw between
    the first and the last it did."""
    seen = set(seqs)
    return [seq for seq in range(min(seen), max(seen) + 1) if seq not in seen]


def central_broker(directory: Path, port: int, out: Path, ingest_password: str) -> Path:
    """A central broker as docs/bridge.md describes it: the site's generated passwd and ACL
    lines merged in, an ingest account, and persistence so sessions survive a restart."""
    directory.mkdir(parents=True)
    (directory / "passwd").write_text((out / "central/passwd").read_text()
                                      + f"ingest:{mosquitto_hash(ingest_password)}\n")
    (directory / "acl").write_text((out / "central/acl").read_text()
                                   + "\nuser ingest\ntopic read hearth/#\n")
    config = directory / "central.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                      f"password_file {directory / 'passwd'}\nacl_file {directory / 'acl'}\n"
                      "persistence true\n")   # its location: the runner's, as Debian's
    return config


@pytest.fixture
def bridged(tmp_path):
    site_port, central_port = free_port(), free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=site_port))
    out = tmp_path / "out"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--broker-etc", str(out / "broker"), "--bridge", f"127.0.0.1:{central_port}",
                   "--bridge-queue", str(BRIDGE_QUEUE)]) == 0
    ingest_login = {"username": "ingest", "password": "ingest-secret"}
    central = Mosquitto(central_broker(tmp_path / "central", central_port, out,
                                       ingest_login["password"]),
                        central_port, tmp_path / "central-run").start()
    site = Mosquitto(out / "broker/mosquitto.conf", site_port, tmp_path / "site-run").start()
    ingest = Client(central_port, ingest_login, client_id="ingest", clean_session=False)
    ingest.paho.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    assert not ingest.connect().is_failure
    assert ingest.subscribe("hearth/v1/maple-school/#")
    board = Client(site_port, login(out, "m1.b01"), client_id="m1.b01")
    assert not board.connect().is_failure
    yield central, site, ingest, board
    for client in (ingest, board):
        client.close()
    site.stop()
    central.stop()


def collect(client: Client, done, timeout: float = 15.0) -> list[dict]:
    """Envelopes of board b01 arriving at `client` until `done(collected)` holds."""
    collected: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(collected):
        assert time.monotonic() < deadline, f"gave up waiting; got {collected}"
        collected += [json.loads(payload) for topic, payload in client.drain(0.2)
                      if topic in (f"{ROOT}/b01/event", f"{ROOT}/b01/state")]
    return collected


def has_event(seq: int):
    return lambda messages: any(m["kind"] == "event" and m["seq"] == seq for m in messages)


def test_bridge_carries_site_topics_and_loss_across_a_central_restart_is_detectable(bridged):
    central, _, ingest, board = bridged
    boot = str(uuid.uuid4())
    board.publish(f"{ROOT}/b01/state", envelope(boot, 1, kind="state"), qos=0)
    board.publish(f"{ROOT}/b01/event", envelope(boot, 1, kind="event"))
    # QoS 0 and QoS 1 are not ordered against each other: wait for both
    first = collect(ingest, lambda got: {("state", 1), ("event", 1)} <= {
        (m["kind"], m["seq"]) for m in got})
    assert {(m["kind"], m["seq"]) for m in first} == {("state", 1), ("event", 1)}

    central.stop()
    for seq in range(2, 2 + OUTAGE_EVENTS):
        board.publish(f"{ROOT}/b01/event", envelope(boot, seq, kind="event"))
        if seq < 2 + OUTAGE_STATES:
            board.publish(f"{ROOT}/b01/state", envelope(boot, seq, kind="state"), qos=0)
    central.start()
    # The board keeps publishing after the outage; the bridge is back once one of these
    # arrives, and whatever was queued before it has been forwarded by then. QoS 0 and QoS 1
    # are not ordered against each other, so wait for a post-outage state as well.
    received: list[dict] = []
    seq, deadline = 2 + OUTAGE_EVENTS, time.monotonic() + 30
    while True:
        board.publish(f"{ROOT}/b01/state", envelope(boot, seq, kind="state"), qos=0)
        board.publish(f"{ROOT}/b01/event", envelope(boot, seq, kind="event"))
        received += [json.loads(payload) for topic, payload in ingest.drain(0.5)
                     if topic in (f"{ROOT}/b01/event", f"{ROOT}/b01/state")]
        state_after_outage = any(m["kind"] == "state" and m["seq"] >= 2 + OUTAGE_EVENTS
                                 for m in received)
        if has_event(seq)(received) and state_after_outage:
            break
        assert time.monotonic() < deadline, f"the bridge never came back: {received}"
        seq += 1
    events = [m["seq"] for m in received if m["kind"] == "event" and m["boot"] == boot]
    states = [m["seq"] for m in received if m["kind"] == "state" and m["boot"] == boot]
    unique_events = sorted(set(events))
    assert events == sorted(events), "the bridge reordered events"
    # The site broker queued the outage's QoS 1 events for the absent bridge up to its bound:
    # the first BRIDGE_QUEUE survive, in order (exactly once after dropping repeats of a
    # (boot, seq)); the overflow, and what came while the queue was still full, never left.
    outage = range(2, 2 + OUTAGE_EVENTS)
    survived = [number for number in unique_events if number in outage]
    assert survived == list(range(2, 2 + BRIDGE_QUEUE))
    # The receiver's sequence check names exactly the events that were published and lost.
    lost = [number for number in range(2, seq + 1) if number not in unique_events]
    assert set(range(2 + BRIDGE_QUEUE, 2 + OUTAGE_EVENTS)) <= set(lost)
    assert seq_gaps([1] + unique_events) == lost
    # QoS 0 telemetry is not queued for an absent bridge: the outage is a gap in state seqs.
    assert set(range(2, 2 + OUTAGE_STATES)) <= set(seq_gaps([1] + states))


def test_bridge_over_tls_names_the_central_ca_and_keeps_verification_on(tmp_path):
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=1883))
    central_ca = tmp_path / "central-ca.crt"
    central_ca.write_text("-----BEGIN CERTIFICATE-----\n(the central CA)\n")
    out = tmp_path / "out"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--bridge", "central.example.net:8883", "--bridge-cafile",
                   str(central_ca)]) == 0
    config = (out / "broker/mosquitto.conf").read_text()
    assert "bridge_cafile /etc/mosquitto/hearth/bridge/central-ca.crt\n" in config
    assert "bridge_insecure false\n" in config and "address central.example.net:8883\n" in config
    assert (out / "broker/bridge/central-ca.crt").read_bytes() == central_ca.read_bytes()
