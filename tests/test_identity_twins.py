"""Two boards flashed with one identity (issue 13 item 8), on a real Mosquitto running the
configuration `hearth broker-config` writes: one account, so one client id, and each login of
one twin closes the other's connection. The Link must say so once, as an event naming the
client id and what to check, and stop reconnecting at its fastest; otherwise the twins take
the connection from each other every `reconnect_min_s` with only "lost the broker" in the log.

Counts, not timings: the twins run for a fixed wall time and the test counts the events and the
connections made in it.
"""

import time

from twin_boards import RECONNECT_MAX_S, Twin, generated_broker, run_twins, twin_settings

from agent.identity import IDENTITY_FILE
from agent.mqtt.link import DUPLICATE_IDENTITY, Link
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.outbox import Outbox

FIND_S = 25.0
"""Long enough for TWIN_LOSSES takeovers at the 1-s first backoff step, with a wide margin."""
OBSERVE_S = 12.0


def test_two_boards_with_one_identity_say_so_once_and_stop_taking_turns(tmp_path):
    account, broker = generated_broker(tmp_path)
    twins = [Twin(twin_settings(broker, account), tmp_path / name) for name in ("first", "second")]
    try:
        run_twins(twins, FIND_S, until=lambda: any(twin.duplicates() for twin in twins))
        reported = [event for twin in twins for event in twin.duplicates()]
        assert reported, (f"no {DUPLICATE_IDENTITY} event in {FIND_S} s; connections made: "
                          f"{[twin.link.connects for twin in twins]}")
        before = sum(twin.link.connects for twin in twins)
        run_twins(twins, OBSERVE_S)
        made = sum(twin.link.connects for twin in twins) - before
        reported = [event for twin in twins for event in twin.duplicates()]
    finally:
        for twin in twins:
            twin.board_link.close()
        broker.stop()
    assert len(reported) == 1, [event.message for event in reported]
    (event,) = reported
    assert event.severity == "error" and event.value == "hearth-maple-school-m1-b01"
    for words in ("hearth-maple-school-m1-b01", "m1.b01", "same identity", IDENTITY_FILE,
                  f"every {RECONNECT_MAX_S} s"):
        assert words in event.message, event.message
    # The twin that reported comes back once per RECONNECT_MAX_S, and each time the other one
    # takes the connection back once: without the backoff, both reconnect every second.
    assert made <= 2 * (OBSERVE_S / RECONNECT_MAX_S + 1), made


def test_twins_on_one_network_loop_back_off_too(tmp_path):
    """The simulator's shared NetworkLoop keeps its own reconnect backoff: the Link raises it
    there as well."""
    account, broker = generated_broker(tmp_path)
    network = NetworkLoop()
    found = []
    links = [Link(twin_settings(broker, account), client_id="hearth-maple-school-m1-b01",
                  outbox=Outbox(tmp_path / name), boot=name, io=network)
             for name in ("first", "second")]
    try:
        for link in links:
            link.problem_listeners.append(found.append)
            link.start()
        _run_links(links, FIND_S, until=lambda: bool(found))
        assert found, f"no report in {FIND_S} s; connections: {[l.connects for l in links]}"
        before = sum(link.connects for link in links)
        _run_links(links, OBSERVE_S)
        made = sum(link.connects for link in links) - before
    finally:
        for link in links:
            link.close()
        network.close()
        broker.stop()
    assert [problem.cause for problem in found] == [DUPLICATE_IDENTITY]
    assert made <= 2 * (OBSERVE_S / RECONNECT_MAX_S + 1), made


def _run_links(links, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        for link in links:
            link.poll()
        time.sleep(0.05)


def test_a_connection_that_holds_is_no_twin(tmp_path):
    """The control: a broker restart also closes a connection, but one that had held for
    longer than the twin window; the Link reconnects at once and reports nothing."""
    account, broker = generated_broker(tmp_path)
    found = []
    link = Link(twin_settings(broker, account), client_id="b01", outbox=Outbox(tmp_path / "o"),
                boot="b")
    link.problem_listeners.append(found.append)
    link.start()
    try:
        for _ in range(3):
            _run_links([link], 10.0, until=lambda: link.connected)
            connects = link.connects
            _run_links([link], 3.5)   # past the twin window of 3 x reconnect_min_s
            broker.stop()
            broker.start()
            _run_links([link], 10.0, until=lambda: link.connects > connects)
    finally:
        link.close()
        broker.stop()
    assert link.connects == 4 and found == []
