"""The envelope on every Hearth MQTT payload (docs/mqtt.md "Envelope"): schema version, the
sender's boot id, a sequence number per topic and the time the message was made.

The sequence number is what lets a receiver tell "nothing happened" from "something was lost":
it counts from 1 at each boot, separately for each topic, so a gap on one topic is a lost (or
deliberately dropped) message on that topic, and a new boot id is a restart, not a gap.
"""

import json
import math
from typing import Any, Callable

from agent.errors import MessageError

SCHEMA_VERSION = 1
HEADER = ("v", "boot", "seq", "ts")
MAX_PAYLOAD_BYTES = 65536
"""Bigger payloads are refused unread: no Hearth message comes near this."""
MAX_DEPTH = 16
"""Objects and lists nested deeper are refused: no Hearth message nests more than three."""
MAX_INTEGER = 2**53
"""Integers beyond this are refused: a double cannot hold them exactly, so no other role (nor
float()) could take them as sent (RFC 7493, I-JSON)."""


class Envelope:
    """Stamps outgoing payloads for one sender (one per Link, so hundreds can share a process)."""

    def __init__(self, boot: str, wall_clock: Callable[[], float]):
        self.boot = boot
        self.wall_clock = wall_clock
        self._sequence: dict[str, int] = {}

    def stamp(self, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with the envelope fields first; the envelope wins over same-named keys."""
        seq = self._sequence.get(topic, 0) + 1
        self._sequence[topic] = seq
        header = {"v": SCHEMA_VERSION, "boot": self.boot, "seq": seq, "ts": self.wall_clock()}
        stamped = {**header, **payload}  # the header's keys first, in its order
        stamped.update(header)  # and its values, whatever the payload said
        return stamped


def finite_number(value: Any) -> float | None:
    """A payload field as a float, or None when it is missing, not a number (a bool is not)
    or not finite: every role reads received numbers through this."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON; an unknown number is sent as null (docs/mqtt.md)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def encode(message: dict[str, Any], hist: bool = False) -> bytes:
    """Compact UTF-8 JSON; `hist` marks backlog sent after a reconnect."""
    if hist:
        message = {**message, "hist": True}
    try:
        text = _ENCODER.encode(message)
    except ValueError:  # a NaN or infinity somewhere: rare, so only then walk the payload
        text = _ENCODER.encode(_finite(message))
    return text.encode("utf-8")


def printable(text: str) -> str:
    """`text` with what UTF-8 cannot carry (lone surrogates) written as escapes: for reasons and
    events that quote something received or raised, so the quote can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse_constant(token: str) -> Any:
    raise MessageError(f"{token} is not a JSON number; send a finite number or null")


def _checked_float(token: str) -> float:
    value = float(token)
    if math.isfinite(value):
        return value
    raise MessageError(f"number {token[:24]}{'...' if len(token) > 24 else ''} is beyond what "
                       "a double holds; send a finite number")


def _checked_int(token: str) -> int:
    if len(token) <= 17:  # a sign and 16 digits; longer is beyond 2^53, and may be beyond
        value = int(token)  # what int() takes at all
        if -MAX_INTEGER <= value <= MAX_INTEGER:
            return value
    raise MessageError(f"integer of {len(token)} characters is beyond +-2^53; send a number a "
                       "double holds exactly")


# json.dumps and json.loads with options build a new encoder or decoder on every call; these
# hold no state between calls, so every Link in a process can share them.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_checked_float,
                            parse_int=_checked_int)


def _unrepresentable(data: Any) -> str | None:
    """Why `data` cannot be passed on (a lone surrogate in a key or a string, nesting deeper
    than MAX_DEPTH), naming where; None when it can."""
    waiting: list[tuple[Any, str, int]] = [(data, "", 0)]
    while waiting:
        value, where, depth = waiting.pop()
        place = f"'{where[:60]}'" if where else "the payload"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return (f"{place} holds a lone UTF-16 surrogate "
                        f"({printable(value[error.start:error.end])}); text must be valid "
                        "Unicode")
        elif isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            return f"{place} nests deeper than {MAX_DEPTH} levels"
        elif isinstance(value, list):
            waiting.extend((item, f"{where}[{index}]", depth + 1)
                           for index, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return (f"a key in {place} ({printable(key)[:40]}) holds a lone UTF-16 "
                            "surrogate; text must be valid Unicode")
                waiting.append((item, f"{where}.{key}" if where else key, depth + 1))
    return None


def load(text: str) -> Any:
    """JSON text as values every role can pass on (encodable text, finite numbers a double
    holds, shallow nesting), or MessageError saying what is wrong with it: how received
    payloads and the outbox's spill file are read, so no handler meets what it could not
    send back."""
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise MessageError(f"payload is not JSON ({error.msg} at character {error.pos})")
    except RecursionError:
        raise MessageError(f"payload nests deeper than {MAX_DEPTH} levels")
    # Text decoded from UTF-8 holds no surrogate; only a \\u escape can make one. And nesting
    # deeper than MAX_DEPTH needs more brackets than that. So most payloads skip the walk.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        problem = _unrepresentable(data)
        if problem is not None:
            raise MessageError(problem)
    return data


def decode(raw: bytes) -> dict[str, Any]:
    """A received payload as a dict of checked values (see load), or MessageError saying what
    is wrong with it: the one place a payload is checked."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(raw)} bytes is larger than {MAX_PAYLOAD_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MessageError(f"payload is not UTF-8 ({error.reason} at byte {error.start})")
    data = load(text)
    if not isinstance(data, dict):
        raise MessageError(f"payload is a JSON {type(data).__name__}, expected an object")
    version = data.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise MessageError(f"payload has no integer schema version 'v' (got {version!r}); "
                           f"this sender speaks v{SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise MessageError(f"schema version {version} is not supported; this board speaks "
                           f"v{SCHEMA_VERSION}")
    return data
