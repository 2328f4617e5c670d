"""The leader's Prometheus endpoint: served over HTTP and accepted by `promtool check metrics`."""

import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings
from agent.metrics import MetricsServer, exposition


class RecordingLink:
    """Stands in for agent.mqtt.link.Link where no broker is needed: it keeps what is published."""

    def __init__(self):
        self.published = []
        self.subscriptions = []

    def publish(self, topic, payload, qos=0, retain=False, keep=None):
        self.published.append((topic, payload, qos, retain))
        return payload

    def subscribe(self, pattern, handler):
        self.subscriptions.append((pattern, handler))

    def poll(self, timeout_s=0.0):
        return 0


class Message:
    def __init__(self, topic, payload):
        self.topic, self.payload = topic, payload

    def data(self):
        import json
        return json.loads(self.payload)

    def text(self):
        return self.payload.decode()


def leader_with_boards():
    now = [100.0]
    role = LeaderRole("s1", "m1", RecordingLink(), lambda: now[0],
                      LeaderSettings(period_s=5, budget_w=10.0, flow_min_l_per_min=2.0,
                                     oil_max_c=70.0),
                      lambda: ModuleReadings(40.0, 40.2, 6.0, 50.0))
    for board, seq in (("b1", 1), ("b2", 1), ('we"ird\\', 1)):
        role.tracker.on_status(now[0], board, "online")
        role.tracker.on_state(now[0], board, {
            "boot": "x", "seq": seq, "mode": "NORMAL", "faults": [], "min_w": 2.0, "max_w": 6.5,
            "power_w": 4.0, "energy_electric_wh": 1.5, "energy_heat_wh": 1.2})
        role.ledger.board_sample(board, "x", {"energy_electric_wh": 1.0, "energy_heat_wh": 1.0},
                                 0.0)
        role.ledger.board_sample(board, "x", {"energy_electric_wh": 1.5, "energy_heat_wh": 1.2},
                                 3600.0)
    role.tick(now[0])
    return role


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, ("promtool is missing: install Debian's `prometheus` package "
                      "(scripts/setup-dev does)")
    return subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)


def test_exposition_passes_promtool_over_http():
    role = leader_with_boards()
    server = MetricsServer(lambda: exposition("s1", "m1", role.snapshot), "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.close()
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert 'hearth_module_power_watts{site="s1",module="m1"} 12.0' in text
    assert 'hearth_board_electric_energy_joules_total{site="s1",module="m1",board="b1"} 1800.0' \
        in text
    assert 'board="we\\"ird\\\\"' in text
    assert 'hearth_module_interlock_active{site="s1",module="m1"} 0' in text


def test_promtool_catches_a_broken_exposition():
    """The check above can fail: promtool rejects a counter without _total and a bad line."""
    result = promtool_check("# TYPE bad_counter counter\nbad_counter 1\nnot a metric line\n")
    assert result.returncode != 0


def test_unknown_values_are_left_out():
    text = exposition("s1", "m1", {"power_w": None, "budget_w": 5.0, "boards": {
        "b1": {"status": "offline", "power_w": None, "setpoint_w": None}}})
    assert "hearth_module_power_watts" not in text
    assert "hearth_board_power_watts" not in text
    assert 'hearth_board_status{site="s1",module="m1",board="b1",status="offline"} 1' in text
    assert promtool_check(text).returncode == 0
