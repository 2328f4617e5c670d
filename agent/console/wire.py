"""The console socket's request line, decoded once into checked values.

Anyone in group hearth can write to the socket, so a request is hostile until it is decoded
here: it must be UTF-8 JSON no deeper than MAX_DEPTH, hold no number a JSON reader cannot
represent (non-finite, or an integer a double cannot hold exactly) and no lone surrogate, and
name only the fields below with the right types. Whatever fails is refused with a reason
before anything else looks at it, so nothing past this point can be made to raise by it.
"""

import dataclasses
import json
import math
import re
from typing import Any

from agent.console.spec import LOCAL_SOURCES, CommandRefused, shown

MAX_REQUEST = 4096
"""Bytes in one request line; `hearth ctl` and `hearth console` send well under 300."""
MAX_DEPTH = 8
"""Nesting of arrays and objects; a valid request needs 2 ({"args": {...}})."""
MAX_EXACT_INT = 2 ** 53
"""Integers beyond this are not held exactly by a double, which is what a JSON number is to
most readers (RFC 8259, section 6)."""
FIELDS = ("line", "command", "args", "confirmed", "source", "prompt")
SURROGATE = re.compile("[\ud800-\udfff]")


class RequestRefused(CommandRefused):
    """A socket request that cannot be decoded into a request; the message says why."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One decoded request: a typed `line`, a `command` with JSON `args`, or a `prompt`."""

    line: str | None
    command: str | None
    args: dict[str, Any]
    confirmed: bool
    source: str
    prompt: bool


def decode_request(raw: bytes) -> Request:
    """The request in `raw` (one line, newline included or not), or RequestRefused."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRefused(f"the request is not UTF-8 (byte 0x{raw[error.start]:02x} at "
                             f"position {error.start}); send one JSON object per line") from None
    depth = _nesting(text)
    if depth > MAX_DEPTH:
        raise RequestRefused(f"the request is nested deeper than {MAX_DEPTH} levels ({depth}); "
                             "send one flat JSON object per line")
    try:
        request = json.loads(text, parse_int=_integer, parse_float=_finite,
                             parse_constant=_constant)
    except json.JSONDecodeError as error:
        raise RequestRefused(f"the request is not a JSON object on one line ({error.msg} at "
                             f"position {error.pos})") from None
    _no_surrogates(request)
    if not isinstance(request, dict):
        raise RequestRefused(f"the request is not a JSON object on one line, got "
                             f"{shown(request)}")
    return _fields(request)


def _fields(request: dict[str, Any]) -> Request:
    unknown = [key for key in request if key not in FIELDS]
    if unknown:
        raise RequestRefused(f"unknown key {shown(unknown[0])} in the request; expected "
                             f"{', '.join(FIELDS)}")
    source = request.get("source", "socket")
    if source not in LOCAL_SOURCES:
        raise RequestRefused(f"source {shown(source)} is not a local source "
                             f"({', '.join(LOCAL_SOURCES)})")
    confirmed = request.get("confirmed", False)
    if not isinstance(confirmed, bool):
        raise RequestRefused(f"confirmed must be true or false, got {shown(confirmed)}")
    line, command = request.get("line"), request.get("command")
    args = request.get("args", {})
    prompt = request.get("prompt", False) is True
    if line is not None and not isinstance(line, str):
        raise RequestRefused(f"line must be text, got {shown(line)}")
    if command is not None and not isinstance(command, str):
        raise RequestRefused(f"command must be text, got {shown(command)}")
    if not isinstance(args, dict):
        raise RequestRefused(f"args must be an object of names to values, got {shown(args)}")
    if (line is not None) + (command is not None) + prompt != 1:
        raise RequestRefused('expected exactly one of {"line": ...}, {"command": ..., '
                             '"args": ...} or {"prompt": true}')
    return Request(line, command, args, confirmed, source, prompt)


def _nesting(text: str) -> int:
    """The deepest nesting of [ and { outside strings, found before json.loads would recurse."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > 16 or abs(int(digits)) > MAX_EXACT_INT:
        raise RequestRefused(f"an integer of {len(digits.lstrip('-'))} digits is more than a "
                             "JSON number holds exactly (at most 2^53); send a number in range")
    return int(digits)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestRefused(f"{text[:40]} is not a finite number; send a number in range")
    return value


def _constant(name: str) -> float:
    raise RequestRefused(f"{name} is not a finite number; send a number in range")


def _no_surrogates(value: Any) -> None:
    """Lone surrogates decode from JSON escapes but cannot be encoded as text again."""
    if isinstance(value, str):
        found = SURROGATE.search(value)
        if found:
            raise RequestRefused(f"the request holds a lone surrogate "
                                 f"(U+{ord(found.group()):04X}), which is not text")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key)
            _no_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_surrogates(item)
