"""Names shared by a site's uplink and the centre's consumers: NATS subjects for the site
broker's MQTT topics, the JetStream domains and the streams (docs/fleet.md "Names").

One module, so the uplink that writes and every consumer that reads cannot disagree.
"""

from agent.mqtt.topics import ROOT

SUBJECT_ROOT = "hearth"
"""`hearth/v1/<site>/<rest>` becomes `hearth.<site>.<rest with / as .>`; the payload is the MQTT
payload's bytes unchanged (its envelope carries the schema version)."""
SITE_STREAM = "SITE"
"""The site's own stream, on its leaf node, in the JetStream domain named after the site."""
HUB_DOMAIN = "hub"
"""The JetStream domain of the centre's three-server cluster."""
HUB_STREAM_PREFIX = "SITE_"
MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream drops a message whose id it saw within the stream's duplicate window."""
FORBIDDEN_IN_TOKEN = frozenset(". *>\t\r\n")
"""Characters a NATS subject token cannot hold (a separator, the wildcards, white space)."""


def site_domain(site: str) -> str:
    """The site's JetStream domain: its name, which Hearth's name rule keeps free of dots."""
    return site


def hub_stream(site: str) -> str:
    """The hub's stream that sources `site`'s SITE stream (stream names take no '-' here by
    convention, so a name reads the same as an environment variable or a metric label)."""
    return HUB_STREAM_PREFIX + site.replace("-", "_")


def site_subjects(site: str) -> str:
    """Every subject of one site: what its SITE stream holds."""
    return f"{SUBJECT_ROOT}.{site}.>"


def subject_for_topic(topic: str) -> str | None:
    """The NATS subject for a Hearth MQTT topic, or None when the topic is not under
    `hearth/v1/<site>/` or a level cannot be a subject token (empty, a dot, a wildcard, white
    space): such a message is not passed on rather than passed on somewhere else."""
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        return None
    levels = topic[len(prefix):].split("/")
    if len(levels) < 2:
        return None
    for level in levels:
        if not level or FORBIDDEN_IN_TOKEN.intersection(level):
            return None
    return ".".join((SUBJECT_ROOT, *levels))


def topic_for_subject(subject: str) -> str:
    """The MQTT topic a subject came from (the inverse of subject_for_topic)."""
    tokens = subject.split(".")
    if tokens[0] != SUBJECT_ROOT or len(tokens) < 3:
        raise ValueError(f"subject {subject!r} is not under {SUBJECT_ROOT}.<site>.")
    return "/".join((ROOT, *tokens[1:]))


def message_id(boot: str, seq: int, topic: str) -> str:
    """The Nats-Msg-Id of one envelope: the sender's boot, its sequence on that topic, the
    topic. A re-sent message (QoS 1 again, the uplink restarted) gets the same id."""
    return f"{boot}:{seq}:{topic}"
