"""How other parts attach to a running BoardAgent: registered with an owner and removed by owner,
events handed out after the actuators are written, a temporary controller swapped in by a
context manager, a controller, governor and supervisor given to the constructor, a read-only
status, and one way out when a period raises."""

import pytest

from agent.control.controller import Decision
from agent.control.governor import Settings
from agent.drivers.safe_actuators import safe_actuators
from agent.errors import HearthError, PeriodFailed
from agent.safety.build import build_supervisor
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from safety_invariants import actuators, is_safe


@pytest.fixture
def simulated(tmp_path):
    sim = SimulatedAgent(tmp_path, SimClock(), seed=2)
    sim.run_for(30.0)
    assert sim.agent.last_report.mode == "NORMAL"
    return sim


def test_everything_an_owner_registered_leaves_with_it(simulated):
    agent, calls = simulated.agent, []

    class Owner:
        pass

    owner, other = Owner(), Owner()
    agent.add_input(owner, lambda: calls.append("input"))
    agent.add_report_listener(owner, lambda report: calls.append("report"))
    agent.subscribe_events(owner, lambda event: calls.append("event"))
    agent.add_input(other, lambda: calls.append("other"))
    agent.record("test:one", None, "an event for the subscribers")
    simulated.run_for(1.0)
    assert {"input", "report", "event", "other"} <= set(calls)
    agent.remove(owner)
    calls.clear()
    agent.record("test:two", None, "nobody but other listens")
    simulated.run_for(1.0)
    assert set(calls) == {"other"}


def test_events_reach_subscribers_only_after_the_actuators_are_written(simulated):
    """The heat burst trips SoC critical inside the supervise step; when the subscriber hears
    of it, the kernel files already hold the SAFE settings."""
    agent, seen = simulated.agent, []
    agent.subscribe_events("test", lambda event: seen.append((event.cause, is_safe(simulated))))
    simulated.board.plant.soc_c = 78.5
    simulated.run_for(0.5)
    critical = [safe for cause, safe in seen if cause == "overtemp:SoC:critical"]
    assert critical == [True]


def test_a_controller_override_ends_with_its_block_whatever_happens(simulated):
    agent = simulated.agent
    heat_controller = agent.controller

    class Fixed:
        def update(self, now, setpoint_w, power_w, temperatures, allowed_w):
            return Decision(agent.setpoints.power_min_w, "fixed")

    with pytest.raises(KeyError):
        with agent.override_controller(Fixed()):
            assert simulated.step().selected == "fixed"
            raise KeyError("the relay test failed")
    assert agent.controller is heat_controller
    assert simulated.step().selected != "fixed"


def test_status_is_a_snapshot_nobody_can_write_through(simulated):
    status = simulated.agent.status()
    assert status.mode == "NORMAL" and status.latched == {}
    assert status.last_report is simulated.agent.last_report
    with pytest.raises(TypeError):
        status.readings["soc"] = None
    simulated.board.plant.soc_c = 78.5
    simulated.run_for(0.5)
    assert status.mode == "NORMAL"  # the old snapshot did not move
    after = simulated.agent.status()
    assert after.mode == "FAULT" and "overtemp:SoC:critical" in after.latched


def test_a_period_that_raises_leaves_the_board_safe_with_an_event_and_ends_the_loop(simulated):
    agent, seen = simulated.agent, []
    agent.subscribe_events("test", seen.append)
    agent.set_setpoint(agent.setpoints.power_max_w)
    simulated.run_for(20.0)
    assert actuators(simulated)["freq_khz"] > agent.policy.min_khz

    def broken_input():
        raise ZeroDivisionError("a bug in a part that registered an input")

    agent.add_input("buggy", broken_input)
    with pytest.raises(PeriodFailed, match="ZeroDivisionError"):
        simulated.step()
    assert is_safe(simulated)
    assert [e.cause for e in seen][-1] == "internal_error"
    assert "SAFE" in seen[-1].message and seen[-1].severity == "critical"
    assert isinstance(PeriodFailed("x"), HearthError)  # `hearth agent` exits 2 on it


class AlwaysMost:
    """A plug-in control law: the most power the config allows, whatever is measured."""

    def __init__(self, power_max_w: float):
        self.power_max_w = power_max_w
        self.calls = 0

    def update(self, now, setpoint_w, power_w, temperatures, allowed_w):
        self.calls += 1
        return Decision(self.power_max_w, "always-most")


class TopPoint:
    """A plug-in governor: the top operating point with the paid work unlimited, built on the
    agent's own drivers; SAFE the way Hearth's governor writes it."""

    def __init__(self, policy, workload, heatfill, cores):
        self.policy, self.workload, self.heatfill = policy, workload, heatfill
        self.applied = self.safe_calls = 0

    def apply(self, command_w, demand_cores, model):
        self.applied += 1
        self.policy.cap(self.policy.top_khz)
        self.workload.freeze(False)
        self.workload.set_quota(None)
        return Settings(self.policy.top_khz, None, False, 0.0, command_w)

    def safe(self, freeze_workload):
        self.safe_calls += 1
        assert not safe_actuators([self.policy], self.workload, self.heatfill, freeze_workload)
        return Settings(self.policy.min_khz, 0.05, freeze_workload, 0.0, 0.0)


def test_a_plug_in_controller_and_governor_run_inside_the_agent_and_safe_still_wins(sim_dir):
    sim = SimulatedAgent(sim_dir, SimClock(), seed=2, agent_arguments=lambda config: {
        "controller": AlwaysMost(config.limits.power_max_w), "governor": TopPoint})
    agent = sim.agent
    controller, governor = agent.controller, agent.governor
    assert isinstance(controller, AlwaysMost) and isinstance(governor, TopPoint)
    assert governor.policy is agent.policy and governor.workload is agent.workload
    sim.run_for(30.0)
    assert agent.last_report.mode == "NORMAL" and agent.last_report.selected == "always-most"
    assert actuators(sim)["freq_khz"] == agent.policy.top_khz
    assert governor.safe_calls > 0  # STARTING held it SAFE through the plug-in's safe()
    applied = governor.applied
    sim.board.plant.soc_c = 78.5  # over soc_critical_c: FAULT, whatever the plug-in wants
    sim.run_for(0.5)
    report = agent.last_report
    assert report.mode == "FAULT" and report.selected == "safe" and is_safe(sim)
    assert governor.applied == applied  # not once since the SoC jumped


def test_the_supervisor_is_the_one_the_constructor_was_given(sim_dir):
    built = []

    def recording(*arguments):
        built.append(build_supervisor(*arguments))
        return built[-1]

    sim = SimulatedAgent(sim_dir, SimClock(), seed=2, supervisor=recording)
    assert len(built) == 1 and sim.agent.supervisor is built[0]
    sim.run_for(30.0)
    assert built[0].mode.value == "NORMAL"
    sim.board.plant.soc_c = 78.5
    sim.run_for(0.5)
    assert sim.agent.last_report.mode == "FAULT" and is_safe(sim)
