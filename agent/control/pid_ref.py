"""Pure-Python mirror of the compiled PID core (cext/cpid.pyx): same API, identical numerics.

This module is the readable reference and the fallback where the extension is not built
(HEARTH_PURE_PYTHON=1 forces it; see agent/control/pid.py). Every arithmetic expression here is
written in the same operation order as in cext/cpid.pyx, so that, on IEEE-754 doubles with
round-to-nearest and no fused multiply-add (the extension is compiled with -ffp-contract=off),
both produce bit-for-bit the same outputs and state. Change one, change the other in the same
commit; tests/test_pid.py drives random sequences through both and demands exact equality.

Inputs are converted with float() first, as Cython converts them to C doubles, so ints and
numpy scalars behave the same in both.
"""

import math


def _check_gain(name, value):
    gain = float(value)
    if not (math.isfinite(gain) and gain >= 0.0):
        raise ValueError(
            f"PID gain {name} must be a finite number >= 0, got {gain!r}; check the loop's tuning"
        )
    return gain


def _check_finite(name, value):
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"PID {name} must be a finite number, got {number!r}")
    return number


class PID:
    """Positional PID: derivative on a filtered measurement, anti-windup, bumpless changes.

    See cext/cpid.pyx for the full contract; the two classes document the same behaviour and
    the docstrings of the methods here are kept short on purpose to point there.
    """

    __slots__ = (
        "_kp", "_ki", "_kd", "_derivative_filter_s", "_output_min", "_output_max",
        "_integral", "_derivative", "_output", "_manual", "_manual_output",
        "_has_history", "_last_time_s", "_last_measured", "_last_error",
    )

    def __init__(self, *, kp, ki, kd, output_min, output_max, derivative_filter_s):
        self._kp = _check_gain("kp", kp)
        self._ki = _check_gain("ki", ki)
        self._kd = _check_gain("kd", kd)
        self._derivative_filter_s = float(derivative_filter_s)
        if not (math.isfinite(self._derivative_filter_s) and self._derivative_filter_s >= 0.0):
            raise ValueError(
                "PID derivative_filter_s must be a finite number of seconds >= 0, "
                f"got {self._derivative_filter_s!r}"
            )
        self._output_min = 0.0
        self._output_max = 0.0
        self._set_limit_values(output_min, output_max)
        self._integral = 0.0
        self._derivative = 0.0
        self._output = self._output_min
        self._manual = False
        self._manual_output = self._output_min
        self._has_history = False
        self._last_time_s = 0.0
        self._last_measured = 0.0
        self._last_error = 0.0

    kp = property(lambda self: self._kp, doc="Proportional gain (output units per unit error).")
    ki = property(lambda self: self._ki, doc="Integral gain (output units per unit error-second).")
    kd = property(lambda self: self._kd, doc="Derivative gain (output units per unit/s of measured).")
    derivative_filter_s = property(lambda self: self._derivative_filter_s,
                                   doc="Time constant of the derivative's low-pass filter, s.")
    output_min = property(lambda self: self._output_min, doc="Lowest output this PID commands.")
    output_max = property(lambda self: self._output_max, doc="Highest output this PID commands.")
    output = property(lambda self: self._output,
                      doc="The held output: last command, or the tracked applied output.")
    integral = property(lambda self: self._integral, doc="Integral term, in output units.")
    derivative = property(lambda self: self._derivative,
                          doc="Filtered rate of change of the measurement, units per second.")
    manual = property(lambda self: self._manual, doc="True while in manual mode.")

    def _clamp(self, value):
        if value > self._output_max:
            return self._output_max
        if value < self._output_min:
            return self._output_min
        return value

    def _align(self):
        """Set the integral so that the unclamped output equals the held output right now."""
        if self._has_history:
            self._integral = self._output - self._kp * self._last_error + self._kd * self._derivative

    def _set_limit_values(self, output_min, output_max):
        low = _check_finite("output_min", output_min)
        high = _check_finite("output_max", output_max)
        if not low < high:
            raise ValueError(
                f"PID output_min ({low!r}) must be below output_max ({high!r}); "
                "check the loop's configured limits"
            )
        self._output_min = low
        self._output_max = high

    def update(self, now, measured, target):
        """One control step at time `now` (s); returns the command. See cext/cpid.pyx."""
        now = float(now)
        measured = float(measured)
        target = float(target)
        if not (math.isfinite(now) and math.isfinite(measured) and math.isfinite(target)):
            self._has_history = False
            return self._output
        error = target - measured
        if not self._has_history:
            self._has_history = True
            self._last_time_s = now
            self._last_measured = measured
            self._last_error = error
            self._derivative = 0.0
            if self._manual:
                self._output = self._manual_output
            self._align()
            return self._output
        dt_s = now - self._last_time_s
        if dt_s <= 0.0:
            return self._output
        rate = (measured - self._last_measured) / dt_s
        self._derivative = self._derivative + (rate - self._derivative) * (
            dt_s / (self._derivative_filter_s + dt_s))
        self._last_time_s = now
        self._last_measured = measured
        self._last_error = error
        if self._manual:
            self._output = self._manual_output
            self._align()
            return self._output
        proportional = self._kp * error
        derivative_term = self._kd * self._derivative
        integral_step = self._ki * error * dt_s
        integral = self._integral + integral_step
        unclamped = proportional + integral - derivative_term
        if unclamped > self._output_max:
            output = self._output_max
            if integral_step > 0.0:
                ceiling = output - proportional + derivative_term
                integral = ceiling if ceiling > self._integral else self._integral
        elif unclamped < self._output_min:
            output = self._output_min
            if integral_step < 0.0:
                floor = output - proportional + derivative_term
                integral = floor if floor < self._integral else self._integral
        else:
            output = unclamped
        self._integral = integral
        self._output = output
        return output

    def track(self, applied_output):
        """Report the output actually applied; a loop not in charge back-calculates its integral."""
        applied = float(applied_output)
        if not math.isfinite(applied):
            return
        held = self._clamp(applied)
        if held == self._output:
            return
        self._output = held
        self._align()

    def track_reset(self, applied_output):
        """External reset feedback for a loop a selector did not choose. See cext/cpid.pyx."""
        applied = float(applied_output)
        if not math.isfinite(applied) or self._manual:
            return
        self._integral = self._clamp(applied)
        if self._has_history:
            self._output = self._clamp(
                self._kp * self._last_error + self._integral - self._kd * self._derivative)
        else:
            self._output = self._integral

    def set_gains(self, kp, ki, kd):
        """Change gains bumplessly: the integral absorbs the change of the P and D terms."""
        new_kp = _check_gain("kp", kp)
        new_ki = _check_gain("ki", ki)
        new_kd = _check_gain("kd", kd)
        self._kp = new_kp
        self._ki = new_ki
        self._kd = new_kd
        self._align()

    def set_limits(self, output_min, output_max):
        """Change output limits; the held output moves only as far as the new limits force."""
        self._set_limit_values(output_min, output_max)
        self._output = self._clamp(self._output)
        self._manual_output = self._clamp(self._manual_output)
        self._align()

    def set_manual(self, output):
        """Enter (or stay in) manual mode commanding `output`, clamped to the limits."""
        self._manual_output = self._clamp(_check_finite("manual output", output))
        self._manual = True
        self._output = self._manual_output
        self._align()

    def set_auto(self):
        """Return to automatic; the next update continues from the held output."""
        self._manual = False

    def reset(self, output=None):
        """Forget time, measurement and derivative history; restart bumplessly from `output`."""
        if output is not None:
            self._output = self._clamp(_check_finite("reset output", output))
        self._has_history = False
        self._integral = 0.0
        self._derivative = 0.0
