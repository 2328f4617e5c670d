"""The board's updater: the simulated slots a simulated module updates with, RAUC's command
lines, and the update state machine through every outcome on a real Mosquitto."""

import hashlib
import http.server
import re
import threading

import pytest

from agent.errors import UpdateError, UpdateRefusedError
from agent.update.slots import Booted, Bundle, SimulatedSlots

BUNDLE = bytes(range(256)) * 4000  # 1 MB: several Range requests of the default chunk


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves BUNDLE at any path, with Range support unless the server says otherwise; counts
    the Range requests it answered."""

    def do_GET(self):
        server = self.server
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if match is None or not server.ranges:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BUNDLE)))
            self.end_headers()
            try:
                self.wfile.write(BUNDLE)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the board hung up on a 200, as it should
            return
        first, last = int(match[1]), min(int(match[2]), len(BUNDLE) - 1)
        server.range_requests += 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(BUNDLE)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self.wfile.write(BUNDLE[first:last + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def bundle_server():
    """Factory: a local HTTP server for BUNDLE; ranges=False answers every request with 200."""
    servers = []

    def start(ranges=True):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        server.ranges, server.range_requests = ranges, 0
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/hearth-1.2.0.raucb"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_simulated_slots_stream_the_bundle_in_ranges_and_try_it_once(bundle_server):
    server, url = bundle_server()
    boots, progress = [], []
    slots = SimulatedSlots("1.1.0", on_boot=lambda booted, runs: boots.append((booted, runs)))
    slots.install(Bundle(url, "1.2.0", hashlib.sha256(BUNDLE).hexdigest(), len(BUNDLE)),
                  progress.append, allow_downgrade=False)
    assert slots.bundle_bytes["B"] == BUNDLE
    assert server.range_requests == 4 and progress[-1] == 100 and progress == sorted(progress)
    assert slots.other().version == "1.2.0" and slots.booted() == Booted("A", False, "1.1.0")
    slots.reboot_to_trial()
    assert boots == [(Booted("B", True, "1.2.0"), True)]
    slots.power_cut()  # no verdict: the firmware boots the committed slot again
    assert boots[-1] == (Booted("A", False, "1.1.0"), True)


def test_simulated_slots_commit_only_what_was_marked_good(bundle_server):
    _, url = bundle_server()
    slots = SimulatedSlots("1.1.0")
    slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    slots.reboot_to_trial()
    slots.mark_good()
    slots.reboot()
    assert slots.booted() == Booted("B", False, "1.2.0")
    assert slots.other().version == "1.1.0"


@pytest.mark.parametrize("bundle, words", [
    (Bundle("URL", "1.2.0", sha256="0" * 64), "has sha256"),
    (Bundle("URL", "1.2.0", size_bytes=5), "the site announced 5"),
])
def test_simulated_slots_refuse_a_bundle_that_is_not_the_announced_one(bundle_server, bundle,
                                                                       words):
    _, url = bundle_server()
    slots = SimulatedSlots("1.1.0")
    with pytest.raises(UpdateError, match=words):
        slots.install(Bundle(url, bundle.version, bundle.sha256, bundle.size_bytes),
                      lambda pct: None, allow_downgrade=False)
    assert slots.other().version is None and slots.trial is None


def test_simulated_slots_need_range_support_and_refuse_downgrades(bundle_server):
    _, url = bundle_server(ranges=False)
    slots = SimulatedSlots("1.1.0")
    with pytest.raises(UpdateError, match="answered 200 to a Range request"):
        slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    with pytest.raises(UpdateRefusedError, match="older than the installed 1.1.0"):
        slots.install(Bundle(url, "1.0.0"), lambda pct: None, allow_downgrade=False)


def test_a_failing_version_crash_loops_its_simulated_agent(bundle_server):
    _, url = bundle_server()
    now = [0.0]
    boots = []
    slots = SimulatedSlots("1.1.0", failing_versions={"1.2.0"}, clock=lambda: now[0],
                           on_boot=lambda booted, runs: boots.append(runs))
    slots.install(Bundle(url, "1.2.0"), lambda pct: None, allow_downgrade=False)
    slots.reboot_to_trial()
    now[0] = 5.0
    facts = slots.agent_service()
    assert boots == [False]
    assert (facts.active_state, facts.sub_state, facts.restarts) == (
        "activating", "auto-restart", 3)
