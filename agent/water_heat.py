"""Heat carried into a water loop, Q = m_dot * c_p * (T_out - T_in) (DESIGN.md section 7): one
formula for the board's state report and the leader's module heat meter, so the two figures a
building's owner compares are computed alike."""

import math

WATER_CP_J_PER_KG_K = 4180.0
WATER_KG_PER_L = 1.0
"""Close enough for a heating loop at 20-70 C (0.978-0.998 kg/L): the meter's own error is
larger."""


def heat_w(flow_l_per_min: float | None, inlet_c: float | None,
           outlet_c: float | None) -> float | None:
    """Heat into the water in watts, or None when any input is unknown or not finite: a heat
    figure built on a missing reading would be a guess."""
    if flow_l_per_min is None or inlet_c is None or outlet_c is None:
        return None
    if not all(math.isfinite(value) for value in (flow_l_per_min, inlet_c, outlet_c)):
        return None
    return flow_l_per_min / 60.0 * WATER_KG_PER_L * WATER_CP_J_PER_KG_K * (outlet_c - inlet_c)
