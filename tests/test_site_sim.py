"""The simulated site end to end: site role, leaders and boards over a Mosquitto of the run's own
(persistence on, stopped and started for the broker outage, as `hearth sim` runs it), a scenario
that breaks things, and the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli
from agent.errors import ConfigValueError
from agent.sim import mosquitto as mosquitto_module
from agent.sim.report import summarize
from agent.sim.site import BrokerAccess, SiteLayout, SiteSimulation
from agent.sim.site_scenario import (builtin_site_scenarios, load_site_scenario,
                                     parse_site_scenario)

FAULTY_HALF_HOUR = """
description = "every kind of trouble, briefly"
duration_s = 1800

[building]
target_c = 45.0
start_c = 44.0
load = [[0, 0.4], [1800, 0.5]]

[[at]]
time_s = 200
action = "pump_off"
module = "m1"

[[at]]
time_s = 400
action = "pump_on"
module = "m1"

[[at]]
time_s = 500
action = "leader_crash"
module = "m2"

[[at]]
time_s = 700
action = "leader_restart"
module = "m2"

[[at]]
time_s = 900
action = "broker_down"

[[at]]
time_s = 1100
action = "broker_up"

[[at]]
time_s = 1300
action = "board_fault"
module = "m1"
board = "b02"
fault = "i2c_nack:oil"
"""


@pytest.fixture
def broker_access(mosquitto):
    return BrokerAccess.own(mosquitto(persistence=True))


@pytest.mark.parametrize("workers", [0, 1], ids=["one process", "boards in a worker"])
def test_site_rides_out_every_fault_and_its_energy_balances(broker_access, workers, sim_dir):
    scenario = parse_site_scenario(FAULTY_HALF_HOUR, "test.toml", "faulty")
    simulation = SiteSimulation(scenario, SiteLayout(2, 3), sim_dir, broker_access,
                                workers=workers)
    try:
        # 200 times real speed, not flat out: MQTT delivery, Last Wills and reconnects take
        # wall time, and flat out on a busy machine they would cost tens of simulated seconds
        recording = simulation.run(speed=200.0)
    finally:
        simulation.close()
    summary = summarize(recording)
    print(json.dumps({k: summary[k] for k in ("balance", "metering", "faults")}, indent=1))

    # issue 15: once the broker is back (1100 s) and the leaders are heard again, the site's
    # demand carries on from where it was before the outage instead of climbing from 0 W
    demand = recording.site["demand_w"]
    before_w = [d for t, d in zip(recording.times_s, demand) if 850 <= t < 900]
    after_w = [d for t, d in zip(recording.times_s, demand) if 1140 <= t <= 1400]
    assert after_w and min(after_w) >= 0.5 * sum(before_w) / len(before_w) > 0.0
    assert summary["balance"]["closure"] <= 0.01
    # what the leaders counted over MQTT, through a crash and a broker outage, is the physics
    assert summary["metering"]["electric_ratio"] == pytest.approx(1.0, abs=0.02)
    faults = {f["kind"]: f["outcome"] for f in summary["faults"]}
    assert set(faults) == {"pump_off", "leader_crash", "broker_down", "board_fault"}
    assert "module interlock set" in faults["pump_off"]
    assert "all 3 boards SAFE" in faults["pump_off"]
    assert "boards heating again" in faults["pump_off"]
    assert "Last Will" in faults["leader_crash"]
    assert "boards without the leader" in faults["leader_crash"]
    assert "following the leader again" in faults["leader_crash"]
    assert "every board without the leader" in faults["broker_down"]
    assert "every board following the leader again" in faults["broker_down"]
    assert "board SAFE" in faults["board_fault"]
    # the pump's module was SAFE while the pump was off, and the others kept heating
    modes = recording.boards
    times = recording.times_s
    during_pump_off = [i for i, t in enumerate(times) if 260 <= t <= 400]
    assert all(modes[f"m1/b0{n}"]["mode"][i] == "SAFE" for n in (1, 2, 3)
               for i in during_pump_off)
    assert all(modes[f"m2/b0{n}"]["mode"][i] in ("NORMAL", "LIMITED") for n in (1, 2, 3)
               for i in during_pump_off)


def test_sim_command_writes_a_report_a_person_can_open(tmp_path):
    scenario = tmp_path / "short.toml"
    scenario.write_text(FAULTY_HALF_HOUR.replace("duration_s = 1800", "duration_s = 600"))
    report = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "sim", "--modules", "2", "--boards", "2",
         "--scenario", str(scenario), "--report", str(report)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "balance" in result.stdout and "closes within" in result.stdout
    assert f"Report: {report}/" in result.stdout
    for name in ("summary.txt", "summary.json", "recording.json", "demand.png",
                 "temperatures.png", "boards.png", "modules.png", "sim.log", "mosquitto.log"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "demand.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert {f["kind"] for f in summary["faults"]} == {"pump_off", "leader_crash"}  # in 600 s


def test_sim_without_mosquitto_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto_module, "SBIN_PATHS", ())
    report = tmp_path / "report"
    assert cli.main(["sim", "--report", str(report)]) == 2
    error = capsys.readouterr().err
    assert "hearth sim: mosquitto is not installed" in error
    assert "apt install mosquitto" in error and "scripts/setup-dev --demo" in error
    assert not report.exists()


def test_every_builtin_site_scenario_loads():
    names = builtin_site_scenarios()
    assert {"showcase", "winter-day", "mild-day", "pump-failure", "leader-restart",
            "broker-outage", "boards-failing"} <= set(names)
    for name in names:
        scenario = load_site_scenario(name)
        assert scenario.duration_s >= 3600
        assert 0 < scenario.building.load_fraction(0) <= 1.0


def test_a_broken_site_scenario_names_every_problem(tmp_path):
    text = """
description = "broken"
duration_s = 10

[building]
load = [[0, 0.5], [0, 2.0]]

[[at]]
time_s = 5
action = "pump_of"

[[at]]
time_s = 6
action = "board_fault"
module = "m1"
"""
    with pytest.raises(ConfigValueError) as caught:
        parse_site_scenario(text, "broken.toml", "broken")
    problems = caught.value.problems
    text = "\n".join(map(str, problems))
    assert "broken.toml: duration_s = 10" in text
    assert "building.load[2] = [0, 2.0]" in text
    assert 'at[1].action = "pump_of"' in text
    assert "at[2].board is missing" in text
    assert "at[2].fault is missing" in text


def test_a_scenario_naming_a_module_the_site_lacks_is_refused(sim_dir):
    scenario = parse_site_scenario(FAULTY_HALF_HOUR, "test.toml", "faulty")
    with pytest.raises(ConfigValueError, match=r"at\[3\]\.module = 'm2': this site has modules m1"):
        SiteSimulation(scenario, SiteLayout(1, 3), Path(sim_dir), BrokerAccess("127.0.0.1", 1))
