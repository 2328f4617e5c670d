"""The board's power model, learned online: watts from frequency and busy cores.

    P = idle_w + busy_cores * (linear_w * x + cubic_w * x**3),   x = f / f_top

Dynamic power goes with f * V^2 and V rises with f, so a linear and a cubic term in x cover
the curve of any board without knowing its voltage table. Recursive least squares with
forgetting keeps the three coefficients following the board as it ages or the oil warms.
The governor inverts the model to turn a power command into settings in one step (the
feed-forward); the power PID only trims what the model gets wrong.

The estimator runs for months at 10 Hz, mostly on settings held steady or at the top frequency,
where the linear and cubic terms cannot be told apart. The textbook update P - k phi' P is not
symmetric in floating point and, with nothing new to learn, lost positive definiteness within an
hour (a negative variance, then a zero gain denominator). So the covariance is kept in a bounded,
regularised form that stays symmetric positive definite by construction:

    P <- (P - q q' / d) / lambda + drift * I,   q = P phi,  d = lambda + phi' q,
    then scaled down to MAX_COVARIANCE_TRACE if its trace is above it.

q q' is symmetric term by term, (P - q q'/d) is positive semidefinite for any positive definite
P, the drift term keeps every eigenvalue above ~DRIFT (far above rounding at this scale; it is
also the honest model of coefficients that wander), and the trace bound stops wind-up when the
settings stay put. Anything that still goes wrong (a non-finite or runaway coefficient, a
covariance that fails its positive-definiteness check) puts the model back to its priors, and
`learn` says so by returning False: it never raises into the control loop.
"""

import math

FORGETTING = 0.999
MAX_COVARIANCE_TRACE = 100.0
"""The covariance is scaled down to this trace: with settings held constant there is nothing new
to learn, and forgetting alone would let it grow without bound (RLS wind-up)."""
DRIFT = 1e-8
"""Added to each variance every update (W^2): the random walk of coefficients that follow a board
as it ages. Keeps the smallest eigenvalue near 1e-4 W^2 at steady settings, some ten orders
above the rounding error of a covariance bounded at MAX_COVARIANCE_TRACE."""
COEFFICIENT_LIMIT_W = 1000.0
"""A coefficient beyond this has run away: a Pi draws a few watts."""


def features(x: float, busy_cores: float) -> tuple[float, float, float]:
    return 1.0, busy_cores * x, busy_cores * x * x * x


def is_positive_definite(p00: float, p01: float, p02: float, p11: float, p12: float,
                         p22: float) -> bool:
    """Sylvester's criterion on a symmetric 3x3 matrix (every leading minor positive); False
    for NaN too."""
    minor2 = p00 * p11 - p01 * p01
    determinant = (p00 * (p11 * p22 - p12 * p12) - p01 * (p01 * p22 - p12 * p02)
                   + p02 * (p01 * p12 - p11 * p02))
    return p00 > 0.0 and minor2 > 0.0 and determinant > 0.0


class PowerModel:
    """Three coefficients and the six distinct entries of their symmetric 3x3 covariance,
    written out term by term: the governor predicts a dozen times and the model learns once
    every period, in every agent of a simulated site, and explicit scalar algebra is several
    times faster than loops."""

    def __init__(self, idle_w: float, core_w_at_top: float, covariance: float = 10.0):
        """Priors: idle power and one busy core's power at the top frequency."""
        self.priors = (idle_w, core_w_at_top, 0.0)
        self.prior_variance = covariance
        self.coefficients = self.priors
        self._covariance = (covariance, 0.0, 0.0, covariance, 0.0, covariance)
        """p00, p01, p02, p11, p12, p22."""

    @property
    def idle_w(self) -> float:
        return self.coefficients[0]

    @property
    def covariance(self) -> tuple[tuple[float, float, float], ...]:
        """The full 3x3 matrix, for tests and diagnostics."""
        p00, p01, p02, p11, p12, p22 = self._covariance
        return (p00, p01, p02), (p01, p11, p12), (p02, p12, p22)

    def predict_w(self, x: float, busy_cores: float) -> float:
        idle_w, linear_w, cubic_w = self.coefficients
        return idle_w + busy_cores * x * (linear_w + cubic_w * x * x)

    def core_w(self, x: float) -> float:
        """Power of one busy core at relative frequency x (never below a small positive floor,
        so the governor can always divide by it)."""
        _, linear_w, cubic_w = self.coefficients
        return max(0.01, linear_w * x + cubic_w * x * x * x)

    def reset(self) -> None:
        """Back to the priors: what a freshly started agent would believe."""
        self.coefficients = self.priors
        variance = self.prior_variance
        self._covariance = (variance, 0.0, 0.0, variance, 0.0, variance)

    def learn(self, x: float, busy_cores: float, measured_w: float) -> bool:
        """One update from settings that were in force while `measured_w` was measured.
        Returns False when the estimate had degenerated and the model went back to its priors."""
        f1, f2 = busy_cores * x, busy_cores * x * x * x  # f0 is 1.0
        p00, p01, p02, p11, p12, p22 = self._covariance
        q0 = p00 + p01 * f1 + p02 * f2  # P phi
        q1 = p01 + p11 * f1 + p12 * f2
        q2 = p02 + p12 * f1 + p22 * f2
        denominator = FORGETTING + q0 + f1 * q1 + f2 * q2
        if not denominator > 0.0:  # only a covariance already broken gets here (NaN included)
            self.reset()
            return False
        c0, c1, c2 = self.coefficients
        error = (measured_w - (c0 + c1 * f1 + c2 * f2)) / denominator
        c0, c1, c2 = c0 + q0 * error, c1 + q1 * error, c2 + q2 * error
        s0, s1, s2 = q0 / denominator, q1 / denominator, q2 / denominator
        scale = 1.0 / FORGETTING
        p00 = (p00 - s0 * q0) * scale + DRIFT
        p11 = (p11 - s1 * q1) * scale + DRIFT
        p22 = (p22 - s2 * q2) * scale + DRIFT
        trace = p00 + p11 + p22
        if trace > MAX_COVARIANCE_TRACE:
            shrink = MAX_COVARIANCE_TRACE / trace
            scale *= shrink
            p00, p11, p22 = p00 * shrink, p11 * shrink, p22 * shrink
        p01 = (p01 - s0 * q1) * scale
        p02 = (p02 - s0 * q2) * scale
        p12 = (p12 - s1 * q2) * scale
        if not (abs(c0) < COEFFICIENT_LIMIT_W and abs(c1) < COEFFICIENT_LIMIT_W
                and abs(c2) < COEFFICIENT_LIMIT_W
                and is_positive_definite(p00, p01, p02, p11, p12, p22)):
            self.reset()
            return False
        self.coefficients = (c0, c1, c2)
        self._covariance = (p00, p01, p02, p11, p12, p22)
        return True
