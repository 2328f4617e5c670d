"""The leader's and the site's Prometheus endpoints: served over real HTTP (GET and HEAD) on the
address they are given, and accepted by `promtool check metrics` without a lint finding."""

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent import __version__
from agent.config import load_config
from agent.errors import ConfigValueError
from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings
from agent.metrics import (BOARD_MODES, BOARD_STATUSES, MetricsServer, exposition,
                           site_exposition, start_endpoint)
from agent.mqtt import envelope
from agent.site.role import SiteRole, SiteSettings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


class RecordingLink:
    """Stands in for agent.mqtt.link.Link where no broker is needed: it keeps what is published."""

    def __init__(self):
        self.published = []
        self.subscriptions = []

    def publish(self, topic, payload, qos=0, retain=False, keep=None):
        self.published.append((topic, payload, qos, retain))
        return payload

    def assert_retained(self, topic, payload):
        self.published.append((topic, payload, 1, True))

    def subscribe(self, pattern, handler):
        self.subscriptions.append((pattern, handler))

    def deliver(self, topic, payload):
        import paho.mqtt.client as paho  # only for its topic matcher, as the Link does

        for pattern, handler in self.subscriptions:
            if paho.topic_matches_sub(pattern, topic):
                handler(Message(topic, payload))

    def poll(self, timeout_s=0.0):
        return 0


class Message:
    def __init__(self, topic, payload):
        self.topic, self.payload = topic, payload

    def data(self):
        return envelope.decode(self.payload)

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
    role.tracker.on_status(now[0], "b2", "offline")
    role.tracker.on_status(now[0], "b3", "online")  # online, but no state yet: mode unknown
    role.tick(now[0])
    return role


def site_with_two_modules():
    """A real site role that has heard two leaders and sent its budgets."""
    now = [1000.0]
    link = RecordingLink()
    role = SiteRole("s1", link, lambda: now[0], SiteSettings())
    role.start()
    for module, power_w, wh in (("m1", 40.0, 2.0), ("m2", 20.0, 1.0)):
        link.deliver(f"hearth/v1/s1/{module}/leader/status", b"online")
        link.deliver(f"hearth/v1/s1/{module}/leader/state", json.dumps({
            "v": 1, "boot": "x", "seq": 1, "ts": 0.0, "capacity_w": 60.0, "power_w": power_w,
            "heat_w": power_w * 0.9, "energy_electric_wh": wh, "energy_heat_wh": wh * 0.9,
            "interlock": {"active": False}}).encode())
    link.deliver("hearth/v1/s1/site/demand", json.dumps({
        "v": 1, "boot": "y", "seq": 1, "ts": 0.0, "demand_w": 90.0}).encode())
    role.tick(now[0])
    return role


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, ("promtool is missing: install Debian's `prometheus` package "
                      "(scripts/setup-dev does)")
    return subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=30)


def assert_promtool_clean(text: str) -> None:
    """Exit 0 and not one lint finding (promtool prints findings and still exits 0 for some)."""
    result = promtool_check(text)
    findings = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not findings.strip(), findings


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


def samples(text: str, name: str) -> dict[str, float]:
    """name's samples as {label text: value}."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(re.escape(name) + r"\{(.*)\} (\S+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_leader_endpoint_passes_promtool_over_http():
    role = leader_with_boards()
    server = MetricsServer(lambda: exposition("s1", "m1", role.snapshot), "127.0.0.1", 0).start()
    try:
        status, headers, body = fetch(f"http://127.0.0.1:{server.port}/metrics")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    finally:
        server.close()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert_promtool_clean(text)
    assert 'hearth_module_power_watts{site="s1",module="m1"} 8.0' in text
    assert 'hearth_board_electric_energy_joules_total{site="s1",module="m1",board="b1"} 1800.0' \
        in text
    assert 'board="we\\"ird\\\\"' in text
    assert 'hearth_module_interlock_active{site="s1",module="m1"} 0' in text
    assert f'hearth_build_info{{version="{__version__}"}} 1' in text


def test_site_endpoint_passes_promtool_over_http():
    role = site_with_two_modules()
    server = MetricsServer(lambda: site_exposition("s1", role.snapshot), "127.0.0.1", 0).start()
    try:
        status, headers, body = fetch(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert_promtool_clean(text)
    site = 'site="s1"'
    assert samples(text, "hearth_site_demand_watts") == {site: 90.0}
    assert samples(text, "hearth_site_power_watts") == {site: 60.0}
    assert samples(text, "hearth_site_heat_watts") == {site: pytest.approx(54.0)}
    assert samples(text, "hearth_site_capacity_watts") == {site: 120.0}
    assert samples(text, "hearth_site_modules_available") == {site: 2}
    assert samples(text, "hearth_site_target_celsius") == {site: 55.0}
    assert samples(text, "hearth_site_electric_energy_joules_total") == {site: 3.0 * 3600}
    assert samples(text, "hearth_site_heat_energy_joules_total") == {
        site: pytest.approx(2.7 * 3600)}
    assert samples(text, "hearth_site_module_budget_watts") == {
        f'{site},module="m1"': 45.0, f'{site},module="m2"': 45.0}
    assert samples(text, "hearth_site_demand_source") == {
        f'{site},source="external"': 1, f'{site},source="temperature"': 0,
        f'{site},source="none"': 0}
    assert samples(text, "hearth_site_mode") == {
        f'{site},mode="auto"': 1, f'{site},mode="comfort"': 0, f'{site},mode="eco"': 0,
        f'{site},mode="off"': 0}
    assert f'hearth_build_info{{version="{__version__}"}} 1' in text


def test_site_endpoint_before_the_first_period_is_valid():
    """Scraped before the site has decided anything: no made-up zeros, still a valid page."""
    text = site_exposition("s1", {})
    assert "hearth_site_demand_watts" not in text
    assert_promtool_clean(text)


def test_head_is_answered_with_the_headers_and_no_body():
    role = leader_with_boards()
    server = MetricsServer(lambda: exposition("s1", "m1", role.snapshot), "127.0.0.1", 0).start()
    try:
        _, _, get_body = fetch(f"http://127.0.0.1:{server.port}/metrics")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("HEAD", "/metrics")
        response = connection.getresponse()
        head_body = response.read()
        connection.close()
    finally:
        server.close()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert int(response.getheader("Content-Length")) == len(get_body)
    assert head_body == b""


def test_the_endpoint_listens_only_on_its_address():
    """Bound to 127.0.0.2 (loopback too, on Linux), it answers there and not on 127.0.0.1."""
    server = MetricsServer(lambda: "", "127.0.0.2", 0).start()
    try:
        status, _, _ = fetch(f"http://127.0.0.2:{server.port}/metrics")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.close()
    assert status == 200


def test_an_ipv6_address_is_served():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    server = MetricsServer(lambda: "", "::1", 0).start()
    try:
        status, _, _ = fetch(f"http://[::1]:{server.port}/metrics")
    finally:
        server.close()
    assert status == 200
    with pytest.raises(ConfigValueError, match=r"on \[:::\]:9105 "):
        start_endpoint(lambda: "", ":::", 9105, "[site] metrics_port")


def test_the_default_address_is_loopback():
    server = MetricsServer(lambda: "", port=0)
    try:
        assert server.server.server_address[0] == "127.0.0.1"
    finally:
        server.close()


def test_an_endpoint_that_cannot_listen_is_an_operator_message():
    taken = MetricsServer(lambda: "", "127.0.0.1", 0).start()
    try:
        with pytest.raises(ConfigValueError) as error:
            start_endpoint(lambda: "", "127.0.0.1", taken.port, "[leader] metrics_port")
    finally:
        taken.close()
    message = str(error.value)
    assert f"127.0.0.1:{taken.port}" in message and "[leader] metrics_port" in message
    assert "0 for none" in message
    assert start_endpoint(lambda: "", "127.0.0.1", 0, "[leader] metrics_port") is None


def test_board_mode_and_status_are_state_sets_that_sum_to_one():
    text = exposition("s1", "m1", leader_with_boards().snapshot)
    boards = ("b1", "b2", "b3", 'we\\"ird\\\\')
    for family, label, values in (("hearth_board_mode", "mode", BOARD_MODES),
                                  ("hearth_board_status", "status", BOARD_STATUSES)):
        found = samples(text, family)
        for board in boards:
            base = f'site="s1",module="m1",board="{board}"'
            per_board = {key: value for key, value in found.items()
                         if key.startswith(base + ",")}
            assert set(per_board) == {f'{base},{label}="{value}"' for value in values}
            assert sum(per_board.values()) == 1, (board, per_board)
    base = 'site="s1",module="m1",board='
    assert samples(text, "hearth_board_status")[f'{base}"b2",status="offline"'] == 1
    assert samples(text, "hearth_board_mode")[f'{base}"b1",mode="NORMAL"'] == 1
    assert samples(text, "hearth_board_mode")[f'{base}"b3",mode="unknown"'] == 1
    assert_promtool_clean(text)


def test_a_status_outside_the_known_set_is_shown_not_dropped():
    text = exposition("s1", "m1", {"boards": {"b1": {"status": "rebooting", "mode": "NORMAL"}}})
    found = samples(text, "hearth_board_status")
    assert found['site="s1",module="m1",board="b1",status="rebooting"'] == 1
    assert sum(found.values()) == 1


def test_flow_is_in_litres_per_second():
    text = exposition("s1", "m1", {"flow_l_per_min": 6.0})
    assert samples(text, "hearth_module_flow_litres_per_second") == {
        'site="s1",module="m1"': pytest.approx(0.1)}
    assert "minute" not in text


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
    assert_promtool_clean(text)


def test_every_family_is_documented():
    text = (exposition("s1", "m1", leader_with_boards().snapshot)
            + site_exposition("s1", site_with_two_modules().snapshot))
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    documented = DOCS.read_text(encoding="utf-8")
    assert [name for name in sorted(families) if f"`{name}`" not in documented] == []


# -- the [leader] and [site] keys, and the endpoints of `hearth leader` and `hearth site` -------

ROLE_CONFIG = """board_type = "oil-carrier"
[[sensor]]
name = "water_in"
id = "28-0316a2795eff"
[[sensor]]
name = "water_out"
id = "28-0316a27f1c2a"
[identity]
site = "s1"
module = "m1"
board = "b01"
"""


def test_the_endpoints_listen_on_loopback_unless_configured(tmp_path):
    path = tmp_path / "hearth.toml"
    path.write_text(ROLE_CONFIG + "[leader]\n[site]\n")
    config = load_config(path)
    assert (config.leader.metrics_address, config.leader.metrics_port) == ("127.0.0.1", 9105)
    assert (config.site.metrics_address, config.site.metrics_port) == ("127.0.0.1", 9106)
    path.write_text(ROLE_CONFIG + '[leader]\nmetrics_address = "0.0.0.0"\n'
                    '[site]\nmetrics_address = "::"\n')
    config = load_config(path)
    assert (config.leader.metrics_address, config.site.metrics_address) == ("0.0.0.0", "::")


@pytest.mark.parametrize("value", ["localhost", "256.0.0.1", "10.0.0", ""])
def test_a_metrics_address_that_is_not_an_ip_address_is_refused(tmp_path, value):
    path = tmp_path / "hearth.toml"
    path.write_text(ROLE_CONFIG + f'[site]\nmetrics_address = "{value}"\n')
    with pytest.raises(ConfigValueError) as error:
        load_config(path)
    assert f'site.metrics_address = "{value}"' in str(error.value)


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def stopped(process: subprocess.Popen, timeout_s: float = 20) -> int:
    """SIGTERM, then the exit status. A role that does not stop in time is made to dump every
    thread's stack (faulthandler, on SIGABRT) into its output, so the failure says where it
    hung."""
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=10)
        raise AssertionError(f"the role did not stop within {timeout_s} s of SIGTERM; its "
                             f"output and stacks:\n{process.stdout.read().decode()}") from None


def scrape_when(url: str, family: str, process: subprocess.Popen) -> str:
    """The endpoint's page once it shows `family`: the role has run its first period."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()
        try:
            _, _, body = fetch(url)
            if f"\n{family}{{" in body.decode():
                return body.decode()
        except urllib.error.URLError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never showed {family}")


@pytest.mark.parametrize("command, section, family", [
    ("leader", "[leader]\nperiod_s = 1.0\n", "hearth_module_budget_watts"),
    ("site", "[site]\nperiod_s = 1.0\n", "hearth_site_target_celsius"),
])
def test_the_command_serves_its_endpoint_on_the_configured_address(tmp_path, mosquitto, command,
                                                                  section, family):
    broker = mosquitto()
    port = free_port("127.0.0.2")
    config = tmp_path / "hearth.toml"
    config.write_text(ROLE_CONFIG + f'[mqtt]\nbrokers = ["{broker.host}:{broker.port}"]\n'
                      + section + f'metrics_address = "127.0.0.2"\nmetrics_port = {port}\n')
    process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "agent", command,
                                "--config", str(config), "--state-dir", str(tmp_path / "state")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.2:{port}/metrics"
    try:
        text = scrape_when(url, family, process)
        head_status, head_headers, head_body = fetch(url, "HEAD")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        assert stopped(process) == 0, process.stdout.read().decode()
    assert_promtool_clean(text)
    assert f'hearth_build_info{{version="{__version__}"}} 1' in text
    assert (head_status, head_body) == (200, b"")
    assert int(head_headers["Content-Length"]) > 0
