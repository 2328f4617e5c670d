"""Shared fixtures: a RAM-backed directory for simulated sysfs trees, and real Mosquitto brokers."""

from pathlib import Path

import pytest

from agent.sim.mosquitto import Mosquitto
from agent.sim.scratch import scratch_directory


@pytest.fixture
def sim_dir():
    """Like tmp_path, but on tmpfs: simulated boards rewrite their sysfs files every period."""
    with scratch_directory("hearth-test-") as directory:
        yield Path(directory)


@pytest.fixture
def mosquitto(tmp_path_factory):
    """Factory: mosquitto() starts a Mosquitto of the test's own on a free loopback port, the
    way the simulator does (agent/sim/mosquitto.py); mosquitto(persistence=True) keeps what it
    retained across stop() and start(). All are stopped when the test ends."""
    brokers: list[Mosquitto] = []

    def start(persistence: bool = False) -> Mosquitto:
        broker = Mosquitto.on_loopback(tmp_path_factory.mktemp("mosquitto"), persistence)
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.stop()
