"""How other parts attach to a running BoardAgent: registered with an owner and removed by owner,
events handed out after the actuators are written, a temporary controller swapped in by a
context manager, a read-only status, and one way out when a period raises."""

import pytest

from agent.control.controller import Decision
from agent.errors import HearthError, PeriodFailed
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
