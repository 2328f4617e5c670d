"""The module's sensors (the leader's roles) are read by the leader, not by the board agent on
the same board (docs/leader.md "Module sensors")."""

import pytest

from agent.commands.leader import ModuleSensors
from agent.config import load_config
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

LEADER_CONFIG = """
[leader]
water_in_reading = "module_in"
water_out_reading = "module_out"
flow_reading = "module_flow"
oil_reading = "oil"

[[sensor]]
name = "module_in"
kind = "ds18b20"
id = "28-00000000aaa1"

[[sensor]]
name = "module_out"
kind = "ds18b20"
id = "28-00000000aaa2"

[[sensor]]
name = "module_flow"
kind = "flow"
pin = 27
pulses_per_litre = 450.0
"""

# The same module sensors declared by role; the board's own oil still named by [leader], the
# one way to give a sensor with a board role to the leader as well.
LEADER_CONFIG_BY_ROLE = """
[leader]
oil_reading = "oil"

[[sensor]]
name = "module_in"
kind = "ds18b20"
id = "28-00000000aaa1"
role = "module_water_in"

[[sensor]]
name = "module_out"
kind = "ds18b20"
id = "28-00000000aaa2"
role = "module_water_out"

[[sensor]]
name = "module_flow"
kind = "flow"
pin = 27
pulses_per_litre = 450.0
role = "module_flow"
"""


@pytest.mark.parametrize("leader_config", [LEADER_CONFIG, LEADER_CONFIG_BY_ROLE],
                         ids=["leader keys", "roles"])
def test_board_agent_skips_module_sensors_but_keeps_its_own(sim_dir, leader_config):
    sim = SimulatedAgent(sim_dir / "leader-board", SimClock(0.0), extra_config=leader_config)
    try:
        config = load_config(sim.config_path)
        assert {"module_in", "module_out", "module_flow"} <= {s.name for s in config.sensors}
        # "oil" is the board definition's own sensor: it stays the board's (its oil limit)
        assert config.leader_only_sensors == {"module_in", "module_out", "module_flow"}
        built = {sensor.name for sensor in sim.agent.sensors}
        assert not built & {"module_in", "module_out", "module_flow"}
        assert {"oil", "water_in", "water_out", "water_flow"} <= built
        assert sim.agent.roles["flow"] == "water_flow"
        assert sim.agent.oil_reading == "oil"
        sim.run_for(1.0)
        assert not {r.split(".")[0] for r in sim.agent.readings} & {"module_in", "module_flow"}
        # the leader's process builds exactly the module's sensors
        sensors = ModuleSensors(config, sim.board.hardware)
        try:
            assert {s.name for s in sensors.sensors} == {"module_in", "module_out",
                                                          "module_flow", "oil"}
            assert sensors.readings == {"module_water_in": "module_in",
                                        "module_water_out": "module_out",
                                        "module_flow": "module_flow", "module_oil": "oil"}
        finally:
            sensors.close()
    finally:
        sim.agent.close()


def test_board_without_leader_section_builds_every_sensor(sim_dir):
    sim = SimulatedAgent(sim_dir / "board", SimClock(0.0))
    try:
        config = load_config(sim.config_path)
        assert config.leader_only_sensors == frozenset()
        assert {s.name for s in sim.agent.sensors} == {s.name for s in config.sensors}
    finally:
        sim.agent.close()
