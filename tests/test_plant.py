"""The simulated board's physics against the published Pi 4 figures (DESIGN.md section 7)."""

import math

import pytest

from agent.sim.params import BoardParams
from agent.sim.plant import BoardPlant


def settle(plant, seconds, dt_s=0.1):
    for _ in range(round(seconds / dt_s)):
        plant.step(dt_s)


def test_power_envelope_matches_pi4_figures():
    plant = BoardPlant(BoardParams())
    plant.demand.workload_utilisation = 1.0
    plant.cap_mhz = 1500
    full = plant.electric_power_w()
    plant.cap_mhz = 600
    full_at_600 = plant.electric_power_w()
    plant.demand.workload_utilisation = 0.0
    idle = plant.electric_power_w()
    assert 5.5 <= full <= 6.5
    assert full_at_600 < full - 1.5
    assert 2.0 <= idle <= 3.0


def test_quota_and_freeze_limit_the_cpu():
    plant = BoardPlant(BoardParams())
    plant.demand.workload_quota_cpus = 1.0
    one_cpu = plant.electric_power_w()
    plant.demand.workload_frozen = True
    assert plant.busy_cores() == 0.0
    plant.demand.heatfill_running = True
    plant.demand.heatfill_quota_cpus = 2.0
    assert plant.busy_cores() == 2.0
    assert one_cpu == pytest.approx(BoardParams().idle_w + plant.core_busy_w(1500))


def test_soc_settles_r_times_p_above_oil_with_its_time_constant():
    params = BoardParams()
    plant = BoardPlant(params, soc_c=30.0, oil_c=30.0)
    power_w = plant.electric_power_w()
    settle(plant, params.soc_time_constant_s)
    rise = plant.soc_c - plant.oil_c
    final = params.soc_to_oil_k_per_w * power_w
    # After one time constant a first-order system has covered 1 - 1/e of the step.
    assert rise == pytest.approx(final * (1 - math.exp(-1)), rel=0.05)
    settle(plant, 10 * params.soc_time_constant_s)
    assert plant.soc_c - plant.oil_c == pytest.approx(final, rel=0.03)


def test_lower_cap_lowers_power_then_temperature():
    plant = BoardPlant(BoardParams())
    settle(plant, 300)
    hot_soc, hot_power = plant.soc_c, plant.power_w
    plant.cap_mhz = 600
    settle(plant, 1)
    assert plant.power_w < hot_power - 1.5
    assert plant.soc_c > hot_soc - 2.0, "temperature lags power"
    settle(plant, 120)
    assert plant.soc_c < hot_soc - 5.0


def test_flow_stop_heats_the_oil_and_delivers_nothing():
    plant = BoardPlant(BoardParams())
    settle(plant, 3600, dt_s=1.0)
    steady_oil = plant.oil_c
    assert plant.heat_to_water_w > 0.8 * plant.power_w
    plant.water_flow_l_per_min = 0.0
    settle(plant, 1800, dt_s=1.0)
    assert plant.heat_to_water_w == 0.0
    assert plant.oil_c > steady_oil + 2.0


def test_energy_balance_closes():
    plant = BoardPlant(BoardParams())
    start_oil, start_soc = plant.oil_c, plant.soc_c
    settle(plant, 1800, dt_s=0.5)
    params = plant.params
    stored_j = ((plant.oil_c - start_oil) * params.oil_heat_capacity_j_per_k
                + (plant.soc_c - start_soc) * params.soc_heat_capacity_j_per_k)
    accounted_j = plant.energy_to_water_j + plant.energy_to_room_j + stored_j
    assert accounted_j == pytest.approx(plant.energy_electric_j, rel=1e-3)
    assert plant.energy_to_room_j < 0.1 * plant.energy_electric_j


def test_firmware_throttles_at_its_own_limits():
    plant = BoardPlant(BoardParams())
    plant.soc_c = 81.0
    assert plant.effective_mhz() == 1000
    plant.soc_c = 86.0
    assert plant.effective_mhz() == 600
    plant.soc_c = 50.0
    plant.under_voltage = True
    assert plant.effective_mhz() == 600
