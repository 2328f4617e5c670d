"""The board's power model, learned online: watts from frequency and busy cores.

    P = idle_w + busy_cores * (linear_w * x + cubic_w * x**3),   x = f / f_top

Dynamic power goes with f * V^2 and V rises with f, so a linear and a cubic term in x cover
the curve of any board without knowing its voltage table. Recursive least squares with
forgetting keeps the three coefficients following the board as it ages or the oil warms.
The governor inverts the model to turn a power command into settings in one step (the
feed-forward); the power PID only trims what the model gets wrong.
"""

FORGETTING = 0.999
MAX_COVARIANCE_TRACE = 100.0
"""Past this, forgetting stops: with settings held constant there is nothing new to learn,
and forgetting would let the covariance grow without bound (RLS wind-up)."""


def features(x: float, busy_cores: float) -> tuple[float, float, float]:
    return 1.0, busy_cores * x, busy_cores * x * x * x


class PowerModel:
    """Three coefficients and their 3x3 covariance, written out term by term: the governor
    predicts a dozen times and the model learns once every period, in every agent of a
    simulated site, and explicit scalar algebra is several times faster than loops."""

    def __init__(self, idle_w: float, core_w_at_top: float, covariance: float = 10.0):
        """Priors: idle power and one busy core's power at the top frequency."""
        self.coefficients = (idle_w, core_w_at_top, 0.0)
        self._covariance = ((covariance, 0.0, 0.0), (0.0, covariance, 0.0),
                            (0.0, 0.0, covariance))

    @property
    def idle_w(self) -> float:
        return self.coefficients[0]

    def predict_w(self, x: float, busy_cores: float) -> float:
        idle_w, linear_w, cubic_w = self.coefficients
        return idle_w + busy_cores * x * (linear_w + cubic_w * x * x)

    def core_w(self, x: float) -> float:
        """Power of one busy core at relative frequency x (never below a small positive floor,
        so the governor can always divide by it)."""
        _, linear_w, cubic_w = self.coefficients
        return max(0.01, linear_w * x + cubic_w * x * x * x)

    def learn(self, x: float, busy_cores: float, measured_w: float) -> None:
        """One RLS update from settings that were in force while `measured_w` was measured:
        gain k = P phi / (lambda + phi' P phi), theta += k * error, P = (P - k phi' P) / lambda."""
        f0, f1, f2 = features(x, busy_cores)
        (p00, p01, p02), (p10, p11, p12), (p20, p21, p22) = self._covariance
        forgetting = FORGETTING if p00 + p11 + p22 < MAX_COVARIANCE_TRACE else 1.0
        q0 = p00 * f0 + p01 * f1 + p02 * f2  # P phi
        q1 = p10 * f0 + p11 * f1 + p12 * f2
        q2 = p20 * f0 + p21 * f1 + p22 * f2
        denominator = forgetting + f0 * q0 + f1 * q1 + f2 * q2
        k0, k1, k2 = q0 / denominator, q1 / denominator, q2 / denominator
        c0, c1, c2 = self.coefficients
        error = measured_w - (c0 * f0 + c1 * f1 + c2 * f2)
        self.coefficients = (c0 + k0 * error, c1 + k1 * error, c2 + k2 * error)
        self._covariance = (
            ((p00 - k0 * q0) / forgetting, (p01 - k0 * q1) / forgetting,
             (p02 - k0 * q2) / forgetting),
            ((p10 - k1 * q0) / forgetting, (p11 - k1 * q1) / forgetting,
             (p12 - k1 * q2) / forgetting),
            ((p20 - k2 * q0) / forgetting, (p21 - k2 * q1) / forgetting,
             (p22 - k2 * q2) / forgetting))
