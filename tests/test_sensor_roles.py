"""Sensor roles, not names or kinds, decide what the agent and its supervisor use a sensor for:
a carrier whose sensors are named differently is protected the same way (issue 16, shape 6)."""

from pathlib import Path

import pytest

from agent.board_agent import BoardAgent
from agent.config import load_config
from agent.config_schema import LEADER_ROLE_KEYS, SENSOR_ROLES
from agent.errors import ConfigValueError
from agent.sim.board import SimulatedBoard
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from agent.sim.params import BoardParams

SHIPPED_BOARD = Path(__file__).resolve().parent.parent / "hardware" / "boards" / "oil-carrier.toml"
RENAMED = {"board_power": "rail", "oil": "bath", "water_flow": "loop_flow", "soc": "cpu",
           "throttle": "firmware"}


def test_the_shipped_carrier_gives_every_board_role(tmp_path):
    site = tmp_path / "hearth.toml"
    site.write_text('board_type = "oil-carrier"\n'
                    '[[sensor]]\nname = "water_in"\nid = "28-0316a2795eff"\n'
                    '[[sensor]]\nname = "water_out"\nid = "28-0316a27f1c2a"\n')
    assert set(load_config(site).roles) == set(SENSOR_ROLES) - set(LEADER_ROLE_KEYS)


def test_a_carrier_with_other_sensor_names_is_supervised_by_role(sim_dir):
    board = SHIPPED_BOARD.read_text(encoding="utf-8")
    for old, new in RENAMED.items():
        board = board.replace(f'name = "{old}"', f'name = "{new}"')
    (sim_dir / "boards").mkdir()
    (sim_dir / "boards" / "oil-carrier.toml").write_text(board)
    sim = SimulatedAgent(sim_dir, SimClock(0.0))
    try:
        agent = sim.agent
        assert (agent.power_reading, agent.soc_reading, agent.oil_reading) == (
            "rail.power_w", "cpu", "bath")
        assert agent.roles["flow"] == "loop_flow"
        sim.run_for(10.0)
        report = agent.last_report
        assert None not in (report.power_w, report.soc_c, report.oil_c)
        assert report.mode != "SAFE"
        sim.board.faults.flow_meter_dead = True  # pulses stop: the meter reads 0 L/min
        sim.run_for(20.0)
        assert "flow_lost" in agent.status().active
        assert agent.status().mode == "SAFE"
    finally:
        sim.agent.close()


def test_a_board_definition_without_the_power_and_soc_roles_fails_closed(tmp_path):
    """A custom board definition written before roles (its sensors found by kind before) must
    not start an agent that neither holds power nor protects the SoC."""
    board = SHIPPED_BOARD.read_text(encoding="utf-8")
    unroled = "\n".join(line for line in board.splitlines()
                        if not line.strip().startswith("role ="))
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards/old-carrier.toml").write_text(unroled + "\n")
    simulated = SimulatedBoard(tmp_path / "root", SimClock(), BoardParams())
    config_path = tmp_path / "hearth.toml"
    config_path.write_text('board_type = "old-carrier"\n' + simulated.sensor_config())
    config = load_config(config_path)
    with pytest.raises(ConfigValueError, match=r"no \[\[sensor\]\] has role 'power' or 'soc'"):
        BoardAgent(config, simulated.hardware)
