"""The fleet benchmark (scripts/bench-fleet) in a tiny configuration: its report must add up,
whatever the machine measured."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.fleet.bench import HubCost, fit_line, percentile, projection
from agent.fleet.streams import DAY_S, HUB_MAX_AGE_S

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench-fleet"


def test_percentile_is_a_measured_value_by_nearest_rank():
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_fit_line_finds_intercept_and_slope_and_goes_through_zero_for_one_size():
    assert fit_line([1.0, 2.0, 3.0], [5.0, 7.0, 9.0]) == pytest.approx((3.0, 2.0))
    assert fit_line([4.0], [2.0]) == (0.0, 0.5)


def test_projection_is_the_costs_times_the_fleet():
    cost = HubCost(base_cpu_pct=3.0, cpu_pct_per_site=0.1, cpu_pct_per_message_s=0.01,
                   base_rss_mb=60.0, rss_mb_per_site=1.5, bytes_per_message=500.0)
    need = projection(cost, sites=1000, messages_per_site_s=2.0, retention_days=400.0)
    assert need["messages_per_s"] == 2000.0
    assert need["cores"] == pytest.approx((3.0 + 100.0 + 20.0) / 100)
    assert need["cores_per_server"] == pytest.approx(need["cores"] / 3)
    assert need["disk_gb_per_day_per_server"] == pytest.approx(2000 * 86400 * 500 / 1e9)
    assert need["disk_tb_per_server_at_retention"] == pytest.approx(
        need["disk_gb_per_day_per_server"] * 400 / 1e3)


def test_a_tiny_fleet_run_reports_consistent_figures(tmp_path):
    """Two steps (2 and 3 sites) on real nats-servers with TLS, traffic sped up so that a few
    seconds hold dozens of messages: every message sent arrives at the hub once, and the
    report's figures agree with each other."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "2,3", "--idle-s", "2", "--window-s", "4",
         "--telemetry-period-s", "0.5", "--boards-per-site", "4", "--events-per-board-h", "900",
         "--fleet-sites", "10", "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [step["sites"] for step in report["steps"]] == [2, 3]
    expected_rate = report["traffic"]["messages_per_site_s"]
    for step in report["steps"]:
        assert step["drained"] and step["sent"] > 0
        assert step["received"] == step["sent"] and step["duplicates"] == 0
        assert step["hub_stream_messages"] == step["messages_total"]
        assert step["messages_per_s"] == pytest.approx(step["sent"] / step["window_s"])
        assert 0.3 * expected_rate * step["sites"] < step["messages_per_s"] \
            < 3 * expected_rate * step["sites"]
        for latency in (step["latency_read_ms"], step["latency_stored_ms"]):
            assert 0 < latency["count"] <= step["received"]
            assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert step["latency_stored_ms"]["p50"] <= step["latency_read_ms"]["p50"]
        assert len(step["hub_cpu_pct"]) == 3 and sum(step["hub_cpu_pct"]) > 0
        assert all(rss > 0 for rss in step["hub_rss_mb"]) and step["leaves_rss_mb"] > 0
    cost = HubCost(**report["cost"])
    last = report["steps"][-1]
    assert cost.bytes_per_message == max(last["hub_stream_files_bytes"]) / last[
        "hub_stream_messages"]
    assert len(last["hub_stream_files_bytes"]) == 3 and min(last["hub_stream_files_bytes"]) > 0
    for name, need in report["fleet"].items():
        assert need == projection(cost, 10, need["messages_per_site_s"],
                                  HUB_MAX_AGE_S / DAY_S), name
    assert report["fleet"]["calm site (site state only)"]["messages_per_site_s"] == 2.0
    assert (tmp_path / "work" / "logs" / "hub1.log").exists()
