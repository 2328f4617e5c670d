"""Shared fixtures: a RAM-backed directory for simulated sysfs trees, and real Mosquitto brokers."""

from pathlib import Path

import pytest

from agent.sim.scratch import scratch_directory


@pytest.fixture
def sim_dir():
    """Like tmp_path, but on tmpfs: simulated boards rewrite their sysfs files every period."""
    with scratch_directory("hearth-test-") as directory:
        yield Path(directory)


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, owned by one test.

    `config` is the whole mosquitto.conf with `{port}` and `{dir}` filled in (default: an
    anonymous listener without persistence). stop() and start() again keep the port, which is
    how a test takes the broker away and brings it back.
    """

    DEFAULT_CONFIG = ("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      "log_dest file {dir}/mosquitto.log\nlog_type error\nlog_type warning\n"
                      "log_type notice\n")

    def __init__(self, directory: Path, config: str | None = None):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.host = "127.0.0.1"
        self.directory = directory
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text((config or self.DEFAULT_CONFIG).format(
            port=self.port, dir=directory))
        self.process = None

    def start(self, timeout_s: float = 10.0) -> "Mosquitto":
        import socket
        import subprocess
        import time

        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config_path)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: "
                                   f"{self.process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def mosquitto(tmp_path_factory):
    """Factory: mosquitto() starts a broker (optionally mosquitto(config=...)); all are stopped
    when the test ends."""
    brokers: list[Mosquitto] = []

    def start(config: str | None = None) -> Mosquitto:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), config)
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def builtin_broker():
    """The built-in broker (agent/sim/broker.py) on a free loopback port, stopped at the end:
    the one `hearth sim` uses; it has `host` and `port` like a Mosquitto above."""
    from agent.sim.broker import Broker

    with Broker() as broker:
        yield broker
