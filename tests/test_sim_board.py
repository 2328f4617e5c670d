"""The simulated oil carrier board seen through the agent's own drivers, as on a Pi."""

import pytest

from agent.drivers.base import DriverContext
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.registry import build_sensors
from agent.config import load_config
from agent.readings import Validity
from agent.sim.board import SimulatedBoard
from agent.sim.clock import SimClock


@pytest.fixture
def board(sim_dir):
    return SimulatedBoard(sim_dir / "root", SimClock(), seed=7)


@pytest.fixture
def sensors(board, sim_dir):
    config_path = sim_dir / "hearth.toml"
    config_path.write_text('board_type = "oil-carrier"\n' + board.sensor_config())
    return build_sensors(load_config(config_path).sensors, DriverContext(board.hardware))


def run(board, seconds, dt_s=0.1):
    for _ in range(round(seconds / dt_s)):
        board.clock.advance(dt_s)
        board.step(dt_s)


def sample(sensors):
    return {r.sensor: r for s in sensors for r in s.read()}


def settle_readings(board, sensors, seconds=6.0):
    """Read every period, as the loop does, so conversions and flow windows complete."""
    readings = {}
    for _ in range(round(seconds / 0.1)):
        run(board, 0.1)
        readings = sample(sensors)
    return readings


def test_every_sensor_reads_ok_and_matches_the_plant(board, sensors):
    readings = settle_readings(board, sensors)
    bad = {name: r.reason for name, r in readings.items() if not r.ok}
    assert not bad
    plant = board.plant
    assert readings["board_power.power_w"].value == pytest.approx(plant.power_w, abs=0.05)
    assert readings["board_power.bus_v"].value == pytest.approx(plant.bus_voltage_v(), abs=0.01)
    assert readings["soc"].value == pytest.approx(plant.soc_c, abs=0.01)
    assert readings["oil"].value == pytest.approx(plant.oil_c, abs=0.01)
    assert readings["water_in"].value == pytest.approx(plant.water_inlet_c, abs=0.07)
    assert readings["water_flow"].value == pytest.approx(plant.water_flow_l_per_min, rel=0.05)
    assert readings["water_pressure"].value == pytest.approx(1.5, abs=0.01)
    assert readings["throttle.under_voltage"].value == 0.0


def test_lower_frequency_cap_lowers_power_then_soc(board, sensors):
    run(board, 120)
    before = sample(sensors)
    CpuFreqPolicy(board.hardware).cap(600000)
    run(board, 0.2)
    after_power = sample(sensors)
    assert after_power["board_power.power_w"].value < before["board_power.power_w"].value - 1.5
    run(board, 60)
    assert sample(sensors)["soc"].value < before["soc"].value - 4.0


def test_injected_sensor_faults_show_through_the_drivers(board, sensors):
    settle_readings(board, sensors, 2.0)
    board.faults.w1_crc_error.add("water_in")
    board.faults.w1_absent.add("water_out")
    board.faults.flow_meter_dead = True
    board.tmp117.inject_nack()
    board.plant.under_voltage = True
    readings = settle_readings(board, sensors)
    assert readings["water_in"].validity is Validity.INVALID
    assert readings["water_out"].validity is Validity.MISSING
    assert readings["water_flow"].ok and readings["water_flow"].value == 0.0
    assert not readings["oil"].ok
    assert readings["throttle.under_voltage"].value == 1.0


def test_pump_off_heats_the_oil(board, sensors):
    run(board, 600, dt_s=1.0)
    oil_before = board.plant.oil_c
    board.plant.water_flow_l_per_min = 0.0
    run(board, 1200, dt_s=1.0)
    assert board.plant.oil_c > oil_before + 1.0
    readings = settle_readings(board, sensors)
    assert readings["water_flow"].value == 0.0
    assert readings["oil"].value == pytest.approx(board.plant.oil_c, abs=0.01)


def test_power_on_85_and_stuck_values(board, sensors):
    board.faults.w1_power_on.add("water_in")
    board.faults.stuck["soc"] = 42.0
    readings = settle_readings(board, sensors, 2.0)
    assert readings["water_in"].validity is Validity.INVALID
    assert readings["soc"].value == 42.0
    run(board, 30)
    assert sample(sensors)["soc"].value == 42.0 != pytest.approx(board.plant.soc_c, abs=1)
