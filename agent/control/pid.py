"""The PID the agent imports: the compiled core when built, else the pure-Python mirror.

`PID` is cext/cpid.pyx's class (module agent.control._cpid) or agent/control/pid_ref.py's;
both have the same API and bit-identical numerics, so callers never care which they got.
Setting HEARTH_PURE_PYTHON=1 in the environment before this module is first imported forces
the mirror (for debugging, or to compare); `IMPLEMENTATION` says which one is in use.
A missing extension falls back to the mirror silently here, because the agent must still run;
tests/test_pid.py is what fails in CI when the compiled one should have loaded and did not.

Neither implementation carries a default or a constant of its own: every number is a
keyword-only constructor argument, so the gains, limits and filter time constant come from
the one place that owns them (the loop's configuration) and cannot drift between the two.
"""

import os

PURE_PYTHON_ENV = "HEARTH_PURE_PYTHON"


def _load():
    """Pick the implementation once, at import; returns (PID class, implementation name)."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        from agent.control.pid_ref import PID as pure_pid

        return pure_pid, "python"
    try:
        from agent.control._cpid import PID as compiled_pid
    except ImportError:
        from agent.control.pid_ref import PID as pure_pid

        return pure_pid, "python"
    return compiled_pid, "compiled"


PID, IMPLEMENTATION = _load()

__all__ = ["PID", "IMPLEMENTATION", "PURE_PYTHON_ENV"]
