"""The fleet's metrics at the centre: each site's leader states, from the hub's stream
SITE_<site>, as series in VictoriaMetrics, stamped with the senders' time (docs/fleet.md
"Metrics at the centre").

Why the stream and not each site's vmagent scraping or remote-writing: the stream already holds
every leader state once, in order, across WAN outages, each with the time it was sent; a
scrape-based path sees only what is current while the link is up and loses the outage.

Why the energy series follow the counters as the fleet ledger does (agent/site/energy.py): a
leader whose ledger restarts lower starts a new segment instead of a counter reset, so
`increase()` over a month in VictoriaMetrics is what the ledger bills.

Why each series only moves forward in time: a sample older than its series' last (a leader's
clock stepped back) would land before samples with higher totals and read as a counter reset;
its energy is carried by the next sample instead. Two states of one site sent in the same
millisecond give the site's series one sample, not two values at one time.

Why a replay is harmless: a batch goes to VictoriaMetrics, then the feed's position and
follower state are written atomically, then the consumer is acknowledged. After a crash
between the two, the feed starts again at the saved position with the saved state, so it sends
the very same samples again, and a VictoriaMetrics that deduplicates
(agent/fleet/victoria.py) keeps one of each.
"""

import asyncio
import copy
import math
import re
from typing import Any, NamedTuple

from nats.errors import TimeoutError as NatsTimeoutError

from agent.errors import HearthError, MessageError
from agent.fleet.streams import resumed_consumer
from agent.fleet.subjects import SUBJECT_ROOT
from agent.fleet.victoria import VictoriaMetrics
from agent.mqtt import envelope
from agent.mqtt.envelope import finite_number
from agent.mqtt.topics import LEADER
from agent.persist import StateStore
from agent.safety.supervisor import Mode
from agent.site.energy import KEYS, SiteEnergy

CONSUMER = "metrics"
"""The durable consumer's name on every SITE_<site> stream."""
STATE_VERSION = 1
FETCH_BATCH = 1000
"""Messages per import: a day's backlog of a two-module site goes in a few requests."""
JOULES_PER_WH = 3600.0
SENT_S_MAX = 4102444800.0
"""2100-01-01: a later `ts` is a broken clock, not a time to file a sample under."""
MODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
BOARDS_MAX = 100000
BOARD_MODES = tuple(mode.value for mode in Mode)
"""Shown for every module, 0 where no board is in it, so a mode that empties reads 0."""


class Family(NamedTuple):
    name: str
    kind: str
    help: str


MODULE_ENERGY = {"energy_electric_wh": Family(
    "hearth_fleet_module_electric_energy_joules_total", "counter",
    "Electric energy of the module's boards (the leader's ledger, followed across restarts)."),
    "energy_heat_wh": Family(
    "hearth_fleet_module_heat_energy_joules_total", "counter",
    "Heat energy of the module's boards (the leader's ledger, followed across restarts).")}
MODULE_GAUGES = {"power_w": Family(
    "hearth_fleet_module_power_watts", "gauge", "Electric power drawn by the online boards."),
    "heat_w": Family(
    "hearth_fleet_module_heat_watts", "gauge", "Heat to water measured by the module meter."),
    "efficiency": Family(
    "hearth_fleet_module_recovery_ratio", "gauge",
    "Heat to water over electric power (smoothed), as the leader reports it.")}
MODULE_BOARDS = Family("hearth_fleet_module_boards", "gauge",
                       "Online boards of the module in each mode.")
SITE_ENERGY = {"energy_electric_wh": Family(
    "hearth_fleet_site_electric_energy_joules_total", "counter",
    "Electric energy of the site's boards: the sum over its modules, gone ones included."),
    "energy_heat_wh": Family(
    "hearth_fleet_site_heat_energy_joules_total", "counter",
    "Heat energy of the site's boards: the sum over its modules, gone ones included.")}
FAMILIES = (*MODULE_ENERGY.values(), *MODULE_GAUGES.values(), MODULE_BOARDS,
            *SITE_ENERGY.values())


class Sample(NamedTuple):
    family: Family
    labels: str
    value: float
    ms: int


class FeedStateDamaged(HearthError, ValueError):
    """A site's feed state cannot be used; that site's metrics stop until it is dealt with."""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def leader_states(site: str) -> str:
    """The subjects the feed reads: every module's `leader/state` of one site."""
    return f"{SUBJECT_ROOT}.{site}.*.{LEADER}.state"


def exposition(samples: list[Sample]) -> str:
    """Prometheus' text format with a timestamp on every sample, one block per family."""
    lines: list[str] = []
    for family in FAMILIES:
        chosen = [sample for sample in samples if sample.family is family]
        if chosen:
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
            lines += [f"{family.name}{{{sample.labels}}} {sample.value!r} {sample.ms}"
                      for sample in chosen]
    return "\n".join(lines) + "\n"


def _boards_by_mode(value: Any) -> dict[str, int] | None:
    """The leader's `boards_by_mode`, or None when any entry cannot be shown as a series."""
    if not isinstance(value, dict):
        return None
    counts = {}
    for mode, count in value.items():
        if (not isinstance(mode, str) or not MODE_NAME.fullmatch(mode) or isinstance(count, bool)
                or not isinstance(count, int) or not 0 <= count <= BOARDS_MAX):
            return None
        counts[mode] = count
    return counts


class SiteSeries:
    """One site's leader states, in stream order, as samples; no I/O."""

    def __init__(self, site: str):
        self.site = site
        self.energy = SiteEnergy()
        self.hub_seq = 0
        """The stream sequence of the last message taken."""
        self.module_ms: dict[str, int] = {}
        """Each module's last sample time: its series only move forward."""
        self.site_ms = -1
        self.rejected_messages = 0

    @classmethod
    def resume(cls, site: str, state: dict[str, Any]) -> "SiteSeries":
        """Carry on from a saved state (ValueError naming what it cannot use)."""
        series = cls(site)
        hub_seq, site_ms, module_ms = (state.get("hub_seq"), state.get("site_ms"),
                                       state.get("module_ms"))
        if not isinstance(hub_seq, int) or hub_seq < 0:
            raise ValueError(f"hub_seq is {hub_seq!r}, expected a stream sequence")
        if not isinstance(site_ms, int) or not isinstance(module_ms, dict) or not all(
                isinstance(ms, int) for ms in module_ms.values()):
            raise ValueError("site_ms or module_ms is not a time in milliseconds")
        if not isinstance(state.get("energy"), dict):
            raise ValueError("energy is not an object")
        series.energy = SiteEnergy.from_payload(state["energy"])
        series.hub_seq, series.site_ms, series.module_ms = hub_seq, site_ms, dict(module_ms)
        return series

    def state(self) -> dict[str, Any]:
        """What a restart resumes from: position, counters' follower state, series' times."""
        return {"hub_seq": self.hub_seq, "energy": copy.deepcopy(self.energy.to_payload()),
                "module_ms": dict(self.module_ms), "site_ms": self.site_ms}

    def offer(self, subject: str, payload: bytes, hub_seq: int) -> list[Sample]:
        """Take one message of the site's stream: the samples it adds (none when it is not a
        usable leader state, which then changes nothing but the position)."""
        self.hub_seq = hub_seq
        tokens = subject.split(".")
        if len(tokens) != 5 or tokens[1] != self.site or tokens[3:] != [LEADER, "state"]:
            return []
        try:
            data = envelope.decode(payload)
        except MessageError:
            data = None
        sent_s = finite_number(data.get("ts")) if data is not None else None
        if sent_s is None or not 0.0 < sent_s < SENT_S_MAX:
            self.rejected_messages += 1
            return []
        module = tokens[2]
        self.energy.offer(module, data)
        ms = math.floor(sent_s * 1000.0)
        samples = []
        if ms > self.module_ms.get(module, -1):
            self.module_ms[module] = ms
            samples += self._module_samples(module, data, ms)
        if ms > self.site_ms:
            self.site_ms = ms
            labels = f'site="{_label(self.site)}"'
            samples += [Sample(SITE_ENERGY[key], labels, total_wh * JOULES_PER_WH, ms)
                        for key, total_wh in self.energy.totals_wh().items()
                        if any(key in entry["total_wh"] for entry in self.energy.modules.values())]
        return samples

    def _module_samples(self, module: str, data: dict[str, Any], ms: int) -> list[Sample]:
        labels = f'site="{_label(self.site)}",module="{_label(module)}"'
        entry = self.energy.modules.get(module, {"total_wh": {}})
        samples = [Sample(MODULE_ENERGY[key], labels, entry["total_wh"][key] * JOULES_PER_WH, ms)
                   for key in KEYS if key in entry["total_wh"]]
        for field, family in MODULE_GAUGES.items():
            value = finite_number(data.get(field))
            if value is not None:
                samples.append(Sample(family, labels, value, ms))
        counts = _boards_by_mode(data.get("boards_by_mode"))
        if counts is not None:
            modes = BOARD_MODES + tuple(sorted(set(counts) - set(BOARD_MODES)))
            samples += [Sample(MODULE_BOARDS, f'{labels},mode="{mode}"',
                               float(counts.get(mode, 0)), ms) for mode in modes]
        return samples


class Batch(NamedTuple):
    """What one fetch gave: its samples as text, the state after it, its last message."""

    text: str
    samples: int
    state: dict[str, Any]
    last: Any


class MetricsFeed:
    """The durable pull consumer `metrics` on one site's hub stream, feeding VictoriaMetrics.
    Its position and follower state live in `<site>.json` of `store`."""

    def __init__(self, jetstream, site: str, store: StateStore, victoria: VictoriaMetrics,
                 fetch_timeout_s: float = 1.0):
        self.jetstream = jetstream
        self.site = site
        self.store = store
        self.victoria = victoria
        self.fetch_timeout_s = fetch_timeout_s
        self.state_name = f"{site}.json"
        self.series = SiteSeries(site)
        self.subscription = None
        self.pending: Batch | None = None
        """A batch taken from the stream and not yet in VictoriaMetrics and the state file."""
        self.samples_sent = 0

    def resume(self) -> None:
        """Read the saved state; none means a first start, from the stream's beginning."""
        path = self.store.path(self.state_name)
        if not path.exists():
            return
        read = self.store.read(self.state_name, STATE_VERSION, {})
        problem = read.problem
        if problem is None:
            try:
                self.series = SiteSeries.resume(self.site, read.payload)
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            raise FeedStateDamaged(
                f"fleet metrics of {self.site}: state file {path} cannot be used ({problem}); "
                f"the site's metrics are not fed. Restore the file, or move it aside to feed "
                f"the site again from the start of its hub stream (VictoriaMetrics keeps one "
                f"copy of each sample sent again)")

    async def start(self) -> None:
        """Resume, then make the consumer again at the message after the saved position."""
        self.resume()
        self.subscription = await resumed_consumer(
            self.jetstream, self.site, CONSUMER, self.series.hub_seq, leader_states(self.site))

    async def pump(self, max_messages: int | None = None) -> int:
        """Take and deliver batches until none came for a fetch timeout (or `max_messages`):
        how many messages. A batch VictoriaMetrics did not take stays pending, and the next
        call sends it again first (MetricsStoreError meanwhile)."""
        taken = 0
        while True:
            if self.pending is None:
                if max_messages is not None and taken >= max_messages:
                    break
                batch = FETCH_BATCH if max_messages is None else min(FETCH_BATCH,
                                                                     max_messages - taken)
                try:
                    messages = await self.subscription.fetch(batch,
                                                             timeout=self.fetch_timeout_s)
                except (NatsTimeoutError, TimeoutError):
                    break
                samples = [sample for message in messages for sample in self.series.offer(
                    message.subject, message.data, message.metadata.sequence.stream)]
                self.pending = Batch(exposition(samples) if samples else "", len(samples),
                                     self.series.state(), messages[-1])
                taken += len(messages)
            await self._deliver()
        return taken

    async def _deliver(self) -> None:
        """VictoriaMetrics first, then the state file, then the acknowledgement."""
        batch = self.pending
        if batch.text:
            await asyncio.to_thread(self.victoria.import_text, batch.text)
        self.store.write(self.state_name, STATE_VERSION, batch.state)
        await batch.last.ack()
        self.pending = None
        self.samples_sent += batch.samples
