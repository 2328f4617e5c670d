"""The building model the site bench judges controllers by: it conserves energy over long runs,
never cools the tank below the mains without a draw, and its parameters are the ones its
sources give (ErP class limits, EN 16147's profile M)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sim.building import (COLD_SNAP, MILD_DAY, WATER_J_PER_L_K, WINTER_DAY, BufferTank,
                                HotWaterDraws, SpaceHeating, TankParams, comfort,
                                erp_standing_loss_w_per_k)

steps = st.lists(st.tuples(st.floats(1.0, 60.0), st.floats(0.0, 20_000.0),
                           st.floats(0.0, 20_000.0), st.floats(0.0, 20_000.0)),
                 min_size=1, max_size=400)
tanks = st.builds(TankParams, litres=st.floats(100.0, 3000.0), top_share=st.floats(0.2, 0.8),
                  standing_loss_w_per_k=st.floats(0.0, 10.0),
                  mixing_w_per_k=st.floats(0.0, 100.0))


@settings(max_examples=200, deadline=None)
@given(tanks, st.floats(10.0, 90.0), steps)
def test_energy_balance_closes_over_any_run(params, start_c, run):
    tank = BufferTank(params, start_c)
    stored_before_j = tank.stored_j()
    for dt_s, heat_in_w, space_w, hot_water_w in run:
        tank.step(dt_s, heat_in_w, space_w, hot_water_w)
    change_j = tank.stored_j() - stored_before_j
    balance_j = tank.heat_in_j - tank.loss_j - tank.space_heat_j - tank.hot_water_j
    scale_j = tank.heat_in_j + tank.loss_j + tank.space_heat_j + tank.hot_water_j + 1.0
    assert change_j == pytest.approx(balance_j, abs=1e-9 * scale_j + 1e-3)


@settings(max_examples=200, deadline=None)
@given(tanks, st.floats(10.0, 90.0), steps)
def test_without_a_draw_the_tank_never_falls_below_the_mains(params, start_c, run):
    tank = BufferTank(params, start_c)
    for dt_s, heat_in_w, space_w, _ in run:
        tank.step(dt_s, heat_in_w, space_w, 0.0)
        assert tank.top_c >= params.mains_c - 1e-9
        assert tank.bottom_c >= params.mains_c - 1e-9
        assert tank.top_c >= tank.bottom_c - 1e-9  # never inverted: warm water rises


def test_a_day_of_space_heating_is_delivered_while_the_tank_is_warm():
    tank = BufferTank(TankParams(litres=500.0), 55.0)
    stored_before_j = tank.stored_j()
    building = SpaceHeating(loss_w_per_k=50.0)
    delivered_j = wanted_j = 0.0
    for step in range(8640):
        load_w = building.load_w(WINTER_DAY.temperature_c(step * 10.0))
        delivered_j += tank.step(10.0, load_w, load_w, 0.0) * 10.0
        wanted_j += load_w * 10.0
    assert delivered_j == pytest.approx(wanted_j)
    assert tank.space_heat_j == pytest.approx(wanted_j)
    # Heat in matched the load, so only the standing loss (about 100 W) was not made up.
    assert tank.stored_j() - stored_before_j == pytest.approx(-tank.loss_j)
    assert 85.0 < tank.loss_j / 86400.0 < 116.7


def test_a_cold_tank_gives_the_radiators_nothing():
    tank = BufferTank(TankParams(room_c=20.0), 20.0)
    assert tank.step(10.0, 0.0, 5000.0, 0.0) == 0.0
    assert tank.space_heat_j == 0.0


def test_a_shower_cools_the_top_and_lets_mains_in_at_the_bottom():
    params = TankParams(litres=500.0, top_share=0.4, standing_loss_w_per_k=0.0,
                        mixing_w_per_k=0.0)
    tank = BufferTank(params, 55.0)
    draws = HotWaterDraws()
    for step in range(7 * 360, 8 * 360):  # 07:00 to 08:00: the morning shower and small draws
        tank.step(10.0, 0.0, 0.0, draws.power_w(step * 10.0))
    drawn_kwh = tank.hot_water_j / 3.6e6
    assert drawn_kwh == pytest.approx(0.105 + 1.4 + 0.105, rel=1e-6)  # 07:00, 07:05, 07:30
    assert tank.top_c < 55.0 and tank.bottom_c < tank.top_c - 3.0  # the cold stays below
    assert tank.stored_j() == pytest.approx(500.0 * WATER_J_PER_L_K * 55.0 - tank.hot_water_j,
                                            rel=1e-9)


def test_profile_m_is_5845_wh_a_day_in_23_draws():
    draws = HotWaterDraws()
    assert draws.daily_kwh() == pytest.approx(5.845)
    assert len(draws.draws) == 23
    assert draws.power_w(7 * 3600 + 6 * 60) == pytest.approx(1.4 * 3.6e6 / 600)
    assert draws.power_w(3 * 3600) == 0.0
    assert draws.power_w(86400 + 7 * 3600 + 6 * 60) == draws.power_w(7 * 3600 + 6 * 60)


def test_erp_class_c_limit_for_a_500_litre_tank():
    # Regulation 812/2013: class C allows 16.66 + 8.33 * 500^0.4 = 116.7 W at 45 K.
    assert erp_standing_loss_w_per_k(500.0, "C") * 45.0 == pytest.approx(116.7, abs=0.1)
    assert erp_standing_loss_w_per_k(500.0, "A+") < erp_standing_loss_w_per_k(500.0, "C")


def test_outdoor_days():
    assert WINTER_DAY.temperature_c(15 * 3600) == pytest.approx(5.0)
    assert WINTER_DAY.temperature_c(3 * 3600) == pytest.approx(-1.0)
    assert MILD_DAY.temperature_c(15 * 3600) == pytest.approx(13.0)
    assert COLD_SNAP.temperature_c(11 * 3600) == pytest.approx(WINTER_DAY.temperature_c(11 * 3600))
    assert COLD_SNAP.temperature_c(20 * 3600) == pytest.approx(
        WINTER_DAY.temperature_c(20 * 3600) - 10.0)
    assert SpaceHeating(50.0).load_w(20.0) == 0.0
    assert SpaceHeating(50.0).load_w(-4.5) == pytest.approx(1000.0)


def test_comfort_figures_weigh_each_sample_by_the_time_it_holds():
    times = [0.0, 600.0, 1200.0, 1800.0, 3600.0]
    tank = [55.0, 54.0, 52.5, 53.0, 55.2]
    target = [55.0] * 5
    found = comfort(times, tank, target)
    # Below the band (54.5): 0.5 K for 600 s, 2.0 K for 600 s, 1.5 K for 1800 s.
    assert found.below_band_k_h == pytest.approx((0.5 * 600 + 2.0 * 600 + 1.5 * 1800) / 3600)
    assert found.worst_deficit_k == pytest.approx(2.5)
    assert found.below_band_s == pytest.approx(3000.0)
    assert found.below_2k_s == pytest.approx(600.0)
    assert found.worst_excess_k == pytest.approx(0.2)
    assert comfort([0.0], [None], [55.0]) is None
    assert math.isclose(comfort([0.0, 10.0], [55.0, 55.0], [55.0, 55.0]).below_band_k_h, 0.0)
