"""A board's `state` and `event` as the leader may use them: decoded once, at the door, into
values the leader can re-encode and that a Pi in an oil bath can physically produce.

Why here and only here: whatever the leader keeps from a board ends up in its own `leader/state`,
its ledger file and its metrics, so one value it cannot re-encode (a lone UTF-16 surrogate in
`mode`) or one impossible number (1e308 Wh) would stop the leader at its next publish or save.
Anything else in the payload is left behind (receivers ignore fields they do not know), so the
leader keeps only what it checked. A payload with any unusable field is rejected whole, with a
reason that names the field and shows the value in ASCII, so the reason itself always encodes.
"""

import math
from typing import Any

from agent.config_schema import LIMITS_SCHEMA
from agent.errors import MessageError
from agent.safety.supervisor import Mode

MODES = frozenset(mode.value for mode in Mode)
POWER_CEILING_W = float(LIMITS_SCHEMA["power_max_w"].max)
"""The most any board may be configured to draw (limits.power_max_w's upper bound): a board's
`min_w`/`max_w` above it did not come from a Hearth config."""
MEASURED_POWER_MAX_W = 100.0
"""A measured `power_w` beyond this is not a Pi on its supply (a faulty board reading 20 W is
news the leader keeps; 1e308 W is not a reading)."""
ENERGY_MAX_WH = 1e9
"""A board counter above this would be 7,600 years at the power ceiling."""
SEQ_MAX = 2 ** 63 - 1
TEXT_MAX = 128
REASON_MAX = 512
"""`counter_reset` is a sentence (what happened to the counter file), not a name."""
FAULTS_MAX = 64


class BoardStateError(MessageError):
    """A board's message the leader will not use; the message says which field and why."""


def _show(value: Any) -> str:
    """The value as ASCII (a surrogate shows as \\ud800), short enough for a log line."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(data: dict[str, Any], key: str, required: bool,
          max_chars: int = TEXT_MAX) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    return checked_text(key, value, max_chars)


def checked_text(what: str, value: Any, max_chars: int = TEXT_MAX) -> str:
    """A string of 1 to `max_chars` characters. (Text UTF-8 cannot carry, a lone surrogate,
    never gets this far: the envelope's decode refuses it for every role.)"""
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise BoardStateError(f"{what} must be a string of 1 to {max_chars} characters "
                              f"(got {_show(value)})")
    return value


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """A nullable number within [low, high]: null stays unknown, anything else is rejected."""
    value = data.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        raise BoardStateError(f"{key} must be a number from {low:g} to {high:g} or null "
                              f"(got {_show(value)})")
    return float(value)


def checked_envelope(data: dict[str, Any]) -> dict[str, Any]:
    """`boot`, `seq` and `hist` of any board message (the tracker's restart and gap counting)."""
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= SEQ_MAX:
        raise BoardStateError(f"seq must be an integer from 1 to {SEQ_MAX} (got {_show(seq)})")
    hist = data.get("hist", False)
    if not isinstance(hist, bool):
        raise BoardStateError(f"hist must be true or false when present (got {_show(hist)})")
    return {"boot": checked_text("boot", data.get("boot")), "seq": seq, "hist": hist}


def checked_state(data: dict[str, Any], retained: bool = False) -> dict[str, Any]:
    """The fields of a board's `state` the leader uses, checked; BoardStateError otherwise."""
    if retained:
        raise BoardStateError("state arrived retained: boards never retain state, so it is old "
                              "news from whoever published it")
    state = checked_envelope(data)
    state["mode"] = _text(data, "mode", required=True)
    if state["mode"] not in MODES:
        raise BoardStateError(f"mode must be one of {', '.join(sorted(MODES))} "
                              f"(got {_show(state['mode'])})")
    faults = data.get("faults")
    if faults is None:
        faults = []
    if not isinstance(faults, list) or len(faults) > FAULTS_MAX:
        raise BoardStateError(f"faults must be a list of at most {FAULTS_MAX} strings "
                              f"(got {_show(faults)})")
    state["faults"] = tuple(sorted(checked_text("faults entry", fault) for fault in faults))
    state["selected"] = _text(data, "selected", required=False)
    state["counter_reset"] = _text(data, "counter_reset", required=False,
                                    max_chars=REASON_MAX)
    state["min_w"] = _number(data, "min_w", 0.0, POWER_CEILING_W)
    state["max_w"] = _number(data, "max_w", 0.0, POWER_CEILING_W)
    if None not in (state["min_w"], state["max_w"]) and state["min_w"] > state["max_w"]:
        raise BoardStateError(f"min_w {state['min_w']:g} is above max_w {state['max_w']:g}")
    state["power_w"] = _number(data, "power_w", -MEASURED_POWER_MAX_W, MEASURED_POWER_MAX_W)
    for key in ("energy_electric_wh", "energy_heat_wh"):
        state[key] = _number(data, key, 0.0, ENERGY_MAX_WH)
    return state
