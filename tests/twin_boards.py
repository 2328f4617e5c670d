"""Two simulated boards flashed with one identity, on a Mosquitto running the configuration
`hearth broker-config` writes: shared by the twin tests and the fault matrix's row."""

import time

from test_broker_config import Mosquitto, generated_site, login

from agent.mqtt.board_link import BoardConnection, connect_board
from agent.mqtt.link import DUPLICATE_IDENTITY, LinkSettings
from agent.mqtt.topics import BoardTopics
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

EPOCH = 1_790_000_000.0
RECONNECT_MAX_S = 4
"""The twins' backoff ceiling: short, so that a test sees several reconnects after the
report (a board's default is 60 s)."""


def generated_broker(tmp_path) -> tuple[dict, Mosquitto]:
    """The account of board m1.b01 and a started Mosquitto with the generated config."""
    out, _, broker = generated_site(tmp_path)
    return login(out, "m1.b01"), broker


def twin_settings(broker: Mosquitto, account: dict) -> LinkSettings:
    return LinkSettings("127.0.0.1", broker.port, keepalive_s=5, username=account["username"],
                        password=account["password"], reconnect_min_s=1,
                        reconnect_max_s=RECONNECT_MAX_S)


class Twin:
    """A simulated board that believes it is maple-school/m1/b01, on its MQTT link."""

    def __init__(self, settings: LinkSettings, directory):
        self.clock = SimClock()
        self.sim = SimulatedAgent(directory, self.clock)
        self.events = []
        self.sim.agent.subscribe_events(self, self.events.append)
        self.board_link = connect_board(self.sim.agent, BoardConnection(
            settings, BoardTopics("maple-school", "m1", "b01"), directory / "outbox",
            lambda: EPOCH + self.clock()))
        self.link = self.board_link.link

    def duplicates(self) -> list:
        return [event for event in self.events if event.cause == DUPLICATE_IDENTITY]


def run_twins(twins, seconds: float, until=lambda: False, on_tick=None) -> None:
    """Step each twin one agent tick at a time (the link's poll delivers its findings) for
    `seconds` of wall time or until `until()`; `on_tick(twin, report)` sees every tick."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        for twin in twins:
            twin.sim.run_for(0.1, None if on_tick is None
                             else lambda report, twin=twin: on_tick(twin, report))
        time.sleep(0.05)
