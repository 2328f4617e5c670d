"""Tests for the PID core: behaviour of both implementations, their exact agreement, and which one loads."""

import importlib.machinery
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control import _cpid, pid, pid_ref

IMPLEMENTATIONS = [pytest.param(_cpid.PID, id="compiled"), pytest.param(pid_ref.PID, id="python")]
PERIOD_S = 0.1


@pytest.fixture(params=IMPLEMENTATIONS)
def make(request):
    """A PID factory for one implementation, with gains that suit the lag plant below."""
    cls = request.param

    def factory(**overrides):
        args = dict(kp=0.5, ki=2.0, kd=0.0, output_min=0.0, output_max=10.0,
                    derivative_filter_s=0.0)
        args.update(overrides)
        return cls(**args)

    return factory


class LagPlant:
    """Board power following its command with a first-order lag, like DVFS plus measurement."""

    def __init__(self, power_w, time_constant_s=0.3):
        self.power_w = power_w
        self.time_constant_s = time_constant_s

    def step(self, command_w, dt_s=PERIOD_S):
        self.power_w += (command_w - self.power_w) * dt_s / (self.time_constant_s + dt_s)
        return self.power_w


def run(controller, plant, target, steps, start_s=0.0):
    """Close the loop for `steps` periods; returns the measured trace and the end time."""
    trace = []
    now_s = start_s
    for _ in range(steps):
        command = controller.update(now_s, plant.power_w, target)
        trace.append(plant.step(command))
        now_s += PERIOD_S
    return trace, now_s


def test_step_response_settles_within_2_percent_in_3_s(make):
    controller = make()
    plant = LagPlant(3.0)
    _, now_s = run(controller, plant, 3.0, 20)
    trace, _ = run(controller, plant, 5.0, 30, start_s=now_s)
    assert all(abs(power_w - 5.0) <= 0.1 for power_w in trace[-5:])
    assert max(trace) <= 5.0 * 1.05


def test_output_is_clamped_to_the_limits(make):
    controller = make(kp=100.0, output_min=1.0, output_max=4.0)
    controller.update(0.0, 3.0, 3.0)
    assert controller.update(0.1, 3.0, 50.0) == 4.0
    assert controller.update(0.2, 3.0, -50.0) == 1.0


def test_integral_stays_bounded_while_saturated_and_recovers_without_overshoot(make):
    controller = make(output_max=4.0)
    plant = LagPlant(3.0)
    run(controller, plant, 6.0, 100)  # 6 W is out of reach: saturated at 4 W
    integral_after_10_s = controller.integral
    _, now_s = run(controller, plant, 6.0, 5900, start_s=10.0)  # ten minutes saturated
    assert controller.integral == pytest.approx(integral_after_10_s, abs=1e-9)
    assert controller.integral <= 4.0
    # Back down to a reachable 3 W: a wound-up integral would hold 4 W for minutes; here the
    # command leaves the limit at once and the usual PI setpoint-step response follows.
    trace, _ = run(controller, plant, 3.0, 30, start_s=now_s)
    assert trace[0] < 3.9
    assert min(trace) >= 3.0 * 0.9
    assert all(abs(power_w - 3.0) <= 0.06 for power_w in trace[-5:])


def _limited_board(make, track):
    """Power loop (5 W setpoint) and SoC-limit loop, lower command wins, limit binding for 10 min.

    SoC temperature settles at 20 C + 12 C/W * power with a 5 s lag, so a 70 C limit holds the
    board near 4.2 W; at 10 minutes the limit is raised to 90 C and the power loop must take
    over. Returns (power trace after the limit clears, power integrals during the hold).
    """
    power_loop = make(kp=0.5, ki=2.0)
    limit_loop = make(kp=0.2, ki=0.1)
    plant = LagPlant(3.0)
    soc_c = 56.0
    limit_c = 70.0
    integrals = []
    after_release = []
    now_s = 0.0
    for step in range(6000 + 100):
        if step == 6000:
            limit_c = 90.0
        power_command = power_loop.update(now_s, plant.power_w, 5.0)
        limit_command = limit_loop.update(now_s, soc_c, limit_c)
        applied = min(power_command, limit_command)
        if track:
            power_loop.track(applied)
            limit_loop.track(applied)
        power_w = plant.step(applied)
        soc_c += (20.0 + 12.0 * power_w - soc_c) * PERIOD_S / (5.0 + PERIOD_S)
        now_s += PERIOD_S
        if 600 <= step < 6000:
            integrals.append(power_loop.integral)
        if step >= 6000:
            after_release.append(power_w)
    return after_release, integrals


def test_tracking_keeps_the_unselected_loop_from_winding_up(make):
    after_release, integrals = _limited_board(make, track=True)
    assert max(integrals) - min(integrals) < 0.05
    assert max(after_release) <= 5.0 * 1.05
    assert abs(after_release[-1] - 5.0) <= 0.1


def test_without_tracking_the_same_scenario_overshoots(make):
    """Shows the tracking test above exercises windup: the override alone is not enough."""
    after_release, _ = _limited_board(make, track=False)
    assert max(after_release) > 5.0 * 1.05


def test_own_output_tracking_changes_nothing(make):
    controller = make()
    controller.update(0.0, 3.0, 5.0)
    controller.update(0.1, 3.2, 5.0)
    integral = controller.integral
    controller.track(controller.output)
    assert controller.integral == integral


def test_reset_feedback_keeps_an_unselected_limit_loop_above_the_applied_command(make):
    """Override control: a cool limit loop sits above what is applied by its own P action and
    meets the applied command exactly when its error reaches zero."""
    limit = make(kp=0.8, ki=0.1, output_min=2.0, output_max=6.5)
    limit.update(0.0, 50.0, 74.0)
    limit.track_reset(3.0)
    cool = limit.update(0.1, 50.0, 74.0)
    assert cool == 6.5, "24 K below its limit it does not hold the board back"
    limit.track_reset(3.0)
    assert limit.integral == 3.0
    warm = limit.update(0.2, 73.0, 74.0)
    assert 3.0 < warm < 4.0
    limit.track_reset(3.0)
    at_limit = limit.update(0.3, 74.0, 74.0)
    assert at_limit == pytest.approx(3.0)


def test_plain_tracking_would_make_the_limit_loop_a_rate_limiter(make):
    """Why track_reset exists: track() pins the unselected loop to the applied command."""
    limit = make(kp=0.8, ki=0.1, output_min=2.0, output_max=6.5)
    limit.update(0.0, 50.0, 74.0)
    limit.track(3.0)
    assert limit.update(0.1, 50.0, 74.0) < 3.5


@pytest.mark.parametrize("change", ["gains", "manual", "limits"])
def test_changes_are_bumpless(make, change):
    """After a change, the next output moves only by the I step and the D filter's decay.

    The measurement ramps, then holds at 3.25, so P does not move and the filtered derivative
    decays by (1 - alpha) per period; a jump from new gains or a mode switch would show.
    """
    controller = make(kp=0.5, ki=2.0, kd=0.3, derivative_filter_s=0.2)
    for step in range(6):
        controller.update(step * PERIOD_S, 3.0 + 0.05 * step, 5.0)
    held = controller.output
    if change == "gains":
        controller.set_gains(2.0, 4.0, 1.0)
    elif change == "manual":
        controller.set_manual(2.0)
        assert controller.update(0.6, 3.25, 5.0) == 2.0
        controller.set_auto()
        held = 2.0
    else:
        controller.set_limits(0.0, 20.0)
    assert controller.output == held
    now_s = 0.7 if change == "manual" else 0.6
    alpha = PERIOD_S / (controller.derivative_filter_s + PERIOD_S)
    expected = (held + controller.ki * (5.0 - 3.25) * PERIOD_S
                + controller.kd * controller.derivative * alpha)
    assert controller.derivative > 0.1
    assert controller.update(now_s, 3.25, 5.0) == pytest.approx(expected, abs=1e-12)


def test_derivative_on_measurement_gives_no_kick_on_setpoint_step(make):
    controller = make(kp=1.0, ki=0.0, kd=5.0, output_min=-100.0, output_max=100.0)
    controller.reset(3.0)
    controller.update(0.0, 3.0, 3.0)
    before = controller.update(0.1, 3.0, 3.0)
    assert controller.update(0.2, 3.0, 5.0) - before == pytest.approx(2.0, abs=1e-12)
    # A measurement change does kick: 0.1 down in 0.1 s is -1/s, so D adds kd * 1 = 5.
    assert controller.update(0.3, 2.9, 5.0) - before == pytest.approx(2.0 + 0.1 + 5.0, abs=1e-12)


def test_derivative_is_low_pass_filtered(make):
    unfiltered = make(kd=1.0, derivative_filter_s=0.0)
    filtered = make(kd=1.0, derivative_filter_s=0.9)
    for controller in (unfiltered, filtered):
        controller.update(0.0, 3.0, 3.0)
        controller.update(0.1, 4.0, 3.0)  # a 1-unit measurement step in one period
    assert unfiltered.derivative == pytest.approx(10.0)
    alpha = PERIOD_S / (0.9 + PERIOD_S)
    assert filtered.derivative == pytest.approx(10.0 * alpha)
    filtered.update(0.2, 4.0, 3.0)
    assert filtered.derivative == pytest.approx(10.0 * alpha * (1.0 - alpha))


def test_first_call_starts_bumplessly_from_the_held_output(make):
    controller = make(output_min=1.5)
    assert controller.output == 1.5
    assert controller.update(100.0, 3.0, 5.0) == 1.5
    controller.reset(2.5)
    assert controller.update(200.0, 3.0, 5.0) == 2.5


def test_non_positive_dt_changes_nothing(make):
    controller = make()
    controller.update(0.0, 3.0, 5.0)
    held = controller.update(0.1, 3.0, 5.0)
    integral = controller.integral
    assert controller.update(0.1, 1.0, 9.0) == held
    assert controller.update(0.05, 1.0, 9.0) == held
    assert controller.integral == integral


@pytest.mark.parametrize("bad", ["measured", "target", "now"])
def test_non_finite_input_holds_the_output_and_restarts_bumplessly(make, bad):
    controller = make()
    controller.update(0.0, 3.0, 5.0)
    held = controller.update(0.1, 3.0, 5.0)
    sample = {"now": 0.2, "measured": 3.0, "target": 5.0}
    sample[bad] = math.nan
    assert controller.update(**sample) == held
    # Sixty seconds later the sensor is back: the gap is neither integrated nor differentiated.
    assert controller.update(60.0, 3.5, 5.0) == held


@pytest.mark.parametrize("args, message", [
    (dict(kp=-1.0), "gain kp must be a finite number >= 0"),
    (dict(ki=math.inf), "gain ki must be a finite number >= 0"),
    (dict(derivative_filter_s=-0.1), "derivative_filter_s must be"),
    (dict(output_min=5.0, output_max=5.0), "must be below output_max"),
    (dict(output_max=math.nan), "output_max must be a finite number"),
])
def test_invalid_construction_is_rejected_with_a_reason(make, args, message):
    with pytest.raises(ValueError, match=message):
        make(**args)


def test_both_implementations_reject_with_the_same_message():
    messages = []
    for cls in (_cpid.PID, pid_ref.PID):
        with pytest.raises(ValueError) as caught:
            cls(kp=1.0, ki=1.0, kd=-2.0, output_min=0.0, output_max=1.0, derivative_filter_s=0.0)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


def _numbers(low, high):
    """Floats in [low, high], half of them with full mantissas (n / 9973), not only the short
    ones hypothesis favours, whose sums are exact and would hide a change of operation order."""
    return st.one_of(
        st.floats(min_value=low, max_value=high),
        st.integers(min_value=math.ceil(low * 9973), max_value=math.floor(high * 9973))
        .map(lambda n: n / 9973.0),
    )


# Ranges chosen so that most commands land inside the limits: a saturated command is a limit
# value, which would also hide a difference in the arithmetic before the clamp.
finite = _numbers(-20.0, 20.0)
maybe_nan = st.one_of(finite, finite, finite, st.sampled_from([math.nan, math.inf, -math.inf]))
gain = st.one_of(_numbers(0.0, 2.0), _numbers(0.0, 50.0))
limits = st.tuples(_numbers(-100.0, 10.0), _numbers(1e-3, 200.0))
dt = st.one_of(_numbers(0.0, 2.0), _numbers(0.0, 2.0), st.sampled_from([0.0, -0.05]))
update = st.tuples(st.just("update"), dt, maybe_nan, maybe_nan)
other = st.one_of(
    st.tuples(st.just("track"), maybe_nan),
    st.tuples(st.just("track_reset"), maybe_nan),
    st.tuples(st.just("gains"), gain, gain, gain),
    st.tuples(st.just("limits"), limits),
    st.tuples(st.just("manual"), maybe_nan),
    st.tuples(st.just("auto")),
    st.tuples(st.just("reset"), st.one_of(st.none(), finite)),
)
# One period: an update, then in one period out of four another call (track, gains, mode...).
period = st.tuples(update, st.integers(min_value=0, max_value=3), other).map(
    lambda drawn: (drawn[0], drawn[2]) if drawn[1] == 0 else (drawn[0],))


def _state(controller):
    return tuple(float(getattr(controller, name)).hex() for name in (
        "kp", "ki", "kd", "output_min", "output_max", "derivative_filter_s",
        "integral", "derivative", "output", "manual"))


def _apply(controller, op, now_s):
    """Apply one operation; returns what a caller would observe (result or raised message)."""
    kind = op[0]
    try:
        if kind == "update":
            return float(controller.update(now_s, op[2], op[3])).hex()
        if kind == "track":
            return controller.track(op[1])
        if kind == "track_reset":
            return controller.track_reset(op[1])
        if kind == "gains":
            return controller.set_gains(*op[1:])
        if kind == "limits":
            low, width = op[1]
            return controller.set_limits(low, low + width)
        if kind == "manual":
            return controller.set_manual(op[1])
        if kind == "auto":
            return controller.set_auto()
        return controller.reset(op[1])
    except ValueError as error:
        return f"ValueError: {error}"


@settings(max_examples=1000, deadline=None)
@given(kp=gain, ki=gain, kd=gain, limit=limits, filter_s=_numbers(0.0, 10.0),
       periods=st.lists(period, min_size=5, max_size=60))
def test_compiled_and_python_agree_bit_for_bit(kp, ki, kd, limit, filter_s, periods):
    """Same operations, same order of arithmetic: every result and state bit must match.

    Exact (not within ulps) because both do the same IEEE-754 double operations in the same
    order and the extension is built without FMA contraction; any difference is a bug.
    """
    args = dict(kp=kp, ki=ki, kd=kd, output_min=limit[0], output_max=limit[0] + limit[1],
                derivative_filter_s=filter_s)
    compiled, python = _cpid.PID(**args), pid_ref.PID(**args)
    now_s = 0.0
    for op in (op for ops in periods for op in ops):
        if op[0] == "update":
            now_s += op[1]
        assert _apply(compiled, op, now_s) == _apply(python, op, now_s), op
        assert _state(compiled) == _state(python), op


def test_compiled_core_is_the_one_loaded():
    """Fails in CI when a broken build silently falls back to Python."""
    if os.environ.get(pid.PURE_PYTHON_ENV, "") not in ("", "0"):
        assert pid.IMPLEMENTATION == "python"
        assert pid.PID is pid_ref.PID
        return
    assert pid.IMPLEMENTATION == "compiled"
    assert pid.PID is _cpid.PID
    assert pid.PID.__module__ == "agent.control._cpid"
    assert _cpid.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("value, expected", [
    (None, "compiled agent.control._cpid"),
    ("1", "python agent.control.pid_ref"),
])
def test_environment_variable_chooses_the_implementation(value, expected):
    env = {k: v for k, v in os.environ.items() if k != pid.PURE_PYTHON_ENV}
    if value is not None:
        env[pid.PURE_PYTHON_ENV] = value
    out = subprocess.run(
        [sys.executable, "-c",
         "from agent.control import pid; print(pid.IMPLEMENTATION, pid.PID.__module__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == expected
