"""Healthy boards must not trip: the false positives the simulated-day benchmark found."""

from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent


def run_under_leader(sim: SimulatedAgent, seconds: float, modes: set) -> None:
    """Run with the leader in contact, collecting every mode the board reports."""
    sim.run_for(seconds, lambda report: (sim.agent.setpoints.contact(sim.clock()),
                                         modes.add(report.mode)))


def assert_never_tripped(sim: SimulatedAgent, modes: set) -> None:
    causes = [e.cause for e in sim.agent.events.events
              if e.severity in ("error", "critical") and e.mode != "STARTING"]
    assert causes == []
    assert modes <= {"STARTING", "NORMAL", "LIMITED"}


def test_steady_high_power_for_minutes_trips_nothing(sim_dir):
    """SoC at equilibrium under steady heavy heat (no rise expected) and a slow, quantised oil
    reading that holds its value for minutes are both normal."""
    sim = SimulatedAgent(sim_dir, SimClock(), seed=4)
    sim.agent.set_setpoint(5.9, "leader")
    modes = set()
    run_under_leader(sim, 900, modes)
    sim.board.plant.demand.workload_utilisation = 0.6  # the power loop moves, the oil barely
    run_under_leader(sim, 300, modes)
    assert_never_tripped(sim, modes)
    sim.agent.close()


def test_board_held_at_its_floor_trips_nothing(sim_dir):
    """Asked for its floor, a board idles: the power loop's command winds below what the board
    can draw while the power reading holds still, which is no stuck sensor (the simulated site
    found this at its 1 s board period)."""
    sim = SimulatedAgent(sim_dir, SimClock(), seed=5, extra_config="[control]\nperiod_s = 1.0\n")
    sim.agent.set_setpoint(sim.agent.setpoints.power_min_w, "leader")
    modes = set()
    run_under_leader(sim, 600, modes)
    assert_never_tripped(sim, modes)
    sim.agent.close()
