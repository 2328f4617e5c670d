# Compiled PID core of the board control loop, built as agent.control._cpid (DESIGN.md section 3).
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled PID core; agent/control/pid_ref.py is its pure-Python mirror with identical numerics.

Numerics contract: every expression below has the same operation order as the mirror, so that
on IEEE-754 doubles (round-to-nearest) both give bit-for-bit the same outputs and state. That
only holds if the C compiler does not fuse a*b+c into one fused multiply-add, which GCC does by
default wherever the target has FMA (every aarch64 board). setup.py therefore compiles this file
with -ffp-contract=off, and this file also asks for it with a pragma below; a cross-compile of
this file must keep both that flag and -DPy_LIMITED_API=0x030B0000 (stable ABI: one build loads
on CPython 3.11 to 3.13). Never build it with -ffast-math. Division by zero cannot happen:
every divisor is a positive dt or (filter time constant + dt), so cdivision is safe.

The file is self-contained (no other C sources) so that it can be cross-compiled on its own.
"""

cimport cython
from libc.math cimport isfinite

cdef extern from *:
    """
    #if defined(__clang__)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC optimize ("fp-contract=off")
    #endif
    """


cdef double _check_gain(str name, value) except? -1.0:
    cdef double gain = float(value)
    if not (isfinite(gain) and gain >= 0.0):
        raise ValueError(
            f"PID gain {name} must be a finite number >= 0, got {gain!r}; check the loop's tuning"
        )
    return gain


cdef double _check_finite(str name, value) except? -1.0:
    cdef double number = float(value)
    if not isfinite(number):
        raise ValueError(f"PID {name} must be a finite number, got {number!r}")
    return number


@cython.final
cdef class PID:
    """Positional PID: derivative on a filtered measurement, anti-windup, bumpless changes.

    A small control law with no I/O, no clock and no logging (Klipper's ControlPID is the
    model): time comes in with each sample, so simulated hours run in milliseconds. Every number
    comes from the caller (keyword-only, no defaults), so no constant lives here that the mirror
    could disagree with.

    PID(*, kp, ki, kd, output_min, output_max, derivative_filter_s)

    * kp, ki, kd: finite and >= 0 (ValueError otherwise). The command is
      kp*(target - measured) + integral - kd*d(measured)/dt; for a reverse-acting loop (e.g. a
      temperature limit, where more power means more heat) pass measured and target so that
      a positive error asks for more output: for the limit loop, target=limit, measured=temp.
    * output_min < output_max, finite: every command lies in [output_min, output_max].
    * derivative_filter_s >= 0: time constant of the first-order low-pass filter on the
      derivative of the measurement (0 = unfiltered).

    A new PID holds output_min (the cold, safe side for a heater) until its first update.
    """

    cdef readonly double kp
    cdef readonly double ki
    cdef readonly double kd
    cdef readonly double derivative_filter_s
    cdef readonly double output_min
    cdef readonly double output_max
    cdef readonly double integral
    cdef readonly double derivative
    cdef readonly double output
    cdef readonly bint manual
    cdef double _manual_output
    cdef bint _has_history
    cdef double _last_time_s
    cdef double _last_measured
    cdef double _last_error

    def __init__(self, *, kp, ki, kd, output_min, output_max, derivative_filter_s):
        self.kp = _check_gain("kp", kp)
        self.ki = _check_gain("ki", ki)
        self.kd = _check_gain("kd", kd)
        self.derivative_filter_s = float(derivative_filter_s)
        if not (isfinite(self.derivative_filter_s) and self.derivative_filter_s >= 0.0):
            raise ValueError(
                "PID derivative_filter_s must be a finite number of seconds >= 0, "
                f"got {self.derivative_filter_s!r}"
            )
        self._set_limit_values(output_min, output_max)
        self.integral = 0.0
        self.derivative = 0.0
        self.output = self.output_min
        self.manual = False
        self._manual_output = self.output_min
        self._has_history = False
        self._last_time_s = 0.0
        self._last_measured = 0.0
        self._last_error = 0.0

    cdef inline double _clamp(self, double value) noexcept:
        if value > self.output_max:
            return self.output_max
        if value < self.output_min:
            return self.output_min
        return value

    cdef inline void _align(self) noexcept:
        """Set the integral so that the unclamped output equals the held output right now."""
        if self._has_history:
            self.integral = self.output - self.kp * self._last_error + self.kd * self.derivative

    cdef int _set_limit_values(self, output_min, output_max) except -1:
        cdef double low = _check_finite("output_min", output_min)
        cdef double high = _check_finite("output_max", output_max)
        if not low < high:
            raise ValueError(
                f"PID output_min ({low!r}) must be below output_max ({high!r}); "
                "check the loop's configured limits"
            )
        self.output_min = low
        self.output_max = high
        return 0

    cpdef double update(self, double now, double measured, double target) noexcept:
        """One control step with a sample taken at `now` (seconds, any monotonic origin).

        Returns the command, always within [output_min, output_max].

        * First call (and the first after reset() or after a non-finite input): there is no
          previous sample, so nothing is integrated or differentiated; the integral is set so
          that the command equals the held output (bumpless start), and that is returned.
        * now not after the previous sample (dt <= 0): nothing changes; returns the held output.
        * Non-finite now, measured or target (NaN from a failed sensor read): returns the held
          output unchanged and forgets the sample history, so the next valid sample restarts
          bumplessly instead of integrating the gap or differentiating across it.
        * Derivative on measurement, low-pass filtered with time constant derivative_filter_s
          (backward-Euler, stable for any dt): a setpoint step does not kick the output.
        * Anti-windup by clamping: while the command is at a limit, the integral moves only as
          far as it takes the command to that limit, never beyond; it unwinds freely.
        * Manual mode: returns the manual output; the integral follows it (see set_auto()).
        """
        cdef double error, dt_s, rate, proportional, derivative_term
        cdef double integral_step, integral, unclamped, result, bound
        if not (isfinite(now) and isfinite(measured) and isfinite(target)):
            self._has_history = False
            return self.output
        error = target - measured
        if not self._has_history:
            self._has_history = True
            self._last_time_s = now
            self._last_measured = measured
            self._last_error = error
            self.derivative = 0.0
            if self.manual:
                self.output = self._manual_output
            self._align()
            return self.output
        dt_s = now - self._last_time_s
        if dt_s <= 0.0:
            return self.output
        rate = (measured - self._last_measured) / dt_s
        self.derivative = self.derivative + (rate - self.derivative) * (
            dt_s / (self.derivative_filter_s + dt_s))
        self._last_time_s = now
        self._last_measured = measured
        self._last_error = error
        if self.manual:
            self.output = self._manual_output
            self._align()
            return self.output
        proportional = self.kp * error
        derivative_term = self.kd * self.derivative
        integral_step = self.ki * error * dt_s
        integral = self.integral + integral_step
        unclamped = proportional + integral - derivative_term
        if unclamped > self.output_max:
            result = self.output_max
            if integral_step > 0.0:
                bound = result - proportional + derivative_term
                integral = bound if bound > self.integral else self.integral
        elif unclamped < self.output_min:
            result = self.output_min
            if integral_step < 0.0:
                bound = result - proportional + derivative_term
                integral = bound if bound < self.integral else self.integral
        else:
            result = unclamped
        self.integral = integral
        self.output = result
        return result

    def track(self, applied_output):
        """Tell the PID the output actually applied (chosen by a selector or the supervisor).

        Call it every period after deciding the applied output. If the applied output (clamped
        to this PID's limits) differs from this PID's held output, the PID adopts it and
        back-calculates its integral so that its unclamped command equals it now; its next
        update() moves from there by its own P, I and D changes only. A loop that is not in
        charge therefore never winds up, and takes over smoothly as soon as it asks for less
        (override/selector control). Tracking the PID's own output is a no-op, so it is safe
        to call on every loop. Non-finite values are ignored. Works in both modes.
        """
        cdef double applied = float(applied_output)
        cdef double held
        if not isfinite(applied):
            return
        held = self._clamp(applied)
        if held == self.output:
            return
        self.output = held
        self._align()

    def track_reset(self, applied_output):
        """External reset feedback, for a loop that a selector did NOT choose this period.

        The integral becomes the applied output (clamped), so this loop's command is the
        applied output plus its own P and D action. A limit loop far from its limit (large
        positive error) therefore stays well above the applied command and is not chosen;
        as its error shrinks to zero its command meets the applied one and it takes over
        without a bump. Unlike track(), this does not turn the unselected loop into a rate
        limiter on the selected one. Call it only on loops that were not chosen (the chosen
        loop keeps its own integral). Non-finite values and manual mode leave it unchanged.
        """
        cdef double applied = float(applied_output)
        if not isfinite(applied) or self.manual:
            return
        self.integral = self._clamp(applied)
        if self._has_history:
            self.output = self._clamp(
                self.kp * self._last_error + self.integral - self.kd * self.derivative)
        else:
            self.output = self.integral

    def set_gains(self, kp, ki, kd):
        """Change gains without a bump: the integral absorbs the change in the P and D terms.

        The integral is kept in output units, so a new ki alone changes only future integration;
        a new kp or kd is compensated so the command stays at the held output. All three are
        validated before any is applied.
        """
        cdef double new_kp = _check_gain("kp", kp)
        cdef double new_ki = _check_gain("ki", ki)
        cdef double new_kd = _check_gain("kd", kd)
        self.kp = new_kp
        self.ki = new_ki
        self.kd = new_kd
        self._align()

    def set_limits(self, output_min, output_max):
        """Change the output limits; the held output moves only as far as the new limits force.

        The integral is re-aligned to the (clamped) held output, so widening the limits does not
        release a stored jump, and narrowing them does not leave the integral wound beyond them.
        """
        self._set_limit_values(output_min, output_max)
        self.output = self._clamp(self.output)
        self._manual_output = self._clamp(self._manual_output)
        self._align()

    def set_manual(self, output):
        """Enter (or stay in) manual mode, commanding `output` clamped to the limits.

        In manual mode update() keeps the sample history and the derivative filter current and
        aligns the integral to the manual output, so the return to auto is bumpless.
        Raises ValueError for a non-finite output.
        """
        self._manual_output = self._clamp(_check_finite("manual output", output))
        self.manual = True
        self.output = self._manual_output
        self._align()

    def set_auto(self):
        """Return to automatic mode; the next update() continues from the held output."""
        self.manual = False

    def reset(self, output=None):
        """Forget the time, measurement and derivative history, e.g. after the loop was stopped.

        The next update() is treated as a first call and starts bumplessly from the held output,
        or from `output` (clamped to the limits) when given. Gains, limits and mode are kept.
        """
        if output is not None:
            self.output = self._clamp(_check_finite("reset output", output))
        self._has_history = False
        self.integral = 0.0
        self.derivative = 0.0


def run_steps(PID pid, double start_s, double period_s, const double[::1] measured,
              double target):
    """Benchmark floor: run pid.update() over `measured` entirely in C; returns the last output.

    Sample i is taken at start_s + i * period_s. Used only by scripts/bench-pid, to measure
    the cost of a step without the Python call around it.
    """
    cdef Py_ssize_t i
    cdef double result = pid.output
    for i in range(measured.shape[0]):
        result = pid.update(start_s + i * period_s, measured[i], target)
    return result
