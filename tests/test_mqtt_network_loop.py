"""Many Links on one NetworkLoop (agent/mqtt/network_loop.py) against a real Mosquitto: more
connections than paho's select()-based thread can hold in one process, delivery both ways, and
a reconnect with the kept messages after the broker was away."""

import resource
import signal
import threading
import time
import uuid

from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.network_loop import NetworkLoop
from agent.mqtt.outbox import Outbox

LINKS = 400
"""With paho's own threads (three descriptors each) this many would pass descriptor 1023,
which select() cannot watch; on a NetworkLoop each holds one."""


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def make_link(port: int, directory, name: str, network: NetworkLoop | None,
              inbox_max: int = 1000) -> Link:
    return Link(LinkSettings("127.0.0.1", port), client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                outbox=Outbox(directory / name), boot=str(uuid.uuid4()), io=network,
                inbox_max=inbox_max)


def test_hundreds_of_links_on_one_network_thread(mosquitto, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * LINKS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * LINKS), hard))
    broker = mosquitto()
    network = NetworkLoop()
    received: dict[int, list[float]] = {}
    links = []
    try:
        for index in range(LINKS):
            link = make_link(broker.port, tmp_path, f"n{index}", network)
            link.subscribe(f"fan/{index}", lambda m, index=index: received.setdefault(
                index, []).append(m.data()["x"]))
            link.start()
            links.append(link)
        wait_for(lambda: all(link.connected for link in links), 30, "every link connected")
        sender = make_link(broker.port, tmp_path, "sender", network)
        sender.start()
        wait_for(lambda: sender.connected, 10, "the sender")
        time.sleep(0.5)  # subscriptions made in on_connect are acknowledged by now
        for index in range(LINKS):
            sender.publish(f"fan/{index}", {"x": float(index)}, qos=1, keep=False)
            links[index].publish(f"back/{index}", {"x": 1.0}, qos=1)

        def all_delivered():
            for link in links:
                link.poll()
            return len(received) == LINKS and all(link.idle() for link in links)
        wait_for(all_delivered, 20, "every link's message, both ways")
        assert received == {index: [float(index)] for index in range(LINKS)}
        sender.close()
    finally:
        for link in links:
            link.close(timeout_s=0.5)
        network.close()


def test_a_link_on_a_network_loop_reconnects_and_sends_what_waited(mosquitto, tmp_path):
    broker = mosquitto()
    network = NetworkLoop()
    link = Link(LinkSettings("127.0.0.1", broker.port, reconnect_min_s=2), client_id="board",
                outbox=Outbox(tmp_path / "board"), boot=str(uuid.uuid4()), io=network)
    link.start()
    listener = None
    got = []
    try:
        wait_for(lambda: link.connected, 10, "the link connected")
        broker.stop()
        wait_for(lambda: not link.connected, 10, "the link to notice the broker is gone")
        for n in range(5):
            link.publish("kept/events", {"n": n}, qos=1)
        broker.start()
        # listening before the link's first retry, 2 s after the loss (paho's own thread)
        listener = make_link(broker.port, tmp_path, "listener", None)
        listener.subscribe("kept/#", lambda m: got.append(m.data()["n"]))
        listener.start()

        def sent():
            link.poll()
            listener.poll()
            return link.idle() and len(got) >= 5
        wait_for(sent, 20, "the kept messages after the reconnect")
        assert got == [0, 1, 2, 3, 4]
        assert link.connects == 2
    finally:
        link.close(timeout_s=0.5)
        if listener is not None:
            listener.close(timeout_s=0.5)
        network.close()


def test_messages_published_from_another_thread_are_written_at_once(mosquitto, tmp_path):
    """paho asks its external loop for a write only while its own 'write registered' flag is
    clear, and the loop thread clears it after finding the queue empty; a message queued in
    that moment used to wait for the next keepalive (60 s). Bursts from the caller's thread
    against a busy loop thread hit that moment; every message must still arrive promptly."""
    broker = mosquitto()
    network = NetworkLoop()
    senders = [make_link(broker.port, tmp_path, f"s{i}", network) for i in range(20)]
    # every message may arrive before the first poll: room for them all in the inbox
    listener = make_link(broker.port, tmp_path, "listener", None, inbox_max=10_000)
    got: list[tuple[int, int]] = []
    listener.subscribe("race/#", lambda m: got.append((m.data()["s"], m.data()["n"])))
    try:
        for link in [listener, *senders]:
            link.start()
        wait_for(lambda: all(link.connected for link in [listener, *senders]), 10, "connected")
        time.sleep(0.3)
        for n in range(100):
            for index, sender in enumerate(senders):
                sender.publish(f"race/{index}", {"s": index, "n": n}, qos=0)
            time.sleep(0.0005 * (n % 3))

        def all_arrived():
            listener.poll(max_messages=10_000)
            return len(got) == 100 * len(senders)
        wait_for(all_arrived, 5, "every message well before a 60 s keepalive")
        assert listener.inbox_dropped == 0
        for index in range(len(senders)):
            assert [n for s, n in got if s == index] == list(range(100))
    finally:
        for link in [listener, *senders]:
            link.close(timeout_s=0.5)
        network.close()


def test_a_keepalive_timeout_on_a_network_loop_reconnects(mosquitto, tmp_path):
    """A broker that stops answering (SIGSTOP: the kernel still accepts TCP connections for
    it). Each reconnect attempt then waits for a CONNACK that never comes, and paho's keepalive
    closes that socket inside loop_misc and returns success; the loop must notice, and keep
    trying until the broker answers again."""
    broker = mosquitto()
    network = NetworkLoop()
    link = Link(LinkSettings("127.0.0.1", broker.port, keepalive_s=1, reconnect_min_s=1,
                             reconnect_max_s=1),
                client_id="quiet-broker", outbox=Outbox(tmp_path / "q"), boot=str(uuid.uuid4()),
                io=network)
    try:
        link.start()
        wait_for(lambda: link.connected, 10, "the link connected")
        broker.process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not link.connected, 10, "the keepalive to give up on the broker")
            time.sleep(4)  # reconnect attempts to the stopped broker, each timed out
        finally:
            broker.process.send_signal(signal.SIGCONT)
        wait_for(lambda: link.connected, 15, "the link back after the broker answers again")
        assert link.connects >= 2
    finally:
        link.close(timeout_s=0.5)
        network.close()


def test_one_thread_runs_every_client_and_delivers_in_order(mosquitto, tmp_path):
    """The simulator's way: a NetworkLoop without a thread, run by the caller between its
    steps, with Mosquitto in its own process. No thread is started; messages arrive in order."""
    broker = mosquitto()
    threads_before = threading.active_count()
    network = NetworkLoop(threaded=False)
    sender = make_link(broker.port, tmp_path, "sender", network)
    reader = make_link(broker.port, tmp_path, "reader", network)
    got = []
    reader.subscribe("one/thread", lambda m: got.append(m.data()["n"]))
    try:
        sender.start()
        reader.start()
        deadline = time.monotonic() + 10
        while not (sender.connected and reader.connected) and time.monotonic() < deadline:
            network.wait(0.01)
        network.wait(0.1)  # the reader's SUBSCRIBE answered
        assert threading.active_count() == threads_before
        for n in range(3):
            sender.publish("one/thread", {"n": n}, qos=1)
            run_until(network, reader, lambda: len(got) == n + 1)
            assert got == list(range(n + 1))
        # a handler added after the topic was heard is called too (the topic -> handlers
        # answer is kept until the subscriptions change)
        also = []
        reader.subscribe("one/+", lambda m: also.append(m.data()["n"]))
        network.wait(0.1)
        sender.publish("one/thread", {"n": 3}, qos=1)
        run_until(network, reader, lambda: also)
        assert got == [0, 1, 2, 3] and also == [3]
    finally:
        sender.close(timeout_s=0.5)
        reader.close(timeout_s=0.5)
        network.close()


def run_until(network: NetworkLoop, reader: Link, condition, timeout_s: float = 10.0) -> None:
    """Run the loop on this thread until the reader has what it waits for."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not delivered"
        network.wait(0.005)
        reader.poll()


def test_one_round_of_the_loop_reads_everything_a_socket_holds(mosquitto, tmp_path):
    """paho's loop_read reads one QoS 0 packet per call: a leader hearing 64 boards would need
    64 rounds of the loop for one second's states. The loop reads a ready socket dry."""
    broker = mosquitto()
    network = NetworkLoop(threaded=False)
    senders = [make_link(broker.port, tmp_path, f"s{n}", network) for n in range(64)]
    reader = make_link(broker.port, tmp_path, "reader", network)
    got = []
    reader.subscribe("many/+", lambda m: got.append(m.data()["n"]))
    try:
        for link in senders + [reader]:
            link.start()
        deadline = time.monotonic() + 10
        while not all(link.connected for link in senders + [reader]):
            assert time.monotonic() < deadline, "links did not connect"
            network.wait(0.01)
        network.wait(0.1)  # the reader's SUBSCRIBE answered
        for n, sender in enumerate(senders):
            sender.publish(f"many/{n}", {"n": n}, qos=0)
        network.run_once(0.0)  # the senders write
        time.sleep(0.5)  # Mosquitto routes all 64 to the reader
        network.run_once(0.0)  # one round: the reader reads
        reader.poll(max_messages=1000)
        assert sorted(got) == list(range(64))
    finally:
        for link in senders + [reader]:
            link.close(timeout_s=0.5)
        network.close()
