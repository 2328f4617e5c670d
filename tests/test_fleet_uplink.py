"""The fleet uplink (issue 19): MQTT topics into NATS subjects, the site's leaf node and the
hub's cluster on the generated configuration, and nothing lost or doubled across outages."""

import pytest

from agent.fleet import subjects


@pytest.mark.parametrize("topic, subject", [
    ("hearth/v1/maple-school/m1/b01/event", "hearth.maple-school.m1.b01.event"),
    ("hearth/v1/maple-school/m1/leader/state", "hearth.maple-school.m1.leader.state"),
    ("hearth/v1/maple-school/site/state", "hearth.maple-school.site.state"),
])
def test_topics_become_subjects_and_back(topic, subject):
    assert subjects.subject_for_topic(topic) == subject
    assert subjects.topic_for_subject(subject) == topic


@pytest.mark.parametrize("topic", [
    "homeassistant/sensor/x/config", "hearth/v1/maple-school", "hearth/v1/maple-school//event",
    "hearth/v1/maple-school/m1/b.01/event", "hearth/v1/maple-school/m 1/b01/event",
    "hearth/v1/maple-school/m1/*/event", "hearth/v1/maple-school/m1/>/event",
])
def test_a_topic_no_subject_can_hold_is_refused(topic):
    assert subjects.subject_for_topic(topic) is None


def test_stream_names_and_message_ids():
    assert subjects.hub_stream("maple-school") == "SITE_maple_school"
    assert subjects.site_domain("maple-school") == "maple-school"
    assert subjects.message_id("b00t", 7, "hearth/v1/s/m1/b01/event") == \
        "b00t:7:hearth/v1/s/m1/b01/event"
