"""The learned power model (agent/control/power_model.py): its term-by-term RLS update is the
textbook matrix form, and it finds a board's real coefficients from what the board draws."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.power_model import FORGETTING, MAX_COVARIANCE_TRACE, PowerModel, features


def textbook_learn(theta, p, x, busy_cores, measured_w):
    """Recursive least squares with forgetting, as the matrix form reads, with plain loops."""
    phi = features(x, busy_cores)
    forgetting = FORGETTING if sum(p[i][i] for i in range(3)) < MAX_COVARIANCE_TRACE else 1.0
    p_phi = [sum(p[i][j] * phi[j] for j in range(3)) for i in range(3)]
    gain = [v / (forgetting + sum(phi[i] * p_phi[i] for i in range(3))) for v in p_phi]
    error = measured_w - sum(t * f for t, f in zip(theta, phi))
    theta = [t + g * error for t, g in zip(theta, gain)]
    p = [[(p[i][j] - gain[i] * p_phi[j]) / forgetting for j in range(3)] for i in range(3)]
    return theta, p


samples = st.lists(st.tuples(st.floats(0.3, 1.0), st.floats(0.0, 4.0), st.floats(0.0, 15.0)),
                   min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(samples, st.floats(1.0, 4.0), st.floats(0.2, 2.0))
def test_term_by_term_update_is_the_matrix_form(history, idle_w, core_w):
    model = PowerModel(idle_w, core_w)
    theta = [idle_w, core_w, 0.0]
    p = [[10.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    for x, busy_cores, measured_w in history:
        model.learn(x, busy_cores, measured_w)
        theta, p = textbook_learn(theta, p, x, busy_cores, measured_w)
        for ours, theirs in zip(model.coefficients, theta):
            assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9)
        expected_w = sum(t * f for t, f in zip(theta, features(x, busy_cores)))
        assert math.isclose(model.predict_w(x, busy_cores), expected_w, rel_tol=1e-9,
                            abs_tol=1e-9)


def test_learns_a_boards_real_curve_from_wrong_priors():
    def board_w(x, cores):  # a Pi 4's shape: 2.7 W idle, cubic rise towards 1.5 GHz
        return 2.7 + cores * (0.35 * x + 0.6 * x ** 3)

    model = PowerModel(idle_w=2.0, core_w_at_top=1.5)
    operating = [(x / 15, cores) for x in range(6, 16) for cores in (0.5, 1, 2, 3, 4)]
    for _ in range(20):
        for x, cores in operating:
            model.learn(x, cores, board_w(x, cores))
    for x, cores in operating:
        assert abs(model.predict_w(x, cores) - board_w(x, cores)) < 0.02
    assert abs(model.idle_w - 2.7) < 0.02
