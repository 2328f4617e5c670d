"""The simulation report: summary figures from a hand-made Recording whose numbers are known,
the text people read, and the files write_report leaves (PNGs that open, JSON that loads)."""

import json
import math
import struct
import subprocess
import sys

import pytest

from agent.sim.recording import FaultRecord, Recording
from agent.sim.report import BALANCE_TOLERANCE, format_summary, summarize, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_recording() -> Recording:
    """Two modules of two boards, six samples ten seconds apart, with gaps (None) on purpose."""
    recording = Recording(meta={"scenario": "unit", "description": "hand-made numbers",
                                "modules": 2, "boards_per_module": 2,
                                "simulated_s": 60.0, "wall_s": 2.0})
    recording.times_s = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    recording.site = {
        "demand_w": [100.0, 100.0, 200.0, 200.0, None, 100.0],
        "heat_w": [90.0, 110.0, 150.0, None, 120.0, 100.0],
        "electric_w": [100.0, 100.0, 200.0, 200.0, 100.0, 100.0],
        "load_w": [80.0, 80.0, 80.0, 80.0, 80.0, None],
        "tank_c": [50.0, 52.0, None, 56.0, 54.0, 53.0],
        "target_c": [55.0] * 6,
        "outdoor_c": [-2.0] * 6,
    }
    online = [True, True, True, False, False, True]
    for module in ("m1", "m2"):
        recording.modules[module] = {
            "budget_w": [50.0, 50.0, 100.0, None, None, 50.0],
            "power_w": [45.0, 50.0, 95.0, None, None, 50.0],
            "heat_w": [40.0, 48.0, 80.0, None, None, 50.0],
            "oil_c": [40.0, 41.0, 43.0, None, None, 44.0],
            "flow_l_per_min": [3.0] * 6,
            "outlet_c": [45.0, 46.0, 47.0, None, None, 47.0],
            "interlock": [False, False, module == "m2", module == "m2", None, False],
            "leader_online": online if module == "m2" else [True] * 6,
        }
    modes = {"m1/b1": ["STARTING", "NORMAL", "NORMAL", "NORMAL", "NORMAL", "NORMAL"],
             "m1/b2": ["STARTING", "NORMAL", "NORMAL", "NORMAL", "NORMAL", "NORMAL"],
             "m2/b1": ["STARTING", "NORMAL", "SAFE", "SAFE", None, None],
             "m2/b2": ["STARTING", "NORMAL", "LIMITED", "NORMAL", None, None]}
    for name, mode in modes.items():
        recording.boards[name] = {
            "setpoint_w": [0.0, 4.0, 5.0, None if "m2" in name else 5.0, None, 4.0],
            "power_w": [0.5, 3.9, 4.8, None, None, 4.0],
            "soc_c": [40.0, 50.0, 60.0 if name == "m2/b1" else 55.0, None, None, 52.0],
            "mode": mode,
        }
    recording.events = [
        {"t_s": 20.0, "source": "m2/b1", "kind": "flow_lost", "text": "water flow lost"},
        {"t_s": 20.0, "source": "m2/b2", "kind": "flow_lost", "text": "water flow lost"},
        {"t_s": 30.0, "source": "m2", "kind": "leader_offline", "text": "leader m2 went quiet"},
        {"t_s": 5.0, "source": "scenario", "kind": "scenario", "text": "demand 100 W"},
    ]
    recording.faults = [
        FaultRecord(20.0, "pump_off", "m2", "water stops in module m2",
                    "interlock within 1 s, boards SAFE", cleared_s=40.0),
        FaultRecord(45.0, "stuck:soc", "m1/b2", "SoC reading frozen"),
    ]
    recording.energy = {"requested": 1100.0, "heat_to_water": 900.0, "electric": 1000.0,
                        "to_room": 95.0, "stored": 0.0, "load": 400.0,
                        "metered_electric": 1010.0, "metered_heat": 891.0}
    return recording


def test_energy_figures_and_balance_closure():
    summary = summarize(small_recording())
    assert summary["energy_wh"]["requested"] == 1100.0
    assert summary["recovery_efficiency"] == pytest.approx(0.9)
    assert summary["balance"]["residual_wh"] == pytest.approx(5.0)
    assert summary["balance"]["closure"] == pytest.approx(0.005)
    assert summary["balance"]["within_tolerance"] is True
    assert summary["metering"]["electric_ratio"] == pytest.approx(1.01)
    assert summary["metering"]["heat_ratio"] == pytest.approx(0.99)
    assert summary["mean_load_w"] == pytest.approx(80.0)
    assert (summary["modules"], summary["boards"], summary["samples"]) == (2, 4, 6)
    assert summary["speed"] == pytest.approx(30.0)


def test_balance_that_does_not_close_is_flagged():
    recording = small_recording()
    recording.energy["to_room"] = 50.0
    summary = summarize(recording)
    assert summary["balance"]["closure"] == pytest.approx(0.05)
    assert summary["balance"]["within_tolerance"] is False
    assert summary["balance"]["closure"] > BALANCE_TOLERANCE
    assert "FAILS" in format_summary(summary)


def test_tracking_error_uses_only_samples_with_both_demand_and_heat():
    tracking = summarize(small_recording())["tracking"]
    # Samples 0, 1, 2 and 5 have both: errors 10, 10, 50, 0 W, all weighing 10 s.
    assert tracking["samples"] == 4
    assert tracking["mean_abs_error_w"] == pytest.approx(17.5)
    assert tracking["rms_error_w"] == pytest.approx(math.sqrt(2700 / 4))
    assert tracking["mean_demand_w"] == pytest.approx(125.0)
    assert tracking["mean_abs_error_pct"] == pytest.approx(14.0)
    assert "oil bath" in tracking["note"]


def test_samples_weigh_by_the_time_they_hold():
    recording = Recording(meta={}, times_s=[0.0, 10.0, 40.0],
                          site={"demand_w": [100.0, 200.0, 100.0], "heat_w": [100.0, 100.0, 100.0]})
    tracking = summarize(recording)["tracking"]
    # Weights 10, 30, 30 s (the last sample repeats the previous gap): the 100 W error holds 30 s.
    assert tracking["mean_abs_error_w"] == pytest.approx(100.0 * 30 / 70)


def test_tank_range_against_target():
    tank = summarize(small_recording())["tank"]
    assert (tank["min_c"], tank["max_c"], tank["final_c"]) == (50.0, 56.0, 53.0)
    assert (tank["target_min_c"], tank["target_max_c"]) == (55.0, 55.0)
    assert tank["max_below_target_c"] == pytest.approx(5.0)
    assert tank["max_above_target_c"] == pytest.approx(1.0)


def test_tank_against_its_target_band():
    tank = summarize(small_recording())["tank"]
    # Band 54.5 C; each sample with a reading holds until the next one that has one:
    # 50 C for 10 s, 52 C for 20 s (the gap has no reading), 56 C, 54 C and 53 C 10 s each.
    assert tank["below_band_k_h"] == pytest.approx((4.5 * 10 + 2.5 * 20 + 0.5 * 10 + 1.5 * 10)
                                                   / 3600)
    assert tank["worst_deficit_k"] == pytest.approx(5.0)
    assert tank["below_band_s"] == pytest.approx(50.0)
    assert tank["below_2k_s"] == pytest.approx(30.0)
    assert tank["band_k"] == 0.5


def test_headline_is_the_building_and_demand_tracking_a_diagnostic():
    lines = format_summary(summarize(small_recording())).splitlines()
    headline = next(i for i, line in enumerate(lines) if line.startswith("Tank against"))
    assert headline < lines.index("Energy")
    assert "55.0 °C ± 0.5 K" in lines[headline]
    below, worst = lines[headline + 1], lines[headline + 2]
    assert "0.03 K·h" in below and "50.0 s below the band" in below
    assert "30.0 s more than 2 K below" in below
    assert "5.0 K" in worst
    diagnostic = next(line for line in lines if "|demand - heat to water|" in line)
    assert diagnostic.startswith("Diagnostic")
    assert lines.index(diagnostic) > lines.index("Energy")


def test_board_time_per_mode_counts_missing_modes_as_unknown():
    modes = summarize(small_recording())["modes"]
    assert list(modes) == ["NORMAL", "STARTING", "LIMITED", "UNKNOWN", "SAFE"]
    seconds = {mode: figures["board_s"] for mode, figures in modes.items()}
    assert seconds == {"NORMAL": 130.0, "STARTING": 40.0, "LIMITED": 10.0, "UNKNOWN": 40.0,
                       "SAFE": 20.0}
    assert modes["NORMAL"]["pct"] == pytest.approx(130 / 240 * 100)
    assert sum(figures["pct"] for figures in modes.values()) == pytest.approx(100.0)


def test_faults_and_event_counts():
    summary = summarize(small_recording())
    assert summary["faults"][0] == {"t_s": 20.0, "kind": "pump_off", "target": "m2",
                                    "description": "water stops in module m2",
                                    "outcome": "interlock within 1 s, boards SAFE",
                                    "cleared_s": 40.0}
    assert summary["faults"][1]["outcome"] == "no reaction observed"
    assert summary["events"] == {"flow_lost": 2, "leader_offline": 1, "scenario": 1}


def test_an_empty_recording_summarizes_without_numbers():
    summary = summarize(Recording(meta={}))
    assert summary["recovery_efficiency"] is None
    assert summary["balance"]["closure"] is None
    assert summary["tracking"]["mean_abs_error_w"] is None
    assert summary["tank"]["min_c"] is None
    text = format_summary(summary)
    assert "balance" in text and "n/a" in text


def test_text_has_units_the_closure_and_every_fault_outcome():
    recording = small_recording()
    text = format_summary(summarize(recording))
    lines = text.splitlines()
    assert 20 <= len(lines) <= 40
    assert "closes within 0.50 %" in text
    assert "90.0 %" in text  # recovery
    assert "1,100.00 Wh" in text
    assert "17.5 W" in text and "14.0 %" in text
    for fault in recording.faults:
        line = next(line for line in lines if fault.kind in line and fault.target in line)
        assert fault.outcome in line
    assert "cleared 0:00:40" in text and "not cleared" in text


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    recording = small_recording()
    recording.site["outdoor_c"][0] = float("nan")  # strict JSON has no NaN: it must become null
    return recording, write_report(recording, tmp_path_factory.mktemp("report") / "run")


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_write_report_writes_pngs_that_open(report):
    import matplotlib.image

    _, paths = report
    for name in ("demand.png", "temperatures.png", "boards.png", "modules.png"):
        width, height = png_size(paths[name])
        assert width >= 800 and height >= 400
        assert matplotlib.image.imread(paths[name]).shape[:2] == (height, width)
        assert paths[name].stat().st_size < 300_000


def test_write_report_json_round_trips(report):
    recording, paths = report
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["meta"] == recording.meta
    assert summary["balance"]["closure"] == pytest.approx(0.005)
    assert summary["faults"][1]["cleared_s"] is None
    written = json.loads(paths["recording.json"].read_text(), parse_constant=pytest.fail)
    assert written["site"]["outdoor_c"][0] is None
    expected = json.loads(json.dumps(recording.to_json()))
    expected["site"]["outdoor_c"][0] = None
    assert written == expected
    assert paths["summary.txt"].read_text() == format_summary(summarize(recording))


def test_many_boards_still_plot(tmp_path):
    recording = Recording(meta={"scenario": "wide", "simulated_s": 8 * 3600.0},
                          times_s=[i * 600.0 for i in range(49)])
    for board in range(512):
        name = f"m{board // 64 + 1}/b{board % 64 + 1}"
        recording.boards[name] = {"setpoint_w": [float(board % 6)] * 49,
                                  "soc_c": [50.0 + board % 10] * 49,
                                  "mode": ["NORMAL"] * 48 + [None if board % 7 else "SAFE"]}
    paths = write_report(recording, tmp_path)
    assert png_size(paths["boards.png"])[1] >= 1000
    assert summarize(recording)["boards"] == 512


def test_importing_the_report_leaves_matplotlib_unloaded():
    code = "import sys, agent.sim.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_energy_totals_may_carry_their_unit_in_the_key():
    recording = small_recording()
    recording.energy = {f"{key}_wh": value for key, value in recording.energy.items()}
    summary = summarize(recording)
    assert summary["recovery_efficiency"] == pytest.approx(0.9)
    assert summary["balance"]["closure"] == pytest.approx(0.005)


def test_many_event_kinds_are_named_up_to_a_few():
    recording = small_recording()
    recording.events = [{"t_s": 1.0, "source": "m1/b1", "kind": f"sensor:{n}", "text": ""}
                        for n in range(9)]
    summary = summarize(recording)
    assert len(summary["events"]) == 9
    assert "and 3 more kinds" in format_summary(summary)
