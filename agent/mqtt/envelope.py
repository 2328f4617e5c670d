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


def _refuse_constant(token: str) -> Any:
    raise MessageError(f"{token} is not a JSON number; send a finite number or null")


# json.dumps and json.loads with options build a new encoder or decoder on every call; these
# hold no state between calls, so every Link in a process can share them.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def decode(raw: bytes) -> dict[str, Any]:
    """A received payload as a dict, or MessageError saying what is wrong with it."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(raw)} bytes is larger than {MAX_PAYLOAD_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MessageError(f"payload is not UTF-8 ({error.reason} at byte {error.start})")
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise MessageError(f"payload is not JSON ({error.msg} at character {error.pos})")
    except RecursionError:
        raise MessageError("payload is nested too deeply")
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
