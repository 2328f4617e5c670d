"""Relay autotune: the relay law on a plant with a known answer, the tune on the simulated board
(steady oscillation, sensible gains that still control well), the abort on heat, gains stored
and loaded back, and `hearth tune --sim` through the command line."""

import json
import math
import statistics

import pytest

from agent import cli
from agent.config import load_config
from agent.control import autotune_run
from agent.control.autotune import (
    GAINS_FILE, GAINS_VERSION, RelayAutotune, RelayController, RelayPlan, StoredGains,
    apply_gains, gains_from_payload, load_gains)
from agent.control.controller import LimitGains, PowerGains
from agent.persist import StateStore
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.scenario import ScenarioPlayer, load_scenario

PERIOD_S = 0.1


def test_relay_on_a_one_period_delay_finds_the_describing_function_answer():
    """y[k+1] = K u[k]: the relay flips every period, so Tu = 2 periods and a = K d, hence
    Ku = 4 / (π K)."""
    gain = 2.0
    relay = RelayAutotune(target=8.0, bias=4.0, amplitude=0.5, hysteresis=0.1,
                          settle_cycles=2, measure_cycles=5)
    measured, now = gain * 4.0, 0.0
    while not relay.finished and now < 10:
        now += PERIOD_S
        measured = gain * relay.update(now, measured)
    result = relay.result()
    assert result.tu_s == pytest.approx(0.2)
    assert result.amplitude == pytest.approx(gain * 0.5)
    assert result.ku == pytest.approx(4 / (math.pi * gain))
    assert result.gains("zn-pi") == pytest.approx(
        (0.45 * result.ku, 0.45 * result.ku / (0.2 / 1.2), 0.0))


def test_relay_does_not_finish_on_an_unsteady_oscillation():
    relay = RelayAutotune(target=0.0, bias=0.0, amplitude=1.0, hysteresis=0.0,
                          settle_cycles=1, measure_cycles=3)
    now = 0.0
    for cycle in range(8):
        swing = 1.0 + cycle  # growing: never steady
        for value in (swing, -swing):
            now += 1.0
            relay.update(now, value)
    assert relay.cycles >= 4 and not relay.finished


@pytest.fixture
def sim(sim_dir):
    simulated = SimulatedAgent(sim_dir, SimClock(), seed=3)
    yield simulated
    simulated.agent.close()


def run_tune(sim, loop):
    def advance():
        sim.clock.advance(PERIOD_S)
        sim.board.step(PERIOD_S)

    limits = load_config(sim.config_path).limits
    return autotune_run.tune_loop(sim.agent, autotune_run.DEFAULT_PLANS[loop], advance,
                                  limits.soc_critical_c, limits.power_min_w, limits.power_max_w)


def one_second_means(reports):
    powers = [r.power_w for r in reports]
    return [statistics.fmean(powers[i - 10:i]) for i in range(10, len(powers) + 1)]


def test_power_loop_tune_on_the_simulated_board(sim):
    outcome = run_tune(sim, "power")
    result = outcome.result
    assert outcome.abort_reason is None and result is not None
    assert result.period_spread <= 0.15 and result.amplitude_spread <= 0.15, "steady cycle"
    assert 0.15 <= result.tu_s <= 0.5, "one period of dead time: Tu near two periods"
    assert 0.8 <= result.ku <= 2.0, "model-corrected plant gain near 1 W/W"
    kp, ki, kd = result.gains("zn-pi")
    assert 0.2 <= kp <= 1.0 and 1.0 <= ki <= 10.0 and kd == 0.0
    assert outcome.duration_s <= autotune_run.DEFAULT_PLANS["power"].max_duration_s
    sim.board.step(PERIOD_S)
    assert sim.board.plant.cap_mhz == sim.board.params.operating_points_mhz[0], \
        "the board is left at its lowest setting"


def test_tuned_power_gains_settle_steps_within_2_percent_in_3_s(sim):
    kp, ki, kd = run_tune(sim, "power").result.gains("zn-pi")
    apply_gains(sim.agent.controller, StoredGains(power=PowerGains(kp=kp, ki=ki, kd=kd)))
    assert sim.agent.controller.power_pid.kp == pytest.approx(kp)
    sim.agent.set_setpoint(3.0)
    sim.run_for(30)
    for setpoint_w in (5.0, 3.5, 5.8, 3.0):
        sim.agent.set_setpoint(setpoint_w)
        reports = []
        sim.run_for(8, reports.append)
        means = one_second_means(reports)
        assert all(abs(m - setpoint_w) <= 0.02 * setpoint_w for m in means[20:]), \
            (setpoint_w, means[:30:5])


def test_soc_loop_tune_and_the_hot_scenario_with_its_gains(sim):
    outcome = run_tune(sim, "soc")
    result = outcome.result
    assert result is not None, outcome.abort_reason
    assert result.period_spread <= 0.15 and result.amplitude_spread <= 0.15
    assert 1.0 <= result.ku <= 20.0 and 2.0 <= result.tu_s <= 60.0
    kp, ki, kd = result.gains("no-overshoot")
    assert 0.2 <= kp <= 4.0 and 0.01 <= ki <= 2.0 and 0.1 <= kd <= 10.0
    apply_gains(sim.agent.controller, StoredGains(soc=LimitGains(kp=kp, ki=ki, kd=kd)))
    scenario = load_scenario("hot")
    player = ScenarioPlayer(scenario, sim.board, sim.agent)
    start = sim.clock()
    limit_c = sim.agent.controller.limits[0].target_c + 1.0
    worst_c, limited_s = 0.0, 0.0
    for _ in range(round(scenario.duration_s / PERIOD_S)):
        player.apply(sim.clock() - start)
        reports = []
        sim.run_for(PERIOD_S, reports.append)
        worst_c = max(worst_c, sim.board.plant.soc_c)
        limited_s += PERIOD_S if reports[0].selected == "soc" else 0.0
    assert limited_s >= 600, "the tuned limit loop held the board"
    assert worst_c <= limit_c + 1.0


def test_tune_aborts_at_the_lowest_setting_when_the_soc_nears_critical(sim):
    critical_c = load_config(sim.config_path).limits.soc_critical_c
    plant = sim.board.plant
    plant.water_inlet_c = plant.oil_c = 70.0
    plant.soc_c = critical_c - 1.5  # already inside the 2 °C margin, and rising at any power
    outcome = run_tune(sim, "soc")
    assert outcome.result is None
    assert "SoC reached" in outcome.abort_reason and "critical" in outcome.abort_reason
    assert outcome.duration_s <= 1.0, "aborted within the first periods"
    sim.board.step(PERIOD_S)
    assert sim.board.plant.cap_mhz == sim.board.params.operating_points_mhz[0]
    assert sim.board.plant.demand.heatfill_frozen


def test_relay_refuses_a_range_outside_the_board_limits():
    plan = RelayPlan("power", bias_w=6.3, amplitude_w=0.5, hysteresis=0.05, hold_s=1.0,
                     settle_cycles=1, measure_cycles=2, max_duration_s=10.0)
    with pytest.raises(ValueError, match="outside the board's power range"):
        RelayController(plan, power_min_w=2.0, power_max_w=6.5, soc_abort_c=76.0)


def test_relay_gives_up_after_its_time_budget():
    plan = RelayPlan("power", bias_w=4.0, amplitude_w=0.5, hysteresis=0.05, hold_s=0.0,
                     settle_cycles=1, measure_cycles=2, max_duration_s=5.0)
    relay = RelayController(plan, power_min_w=2.0, power_max_w=6.5, soc_abort_c=76.0)
    now = 0.0
    while not relay.finished and now < 60:
        now += PERIOD_S
        decision = relay.update(now, 4.0, 4.0, {"soc": 50.0}, math.inf)  # a dead plant
    assert "no steady oscillation within 5 s" in relay.abort_reason
    assert decision.command_w == 2.0 and 5.0 < now <= 5.0 + 2 * PERIOD_S


def test_gains_are_stored_and_loaded_back(sim, tmp_path):
    outcome = run_tune(sim, "power")
    store = StateStore(tmp_path)
    path, problem = autotune_run.store_outcomes(store, [outcome], {"power": "zn-pi"})
    assert path == tmp_path / GAINS_FILE and problem is not None and "missing" in problem
    gains, problem = load_gains(store)
    assert problem is None
    kp, ki, kd = outcome.result.gains("zn-pi")
    assert gains == StoredGains(power=PowerGains(kp=kp, ki=ki, kd=kd))
    assert outcome.stored_gains("zn-pi") == gains, "what the console applies is what is stored"
    record = json.loads(path.read_text())["payload"]["power"]
    assert record["rule"] == "zn-pi" and record["ku"] == pytest.approx(outcome.result.ku)
    store.write(GAINS_FILE, GAINS_VERSION, {**json.loads(path.read_text())["payload"],
                                             "soc": {"kp": 1.0, "ki": 0.1, "kd": 2.0}})
    gains, _ = load_gains(store)
    assert gains.power.kp == pytest.approx(kp), "a later tune of one loop keeps the other"
    apply_gains(sim.agent.controller, gains)
    soc_pid = sim.agent.controller.limits[0].pid
    assert (soc_pid.kp, soc_pid.ki, soc_pid.kd) == (1.0, 0.1, 2.0)
    assert sim.agent.controller.power_pid.ki == pytest.approx(ki)


def test_unusable_stored_gains_keep_the_defaults_with_a_reason():
    gains, problem = gains_from_payload({"power": {"kp": -1, "ki": 1, "kd": 0},
                                         "soc": {"kp": "x"}})
    assert gains == StoredGains()
    assert "power gains out of range" in problem and "soc gains unreadable" in problem


def test_hearth_tune_sim_end_to_end(tmp_path, capsys):
    status = cli.main(["tune", "--sim", "--loop", "both", "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "power loop: Ku =" in out and "soc loop: Ku =" in out and "gains stored in" in out
    gains, problem = load_gains(StateStore(tmp_path))
    assert problem is None and gains.power is not None and gains.soc is not None
