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
    def __init__(self, idle_w: float, core_w_at_top: float, covariance: float = 10.0):
        """Priors: idle power and one busy core's power at the top frequency."""
        self.coefficients = [idle_w, core_w_at_top, 0.0]
        self._covariance = [[covariance if i == j else 0.0 for j in range(3)]
                            for i in range(3)]

    @property
    def idle_w(self) -> float:
        return self.coefficients[0]

    def predict_w(self, x: float, busy_cores: float) -> float:
        return sum(c * f for c, f in zip(self.coefficients, features(x, busy_cores)))

    def core_w(self, x: float) -> float:
        """Power of one busy core at relative frequency x (never below a small positive floor,
        so the governor can always divide by it)."""
        _, linear_w, cubic_w = self.coefficients
        return max(0.01, linear_w * x + cubic_w * x * x * x)

    def learn(self, x: float, busy_cores: float, measured_w: float) -> None:
        """One RLS update from settings that were in force while `measured_w` was measured."""
        phi = features(x, busy_cores)
        p = self._covariance
        forgetting = FORGETTING if sum(p[i][i] for i in range(3)) < MAX_COVARIANCE_TRACE else 1.0
        p_phi = [sum(p[i][j] * phi[j] for j in range(3)) for i in range(3)]
        denominator = forgetting + sum(phi[i] * p_phi[i] for i in range(3))
        gain = [v / denominator for v in p_phi]
        error = measured_w - self.predict_w(x, busy_cores)
        self.coefficients = [c + g * error for c, g in zip(self.coefficients, gain)]
        for i in range(3):
            for j in range(3):
                p[i][j] = (p[i][j] - gain[i] * p_phi[j]) / forgetting
