"""What every safety test checks at every step: the actuators never exceed what the mode allows."""

import math

SAFE_MODES = {"STARTING", "SAFE", "FAULT", "SHUTDOWN"}


def actuators(sim) -> dict:
    """What the simulated kernel holds right now, read from the fake sysfs tree."""
    board = sim.board
    workload, heatfill = board.workload_files, board.heatfill_files
    quota, _, period = workload.cpu_max.read_text().strip().partition(" ")
    return {
        "freq_khz": int(board.sysfs.scaling_max_freq.read_text()),
        "workload_cpus": math.inf if quota == "max" else int(quota) / int(period),
        "workload_frozen": workload.freeze.read_text().strip() == "1",
        "heatfill_frozen": heatfill.freeze.read_text().strip() == "1",
    }


def is_safe(sim) -> bool:
    """SAFE settings: lowest frequency, workload frozen or at minimum quota, heat-fill stopped."""
    state = actuators(sim)
    return (state["freq_khz"] == sim.agent.policy.min_khz and state["heatfill_frozen"]
            and (state["workload_frozen"] or state["workload_cpus"] <= 0.05))


def assert_mode_respected(sim, report) -> None:
    """At every step: nothing beyond what the mode allows."""
    if report.mode in SAFE_MODES:
        assert is_safe(sim), f"{report.mode} with actuators {actuators(sim)}"
    if report.mode == "LIMITED":
        ceilings = [f.max_power_w for f in sim.agent.supervisor.active.values()]
        assert report.command_w <= min(ceilings + [math.inf]) + 1e-9
