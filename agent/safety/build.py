"""Builds a board's supervisor from its config: which readings are checked, and how."""

import math
from collections.abc import Mapping

from agent.safety.checks import (
    FlowLoss, Level, Plausible, SensorHealth, SupplyHealth, TemperatureStages, ThermalRunaway)
from agent.safety.events import EventLog
from agent.safety.shutdown import ShutdownPath
from agent.safety.supervisor import SafetySettings, Supervisor

# Noise: power as an INA219/INA226 reads a steady board (a few tens of mW); the SoC as the
# thermal zone quantises it (about 0.5 C a step on a Pi 4); the slow sensors as their chips
# resolve them (never judged stuck: see below).
POWER_PLAUSIBLE = Plausible(0.0, 15.0, math.inf, noise=0.05)
SOC_PLAUSIBLE = Plausible(-20.0, 110.0, 20.0, noise=0.5)
OIL_PLAUSIBLE = Plausible(-20.0, 120.0, 2.0, noise=0.1)
FLOW_PLAUSIBLE = Plausible(0.0, 60.0, math.inf, noise=0.05)
WATER_PLAUSIBLE = Plausible(0.0, 100.0, 5.0, noise=0.5)
STUCK_S = 120.0
MIN_FLOW_L_PER_MIN = 0.1
FLOW_GRACE_S = 10.0


def build_supervisor(limits, roles: Mapping[str, str], events: EventLog,
                     shutdown: ShutdownPath, now: float,
                     latched: dict[str, str] | None = None,
                     settings: SafetySettings = SafetySettings()) -> Supervisor:
    """`roles` maps the board's sensor roles to their readings (config.roles); a role that is
    not there has no check of its own, and flow loss and supply health stand down without
    theirs."""
    # The water temperatures only feed reports, a notice when they fail; they rightly hold
    # still while the power moves: no stuck check there.
    sensor_checks = [SensorHealth(roles[role], WATER_PLAUSIBLE, math.inf, Level.NOTICE)
                     for role in ("water_in", "water_out") if role in roles]
    # Stuck is judged only on what answers a power change within seconds (power, SoC): the
    # oil bath's time constant is many minutes, and a quantised slow reading rightly holds.
    for role, plausible, stuck_s in (("power", POWER_PLAUSIBLE, STUCK_S),
                                     ("soc", SOC_PLAUSIBLE, STUCK_S),
                                     ("oil", OIL_PLAUSIBLE, math.inf),
                                     ("flow", FLOW_PLAUSIBLE, math.inf)):
        if roles.get(role):
            sensor_checks.append(SensorHealth(roles[role], plausible, stuck_s))
    checks: list = []
    if roles.get("soc"):
        checks.append(TemperatureStages("SoC", roles["soc"], limits.soc_warning_c,
                                        limits.soc_limit_c, limits.soc_critical_c,
                                        limits.hysteresis_c, limits.power_min_w))
        checks.append(ThermalRunaway(roles["soc"], limits.soc_warning_c, roles.get("power")))
    if roles.get("oil"):
        checks.append(TemperatureStages("oil", roles["oil"], limits.oil_warning_c,
                                        limits.oil_limit_c, limits.oil_critical_c,
                                        limits.hysteresis_c, limits.power_min_w))
    checks.append(FlowLoss(roles.get("flow"), MIN_FLOW_L_PER_MIN, FLOW_GRACE_S))
    checks.append(SupplyHealth(roles.get("throttle"), limits.power_min_w, limits.power_max_w))
    return Supervisor(sensor_checks, checks, settings, limits.power_min_w, limits.power_max_w, events,
                      shutdown, now, latched)
