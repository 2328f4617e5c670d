"""Typed, bounded TOML fields: each driver and each file format declares its keys with these, and
the table checker (agent.tables) and the generated reference docs both read them, so they cannot
drift apart."""

import dataclasses
import re
from typing import Any

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key: its type, bounds, default and a line of documentation."""

    type: type
    doc: str
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    example: str = ""
    hex: bool = False
    items: "Field | None" = None  # for a list: what each item must be

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def _show(self, number: float) -> str:
        if self.hex:
            return f"0x{int(number):02x}"
        return str(int(number)) if float(number).is_integer() else f"{number:g}"

    def expected(self) -> str:
        """What a valid value looks like, in words an operator reads in an error message."""
        noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                list: "a list"}[self.type]
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) if isinstance(c, str) else f"{c:g}"
                                         for c in self.choices)
        if self.min is not None and self.max is not None:
            return f"{noun} from {self._show(self.min)} to {self._show(self.max)}"
        if self.min is not None:
            return f"{noun} of at least {self._show(self.min)}"
        if self.max is not None:
            return f"{noun} of at most {self._show(self.max)}"
        if self.example:
            return f"{noun} like {self.example!r}"
        return noun

    def problem(self, value: Any) -> str | None:
        """None if value is acceptable, else the expectation it failed."""
        if self.type is float:
            type_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            type_ok = isinstance(value, self.type) and not (
                self.type is int and isinstance(value, bool))
        if not type_ok:
            return self.expected()
        if self.choices is not None and value not in self.choices:
            return self.expected()
        if self.min is not None and value < self.min:
            return self.expected()
        if self.max is not None and value > self.max:
            return self.expected()
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return self.expected()
        return None


Schema = dict[str, Field]
