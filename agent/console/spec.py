"""The shapes of console commands: arguments with types and bounds, results, and the text parser.

Kept apart from the command list (agent.console.commands) so handlers can import these types
without importing the list that names them; a handler that needs the list (help) gets it from
the processor that runs it. Typed text becomes a value in one place, `parse_line` (through
`Arg.from_text`: numbers in ASCII digits only); every value, typed or JSON, is then judged by
`Arg.coerce`, which takes JSON numbers only, so a caller on MQTT or the socket cannot smuggle
in text that some other number parser would read.
"""

import dataclasses
import difflib
import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

from agent.errors import HearthError

LOCAL_SOURCES = ("serial", "socket")
"""Sources that may run every command: a technician at the board (serial) or on it (socket)."""

FLAG_JSON = "--json"
MAX_LINE = 256
"""The longest console line taken, from the serial line or the socket: longer than any command."""
MAX_WORD = 64
SHOWN_CHARS = 40
"""How much of a refused value a reason quotes."""
FLAGS_YES = ("--yes", "-y")
INT_TEXT = re.compile(r"[+-]?[0-9]+")
FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
"""Numbers as a technician types them: ASCII digits only (no `nan`, `inf`, `1_0`, `٣`)."""


class CommandRefused(HearthError, ValueError):
    """A command or its arguments cannot be accepted; the message says why and what to type.

    `command` names the command when it was recognised, so the refusal can say which."""

    def __init__(self, message: str, command: str = ""):
        super().__init__(message)
        self.command = command


def shown(value: Any) -> str:
    """A value as a reason quotes it: short, and encodable whatever it holds (repr escapes
    control characters and lone surrogates; a huge integer is never turned into digits)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if abs(value) >= 10 ** SHOWN_CHARS:
            return f"a number of about {round(value.bit_length() * math.log10(2))} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if len(value) > SHOWN_CHARS:
            return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def described_source(source: str) -> str:
    """Where a command came from, as events and answers name it."""
    return {"serial": "the serial console", "socket": "hearth ctl"}.get(source,
                                                                        f"MQTT ({source})")


def check_line(line: Any) -> str:
    """A console line, refused whole unless it is printable text of a typeable length: a
    control character, a terminal escape or a lone surrogate is noise, never part of a command
    (Python's split() would otherwise treat some of them as spaces)."""
    if not isinstance(line, str):
        raise CommandRefused(f"the line must be text, got {shown(line)}")
    if len(line) > MAX_LINE:
        raise CommandRefused(f"line too long ({len(line)} characters, at most {MAX_LINE}): "
                             "nothing was done")
    if not line.isprintable():
        position, char = next((i, c) for i, c in enumerate(line) if not c.isprintable())
        raise CommandRefused(f"the line holds U+{ord(char):04X} at position {position + 1}, "
                             "which is not printable text: nothing was done; type the command "
                             "in plain text")
    return line


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
        """A JSON value as this argument's type, or CommandRefused naming the argument, the
        value and what was expected. Numbers must be JSON numbers (bool is not one)."""
        if isinstance(value, str) and value in self.choices:
            return value
        if self.kind is str:
            if (not self.choices and isinstance(value, str) and len(value) <= MAX_WORD
                    and value.isprintable()):
                return value
            raise self.refused(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.refused(value)
        if isinstance(value, float) and not (math.isfinite(value) and (
                self.kind is float or value.is_integer())):
            raise self.refused(value)
        # Exact comparisons: a huge integer is judged without converting it to a float.
        if (self.min is not None and value < self.min) or (
                self.max is not None and value > self.max):
            raise self.refused(value)
        try:
            return self.kind(value)
        except OverflowError:
            raise self.refused(value) from None

    def from_text(self, word: str) -> Any:
        """A typed word as a value for coerce(): a choice or a word as it is, a number only
        when written in ASCII digits."""
        if self.kind is str or word in self.choices:
            return word
        if self.kind is int and INT_TEXT.fullmatch(word):
            return int(word)
        if self.kind is float and FLOAT_TEXT.fullmatch(word):
            return float(word)
        raise self.refused(word, typed=True)

    def refused(self, value: Any, typed: bool = False) -> CommandRefused:
        hint = ""
        if isinstance(value, str) and self.kind is not str and not typed:
            hint = ", as a JSON number (not text)"
        return CommandRefused(f"{self.name} = {shown(value)}: expected {self.expected()}{hint}")

    def usage(self) -> str:
        shape = "|".join(self.choices) if self.kind is str and self.choices else f"<{self.name}>"
        if self.choices and self.kind is not str:
            shape = f"{'|'.join(self.choices)}|<{self.name}>"
        text = f"{self.keyword} {shape}" if self.keyword else shape
        return f"[{text}]" if self.optional else text


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
        unknown = [name for name in given if name not in known]
        if unknown:
            raise CommandRefused(f"unknown argument {shown(unknown[0])}; {self.name} takes "
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


def command_named(commands: Sequence[Command], name: str) -> Command | None:
    return next((command for command in commands if command.name == name), None)


def parse_line(line: str, commands: Sequence[Command]) -> ParsedLine:
    """A typed line as a command and its values, numbers already numbers (bounds are judged
    later by coerce, for typed and JSON values alike); CommandRefused for what cannot be a
    command, with the closest name when it looks like a typo."""
    words = check_line(line).split()
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
        raise CommandRefused(f"unknown command {shown(typed)}: {hint}type `help` for the list")
    try:
        args = _typed_args(command, words[len(command.name.split()):])
    except CommandRefused as error:
        raise CommandRefused(f"{error}; usage: {command.usage()}", command.name) from None
    return ParsedLine(command, args, as_json, confirmed)


def _typed_args(command: Command, rest: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    pending = list(command.args)
    while rest:
        word = rest.pop(0)
        keyed = next((arg for arg in pending if arg.keyword and arg.keyword == word), None)
        if keyed is not None:
            if not rest:
                raise CommandRefused(f"`{word}` needs a value after it")
            pending.remove(keyed)
            args[keyed.name] = keyed.from_text(rest.pop(0))
            continue
        positional = next((arg for arg in pending if not arg.keyword), None)
        if positional is None:
            raise CommandRefused(f"unexpected {shown(word)}")
        pending.remove(positional)
        if positional.rest:
            args[positional.name] = positional.from_text(" ".join([word] + rest))
            rest = []
        else:
            args[positional.name] = positional.from_text(word)
    return args
