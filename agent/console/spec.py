"""The shapes of console commands: arguments with types and bounds, results, and the text parser.

Kept apart from the command list (agent.console.commands) so handlers can import these types
without importing the list that names them. A value reaches `Arg.coerce` either as text typed
on a serial line or as a JSON value from MQTT, and both are judged by the same bounds.
"""

import dataclasses
import difflib
import json
import math
from typing import Any, Callable, Mapping, Sequence

from agent.errors import HearthError

LOCAL_SOURCES = ("serial", "socket")
"""Sources that may run every command: a technician at the board (serial) or on it (socket)."""

FLAG_JSON = "--json"
MAX_WORD = 64
FLAGS_YES = ("--yes", "-y")


class CommandRefused(HearthError, ValueError):
    """A command or its arguments cannot be accepted; the message says why and what to type."""


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument. `choices` lists words it accepts; with kind float it also takes a number.

    `keyword` is a word that precedes the value on a text line (`setpoint 4 for 30`); JSON
    callers name the argument instead. An Arg with a default is optional.
    """

    name: str
    kind: type
    help: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    default: Any = None
    keyword: str = ""
    rest: bool = False
    """Takes the rest of the typed line (`help i2c scan`)."""

    @property
    def optional(self) -> bool:
        return self.default is not None

    def expected(self) -> str:
        """What a valid value looks like, for error messages and the docs."""
        words = " or ".join(self.choices)
        if self.kind is str:
            return f"one of {', '.join(self.choices)}" if self.choices else "a word"
        noun = "a whole number" if self.kind is int else "a number"
        unit = f" {self.unit}" if self.unit else ""
        if self.min is not None and self.max is not None:
            number = f"{noun} from {self.min:g} to {self.max:g}{unit}"
        else:
            number = noun + unit
        return f"{words} or {number}" if words else number

    def coerce(self, value: Any) -> Any:
        """The value as this argument's type, or CommandRefused saying what was expected."""
        if isinstance(value, str) and value in self.choices:
            return value
        problem = f"{self.name} = {json.dumps(value) if not isinstance(value, str) else value!r}"
        if self.kind is str:
            if not self.choices and isinstance(value, str) and len(value) <= MAX_WORD:
                return value
            raise CommandRefused(f"{problem}: expected {self.expected()}")
        if isinstance(value, bool):
            raise CommandRefused(f"{problem}: expected {self.expected()}")
        try:
            if self.kind is int and isinstance(value, float):
                number = _whole(value)
            else:
                number = self.kind(value)
        except (TypeError, ValueError):
            raise CommandRefused(f"{problem}: expected {self.expected()}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise CommandRefused(f"{problem}: expected {self.expected()}")
        if (self.min is not None and number < self.min) or (
                self.max is not None and number > self.max):
            raise CommandRefused(f"{problem}: expected {self.expected()}")
        return number

    def usage(self) -> str:
        shape = "|".join(self.choices) if self.kind is str and self.choices else f"<{self.name}>"
        if self.choices and self.kind is not str:
            shape = f"{'|'.join(self.choices)}|<{self.name}>"
        text = f"{self.keyword} {shape}" if self.keyword else shape
        return f"[{text}]" if self.optional else text


def _whole(value: float) -> int:
    if not value.is_integer():
        raise ValueError("not a whole number")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Result:
    """What a command did: `text` for people, `data` (JSON-able) for tools, `reason` when it did
    nothing. `confirm` is set when a destructive command waits for confirmation."""

    ok: bool
    command: str
    text: str = ""
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""
    confirm: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "command": self.command, "text": self.text,
                "data": dict(self.data), "reason": self.reason, "confirm": self.confirm}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "Result":
        return cls(bool(payload.get("ok")), str(payload.get("command", "")),
                   str(payload.get("text", "")), dict(payload.get("data") or {}),
                   str(payload.get("reason", "")), str(payload.get("confirm", "")))

    def render(self, as_json: bool) -> str:
        """The reply as a technician or a tool reads it (one JSON object per line)."""
        if as_json:
            body: dict[str, Any] = {"ok": self.ok, "command": self.command}
            if self.ok:
                body["data"] = dict(self.data)
            else:
                body["reason"] = self.reason
                if self.confirm:
                    body["confirm"] = self.confirm
            return json.dumps(body, default=str)
        if self.confirm:
            return self.confirm
        return self.text if self.ok else f"error: {self.reason}"


Handler = Callable[[Any, dict[str, Any], str], tuple[str, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Command:
    """One command, declared once for every transport.

    handler(processor, args, source) returns (text, data) or raises CommandRefused.
    destructive: the confirmation question ("" when none is needed).
    remote: the remote sources (MQTT "leader", "operator") that may send it.
    needs_agent: False for the few that work with the agent down (help, config, w1 list).
    """

    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    destructive: str = ""
    remote: tuple[str, ...] = ()
    needs_agent: bool = True

    def usage(self) -> str:
        return " ".join([self.name] + [arg.usage() for arg in self.args])

    def coerce_args(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every argument checked and defaults filled; unknown names are refused (typos)."""
        if not isinstance(given, Mapping):
            raise CommandRefused(f"arguments must be an object of names to values, got "
                                 f"{type(given).__name__}")
        known = {arg.name for arg in self.args}
        unknown = sorted(set(given) - known)
        if unknown:
            raise CommandRefused(f"unknown argument {unknown[0]!r}; {self.name} takes "
                                 f"{', '.join(sorted(known)) or 'no arguments'}")
        values = {}
        for arg in self.args:
            if arg.name in given and given[arg.name] is not None:
                values[arg.name] = arg.coerce(given[arg.name])
            elif arg.optional:
                values[arg.name] = arg.default
            else:
                raise CommandRefused(f"{arg.name} is missing: expected {arg.expected()}")
        return values


@dataclasses.dataclass(frozen=True)
class ParsedLine:
    command: Command
    args: dict[str, Any]
    as_json: bool
    confirmed: bool


def parse_line(line: str, commands: Sequence[Command]) -> ParsedLine:
    """A typed line as a command and its raw arguments (not yet coerced); CommandRefused for
    what cannot be a command, with the closest name when it looks like a typo."""
    words = line.split()
    as_json = FLAG_JSON in words
    confirmed = any(flag in words for flag in FLAGS_YES)
    words = [word for word in words if word != FLAG_JSON and word not in FLAGS_YES]
    if not words:
        raise CommandRefused("empty line")
    by_name = {command.name: command for command in commands}
    command = by_name.get(" ".join(words[:2])) or by_name.get(words[0])
    if command is None:
        typed = " ".join(words[:2]) if any(" " in n and n.startswith(words[0] + " ")
                                           for n in by_name) else words[0]
        close = difflib.get_close_matches(typed, list(by_name), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise CommandRefused(f"unknown command {typed[:40]!r}: {hint}type `help` for the list")
    rest = words[len(command.name.split()):]
    args: dict[str, Any] = {}
    pending = list(command.args)
    while rest:
        word = rest.pop(0)
        keyed = next((arg for arg in pending if arg.keyword and arg.keyword == word), None)
        if keyed is not None:
            if not rest:
                raise CommandRefused(f"`{word}` needs a value after it; usage: "
                                     f"{command.usage()}")
            pending.remove(keyed)
            args[keyed.name] = rest.pop(0)
            continue
        positional = next((arg for arg in pending if not arg.keyword), None)
        if positional is None:
            raise CommandRefused(f"unexpected {word[:40]!r}; usage: {command.usage()}")
        pending.remove(positional)
        args[positional.name] = " ".join([word] + rest) if positional.rest else word
        if positional.rest:
            rest = []
    return ParsedLine(command, args, as_json, confirmed)
