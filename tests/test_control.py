"""The control loop on a simulated board: setpoint and workload steps, the temperature limiter,
dithering and writes-only-on-change. Power is judged as the 1 s average the heat follows (the
governor dithers between neighbouring operating points within that second)."""

import statistics

import pytest

from agent.control.controller import HeatController
from agent.control.governor import DvfsGovernor
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.scenario import ScenarioPlayer, load_scenario

PERIOD_S = 0.1


@pytest.fixture
def sim(sim_dir):
    simulated = SimulatedAgent(sim_dir, SimClock(), seed=3)
    yield simulated
    simulated.agent.close()


def record(sim, seconds):
    reports = []
    sim.run_for(seconds, reports.append)
    return reports


def one_second_means(reports):
    """Power averaged over each trailing second (ten periods)."""
    powers = [r.power_w for r in reports]
    return [statistics.fmean(powers[i - 10:i]) for i in range(10, len(powers) + 1)]


def settles_within(reports, setpoint_w, tolerance, by_s):
    """True if every 1 s mean from `by_s` after the step on is within tolerance."""
    means = one_second_means(reports)
    first = round(by_s / PERIOD_S) - 10
    return all(abs(m - setpoint_w) <= tolerance * setpoint_w for m in means[first:])


def test_the_agent_runs_hearths_controller_and_governor_unless_given_others(sim):
    """The constructor's defaults are the control law and governor every other test here
    judges (plug-ins are tested in test_agent_extension_points)."""
    assert type(sim.agent.controller) is HeatController
    assert type(sim.agent.governor) is DvfsGovernor


def test_power_steps_settle_within_2_percent_in_3_s(sim):
    sim.agent.set_setpoint(3.0)
    record(sim, 30)
    for setpoint_w in (5.0, 3.5, 5.8, 3.0):
        sim.agent.set_setpoint(setpoint_w)
        reports = record(sim, 8)
        means = one_second_means(reports)
        assert settles_within(reports, setpoint_w, 0.02, 3.0), (setpoint_w, means[:30:5])


def test_workload_steps_are_rejected_within_3_s(sim):
    sim.agent.set_setpoint(4.5)
    record(sim, 30)
    for utilisation in (0.2, 0.7, 0.0, 1.0):
        sim.board.plant.demand.workload_utilisation = utilisation
        reports = record(sim, 8)
        assert settles_within(reports, 4.5, 0.02, 3.0), (utilisation,
                                                          one_second_means(reports)[:30:5])


def test_heat_fill_makes_up_for_missing_paid_work(sim):
    sim.board.plant.demand.workload_utilisation = 0.1
    sim.agent.set_setpoint(5.5)
    reports = record(sim, 20)
    assert reports[-1].settings.heatfill_cpus > 1.0
    assert statistics.fmean(r.power_w for r in reports[-10:]) == pytest.approx(5.5, rel=0.02)
    sim.board.plant.demand.workload_utilisation = 1.0
    reports = record(sim, 10)
    assert reports[-1].settings.heatfill_cpus < 0.2


def test_limiter_holds_ten_minutes_without_windup_then_returns_without_overshoot(sim):
    limit_c = sim.agent.controller.limits[0].target_c
    sim.agent.set_setpoint(6.0)
    sim.board.plant.water_inlet_c = 55.0
    sim.board.plant.oil_c = 55.0
    record(sim, 60)
    held = record(sim, 600)
    assert all(r.selected == "soc" for r in held[-3000:]), "the SoC limit binds throughout"
    assert max(r.soc_c for r in held) <= limit_c + 1.0
    power_pid = sim.agent.controller.power_pid
    assert abs(power_pid.integral) <= 2.0 + 1e-9, "power integral bounded while not selected"
    sim.board.plant.water_inlet_c = 25.0
    sim.board.plant.oil_c = 30.0
    released = record(sim, 120)
    means = one_second_means(released)
    assert max(means) <= 6.0 * 1.05
    assert means[-1] == pytest.approx(6.0, rel=0.02)


def test_hot_scenario_never_exceeds_the_soc_limit_by_more_than_1_c(sim):
    scenario = load_scenario("hot")
    player = ScenarioPlayer(scenario, sim.board, sim.agent)
    start = sim.clock()
    limit_c = sim.agent.controller.limits[0].target_c + 1.0  # the configured soc_limit_c
    worst_c = 0.0
    limited_s = 0.0
    for _ in range(round(scenario.duration_s / PERIOD_S)):
        player.apply(sim.clock() - start)
        [report] = record(sim, PERIOD_S)
        worst_c = max(worst_c, sim.board.plant.soc_c)
        limited_s += PERIOD_S if report.selected == "soc" else 0.0
    assert limited_s >= 600, "the limit binds for a long time"
    assert worst_c <= limit_c + 1.0


def test_dithering_averages_between_operating_points(sim):
    sim.agent.set_setpoint(4.6)
    reports = record(sim, 30)
    frequencies = {r.settings.freq_khz for r in reports[-50:]}
    assert len(frequencies) == 2, "alternates between two neighbouring points"
    low, high = sorted(frequencies)
    assert high - low == 100000
    assert statistics.fmean(r.power_w for r in reports[-50:]) == pytest.approx(4.6, rel=0.01)


def test_sysfs_files_are_written_only_when_their_value_changes(sim):
    sim.agent.set_setpoint(6.5)  # more than the board can draw: it stays at the top point
    record(sim, 20)
    files = (sim.agent.policy.max_freq, sim.agent.workload.cpu_max,
             sim.agent.workload.freeze_file, sim.agent.heatfill.freeze_file)
    before = [f.writes for f in files]
    record(sim, 20)
    assert [f.writes for f in files] == before
    sim.agent.set_setpoint(3.0)  # the quota regime: the frequency file stays as it is
    record(sim, 10)
    frequency_writes = files[0].writes
    record(sim, 20)
    assert files[0].writes == frequency_writes


def test_loop_timer_keeps_its_grid_and_counts_overruns():
    from agent.control.timer import LoopTimer

    timer = LoopTimer(0.1, start_s=100.0)
    assert timer.advance(100.01) == pytest.approx(100.1)
    assert timer.advance(100.15) == pytest.approx(100.2)
    assert timer.overruns == 0
    assert timer.advance(100.43) == pytest.approx(100.5), "missed periods are skipped"
    assert timer.overruns == 1
    assert timer.advance(100.5) == pytest.approx(100.6)


def test_reports_keep_their_period_without_drifting(sim_dir):
    reports = []
    simulated = SimulatedAgent(sim_dir / "reports", SimClock())
    simulated.agent.add_report_listener(reports, reports.append)
    simulated.run_for(600)
    assert len(reports) == 601, "one per report period over ten minutes, plus the first"
    simulated.agent.close()
