"""A randomised soak: 24 simulated hours of one board with faults coming and going at random,
holding the fault matrix's invariant at every step (the loop runs at 1 Hz here so a day fits
the CI budget; the supervisor's logic is the same at any period)."""

import random

from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from safety_invariants import assert_mode_respected

DAY_S = 24 * 3600
PERIOD_S = 1.0


def faults(sim):
    """(name, inject, clear, latches) for each fault the soak draws from."""
    board, plant = sim.board, sim.board.plant

    def flag(name, value):
        return lambda: setattr(board.faults, name, value)

    return [
        ("pump off", lambda: setattr(plant, "water_flow_l_per_min", 0.0),
         lambda: setattr(plant, "water_flow_l_per_min", 0.5), False),
        ("flow meter dead", flag("flow_meter_dead", True), flag("flow_meter_dead", False), False),
        ("INA219 NACK", board.ina219.inject_nack, board.ina219.clear_faults, False),
        ("TMP117 timeout", board.tmp117.inject_timeout, board.tmp117.clear_faults, False),
        ("thermal zone gone", flag("soc_zone_absent", True), flag("soc_zone_absent", False),
         False),
        ("under-voltage", lambda: setattr(plant, "under_voltage", True),
         lambda: setattr(plant, "under_voltage", False), False),
        ("leader interlock", lambda: sim.agent.set_interlock("soak"),
         lambda: sim.agent.set_interlock(""), False),
        ("1-wire CRC", lambda: board.faults.w1_crc_error.add("water_in"),
         lambda: board.faults.w1_crc_error.discard("water_in"), False),
        ("hot inlet", lambda: setattr(plant, "water_inlet_c", 55.0),
         lambda: setattr(plant, "water_inlet_c", 30.0), False),
        ("SoC reads critical", lambda: board.faults.stuck.__setitem__("soc", 79.0),
         lambda: board.faults.stuck.pop("soc", None), True),
    ]


def test_a_day_of_random_faults_keeps_every_invariant(sim_dir):
    rng = random.Random(2026)
    sim = SimulatedAgent(sim_dir, SimClock(), seed=21,
                         extra_config="[control]\nperiod_s = 1.0\nreport_period_s = 1.0\n")
    palette = faults(sim)
    active = None
    next_change_s = 600.0
    seen_modes = set()
    injected = []
    start = sim.clock()
    for step in range(round(DAY_S / PERIOD_S)):
        elapsed_s = sim.clock() - start
        sim.agent.setpoints.contact(sim.clock())
        if step % 3600 == 0:
            sim.agent.set_setpoint(rng.uniform(2.5, 6.5), "leader")
            sim.board.plant.demand.workload_utilisation = rng.uniform(0.0, 1.0)
        if elapsed_s >= next_change_s:
            if active is None:
                active = rng.choice(palette)
                active[1]()
                injected.append(active[0])
                # a latched critical must end before it would power the board off
                next_change_s = elapsed_s + (rng.uniform(10, 100) if active[3]
                                             else rng.uniform(60, 1800))
            else:
                active[2]()
                if active[3]:
                    sim.run_for(60.0)  # let it cool before the technician's reset
                    assert sim.agent.last_report.mode == "FAULT"
                    assert sim.agent.supervisor.reset(sim.clock())[0]
                active = None
                next_change_s = elapsed_s + rng.uniform(300, 3600)
        sim.clock.advance(PERIOD_S)
        sim.board.step(PERIOD_S)
        report = sim.agent.tick()
        assert_mode_respected(sim, report)
        seen_modes.add(report.mode)
    if active is not None:
        active[2]()
        if active[3]:
            sim.run_for(60.0)
            sim.agent.supervisor.reset(sim.clock())
    sim.run_for(120.0, lambda report: sim.agent.setpoints.contact(sim.clock()))
    assert sim.agent.last_report.mode in ("NORMAL", "LIMITED"), (
        f"back to work after the day, not {sim.agent.supervisor.active}")
    assert len(injected) >= 15 and len(set(injected)) >= 6
    assert {"NORMAL", "SAFE", "FAULT"} <= seen_modes
    sim.agent.close()
