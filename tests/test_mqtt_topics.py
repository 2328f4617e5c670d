"""MQTT topic filters as the Link dispatches them (agent.mqtt.topics.topic_matches): the spec's
examples, agreement with paho, and a Link's handlers on Mosquitto getting exactly their topics."""

import time
import uuid

import paho.mqtt.client as paho
from hypothesis import given, strategies as st

from agent.mqtt.link import Link, LinkSettings
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import topic_matches


def test_topic_filters_follow_the_spec_examples():
    assert topic_matches("sport/tennis/player1/#", "sport/tennis/player1")
    assert topic_matches("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon")
    assert topic_matches("sport/#", "sport")
    assert topic_matches("sport/+", "sport/") and not topic_matches("sport/+", "sport")
    assert topic_matches("+/+", "/finance") and topic_matches("/+", "/finance")
    assert not topic_matches("+", "/finance")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("+/monitor", "$SYS/monitor")
    assert topic_matches("$SYS/#", "$SYS/x") and topic_matches("$SYS/+", "$SYS/x")


_level = st.sampled_from(["a", "b", "", "$x"])


@given(filter_levels=st.lists(st.sampled_from(["a", "b", "", "$x", "+"]), min_size=1,
                              max_size=4),
       hash_end=st.booleans(), topic_levels=st.lists(_level, min_size=1, max_size=5))
def test_topic_matching_agrees_with_paho(filter_levels, hash_end, topic_levels):
    topic_filter = "/".join(filter_levels + (["#"] if hash_end else []))
    topic = "/".join(topic_levels)
    assert topic_matches(topic_filter, topic) == paho.topic_matches_sub(topic_filter, topic)


def wait_for(condition, what, step, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        step()
        time.sleep(0.01)


def _link(broker, tmp_path, name) -> Link:
    return Link(LinkSettings(broker.host, broker.port, reconnect_min_s=1, reconnect_max_s=1),
                client_id=name, outbox=Outbox(tmp_path / name), boot=name)


def test_wildcard_subscriptions_each_get_exactly_their_topics(mosquitto, tmp_path):
    broker = mosquitto()
    patterns = {"plus": "site/+/temp", "hash": "site/#", "all": "#", "exact": "site/b1/temp"}
    heard: dict[str, list[str]] = {name: [] for name in patterns}
    links = {}
    for name, pattern in patterns.items():
        link = _link(broker, tmp_path, f"recorder-{name}")
        link.subscribe(pattern, lambda message, name=name: heard[name].append(message.topic))
        link.start()
        links[name] = link
    sender = _link(broker, tmp_path, "sender")
    sender.start()

    def poll_all():
        for link in [sender, *links.values()]:
            link.poll()

    wait_for(lambda: all(link.connected for link in [sender, *links.values()]), "connections",
             poll_all)
    for name, link in links.items():  # each subscription live: a probe through it came back
        probe = f"probe/{uuid.uuid4().hex}"
        link.subscribe(probe, lambda message, name=name: heard[name].append(message.topic))
        link.publish(probe, {}, qos=1)
        wait_for(lambda: probe in heard[name], f"{name}'s probe", poll_all)
    topics = ["site/b1/temp", "site/b2/temp", "site", "site/b1/temp/raw", "other/temp", "site/"]
    for topic in topics:
        sender.publish(topic, {}, qos=1)
    sender.publish("end", {}, qos=1)
    wait_for(lambda: "end" in heard["all"], "the end marker", poll_all)
    expected = {name: [t for t in topics if topic_matches(pattern, t)]
                for name, pattern in patterns.items()}
    for name in patterns:
        wait_for(lambda: len([t for t in heard[name] if not t.startswith("probe/")])
                 >= len(expected[name]), f"{name}'s messages", poll_all)
    time.sleep(0.2)  # nothing more is due; give a wrong extra message the chance to show
    poll_all()
    for name in patterns:
        got = [t for t in heard[name] if not t.startswith("probe/") and t != "end"]
        assert got == expected[name], name
    assert expected["hash"] == ["site/b1/temp", "site/b2/temp", "site", "site/b1/temp/raw",
                                "site/"]
    for link in [sender, *links.values()]:
        link.close()
