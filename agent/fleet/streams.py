"""The fleet's JetStream streams and how long they keep what (docs/fleet.md "What is kept
where"): the site's SITE stream on its leaf node and the hub's SITE_<site> that sources it.

Created (or brought to this configuration) by whoever owns them: the uplink makes its site's
stream at start, the centre makes the hub's (`hearth uplink hub-streams`). Adding a stream that
exists updates it to this configuration, so both may run at every start.
"""

from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy,
                         ExternalStream, StorageType, StreamConfig, StreamSource)
from nats.js.errors import NotFoundError

from agent.fleet.subjects import (SITE_STREAM, hub_stream, site_domain,
                                  site_subjects)

DAY_S = 86400.0
SITE_MAX_AGE_S = 30 * DAY_S
"""A site keeps a month: a WAN outage of weeks still loses nothing, and the hub holds the rest."""
SITE_DUPLICATE_WINDOW_S = 600.0
"""How long JetStream remembers a Nats-Msg-Id: covers an uplink that restarts within ten
minutes and is sent again what it had taken but not yet acknowledged to the site broker."""
HUB_MAX_AGE_S = 400 * DAY_S
"""The hub keeps a year and a month, so a year's bill can be made again from the raw messages."""
HUB_REPLICAS = 3


def site_stream_config(site: str, max_bytes: int) -> StreamConfig:
    """File storage, oldest dropped first when full: a site that cannot reach the hub for longer
    than its disk holds loses its oldest telemetry, never its newest events."""
    return StreamConfig(name=SITE_STREAM, subjects=[site_subjects(site)],
                        storage=StorageType.FILE, num_replicas=1, max_age=SITE_MAX_AGE_S,
                        max_bytes=max_bytes, discard=DiscardPolicy.OLD,
                        duplicate_window=SITE_DUPLICATE_WINDOW_S)


def source_deliver_prefix(site: str) -> str:
    """Where the site's stream delivers to the hub's source consumer: a subject of the site's
    own, so sites never share one."""
    return f"deliver.{site}"


def hub_stream_config(site: str) -> StreamConfig:
    """No subjects of its own (a message published at the hub does not enter it): it only
    sources the site's stream through the site's JetStream domain across the leaf connection,
    and the source resumes from the last sequence it has after any outage."""
    source = StreamSource(name=SITE_STREAM, external=ExternalStream(
        api=f"$JS.{site_domain(site)}.API", deliver=source_deliver_prefix(site)))
    return StreamConfig(name=hub_stream(site), subjects=[], sources=[source],
                        storage=StorageType.FILE, num_replicas=HUB_REPLICAS,
                        max_age=HUB_MAX_AGE_S, discard=DiscardPolicy.OLD,
                        duplicate_window=SITE_DUPLICATE_WINDOW_S)


async def ensure_stream(jetstream, config: StreamConfig) -> None:
    """Add the stream, or update it to `config` when it exists. Not an add of an existing
    stream: JetStream counts its storage reservation a second time for that and refuses it."""
    try:
        await jetstream.stream_info(config.name)
    except NotFoundError:
        await jetstream.add_stream(config)
    else:
        await jetstream.update_stream(config)


async def resumed_consumer(jetstream, site: str, name: str, after_seq: int, subjects: str):
    """A pull subscription on the durable consumer `name` of the site's hub stream, made again
    to start at the message after `after_seq` (the last one its owner has on disk): the
    centre's consumers keep their position in their own files, so a crash anywhere replays
    exactly what those files do not hold. Acknowledged up to a position (AckPolicy ALL), so
    the hub's `consumer info` shows how far each one is."""
    stream = hub_stream(site)
    try:
        await jetstream.delete_consumer(stream, name)
    except NotFoundError:
        pass
    await jetstream.add_consumer(stream, ConsumerConfig(
        durable_name=name, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after_seq + 1, ack_policy=AckPolicy.ALL, filter_subject=subjects,
        max_ack_pending=-1))
    return await jetstream.pull_subscribe_bind(name, stream)
