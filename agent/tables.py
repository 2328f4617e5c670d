"""The one checker for every TOML file Hearth reads (site config, board definitions, scenarios,
the site inventory, identity files): typed, bounded reads that collect every problem, each naming
the file, the key, the value and what was expected, so an operator fixes a file in one round
instead of one error per attempt. Unknown keys are problems too, with a "did you mean"."""

import dataclasses
import difflib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import ConfigFileError, ConfigValueError
from agent.schema import Field

ABSENT = object()
"""A key the file does not have (None is not a TOML value, so it cannot stand for that)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong in a TOML file, with what an operator needs to fix it.

    key is a dotted path such as `limits.soc_limit_c` or `sensor[2] 'oil'.address` (arrays and
    arrays of tables count from 1 within the named file, as an operator counts), or "" when the
    file as a whole is the problem.
    """

    file: str
    key: str
    expected: str
    value: Any = ABSENT
    hint: str = ""
    hex: bool = False

    @property
    def missing(self) -> bool:
        return self.value is ABSENT

    def __str__(self) -> str:
        if not self.key:
            head = self.file
        elif self.missing:
            head = f"{self.file}: {self.key} is missing"
        else:
            head = f"{self.file}: {self.key} = {toml_value(self.value, hex=self.hex)}"
        text = f"{head}: expected {self.expected}"
        return f"{text}; {self.hint}" if self.hint else text


def toml_value(value: Any, hex: bool = False) -> str:
    """Render a value as TOML, as the operator would write it in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:02x}" if hex and value >= 0 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item, hex) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return str(value)


def suggest(word: str, known: Iterable[str]) -> str:
    """A "did you mean" hint for a misspelt key or name, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


class TableCheck:
    """Collects the problems of one or more TOML files; readers return None for a bad value
    and carry on, so the caller sees every problem when it finally calls raise_problems()."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def report(self, file: str, key: str, expected: str, value: Any = ABSENT, hint: str = "",
               hex: bool = False) -> None:
        self.problems.append(Problem(file, key, expected, value, hint, hex))

    def read_toml(self, source: Any, missing_hint: str = "") -> dict | None:
        """The parsed file (a Path or an importlib resource), or None with the reason reported."""
        try:
            return tomllib.loads(source.read_bytes().decode("utf-8"))
        except OSError as error:
            reason = error.strerror or str(error)
            self.report(str(source), "", "a readable TOML file",
                        hint=f"{reason}; {missing_hint}" if missing_hint else reason)
        except UnicodeDecodeError as error:
            self.report(str(source), "", "a UTF-8 TOML file", hint=str(error))
        except tomllib.TOMLDecodeError as error:
            self.report(str(source), "", "valid TOML", hint=str(error))
        return None

    def parse_toml(self, text: str, file: str) -> dict | None:
        """Like read_toml, for text already read (built-in resources, tests)."""
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            self.report(file, "", "valid TOML", hint=str(error))
        return None

    def table(self, value: Any, file: str, key: str, noun: str = "a table") -> dict | None:
        if isinstance(value, dict):
            return value
        self.report(file, key, noun, value=value)
        return None

    def tables(self, value: Any, file: str, key: str) -> list[tuple[str, dict]]:
        """An array of tables ([[key]]) as (key path, table) pairs, counted from 1."""
        if value is ABSENT:
            return []
        if not isinstance(value, list):
            self.report(file, key, f"[[{key}]] tables (an array of tables)", value=value)
            return []
        found = []
        for number, item in enumerate(value, start=1):
            path = f"{key}[{number}]"
            if self.table(item, file, path, f"a [[{key}]] table") is not None:
                found.append((path, item))
        return found

    def unknown_keys(self, table: Mapping, known: Iterable[str], file: str, prefix: str,
                     where: str) -> None:
        """Report keys nobody reads (typos), with the closest known key."""
        known = list(known)
        for key, value in table.items():
            if key not in known:
                self.report(file, prefix + key, f"a key of {where}: " + ", ".join(known),
                            value=value, hint=suggest(key, known))

    def value(self, field: Field, value: Any, file: str, key: str, missing_hint: str = "") -> Any:
        """The value if it fits its field (defaults filled, integers widened to floats, lists
        made tuples), else None with the problem reported. An absent optional key whose default
        is None gives None: the caller treats it as "not given"."""
        if value is ABSENT:
            if field.required:
                self.report(file, key, field.expected(), hint=missing_hint or field.doc)
                return None
            if field.default is None:
                return None
            value = field.default
        expectation = field.problem(value)
        if expectation is not None:
            # A rule spelled only as a pattern needs the field's doc to be understood.
            hint = field.doc if field.pattern and isinstance(value, field.type) else ""
            self.report(file, key, expectation, value=value, hint=hint, hex=field.hex)
            return None
        if field.type is float:
            return float(value)
        if field.type is list:
            if field.items is None:
                return tuple(value)
            items = [self.value(field.items, item, file, f"{key}[{position}]")
                     for position, item in enumerate(value, start=1)]
            return None if None in items else tuple(items)
        return value

    def fields(self, table: Mapping, schema: Mapping[str, Field], file: str, prefix: str,
               where: str, other_keys: Iterable[str] = ()) -> dict[str, Any]:
        """Every key of schema read from table (None where a value is bad), unknown keys
        reported. prefix is the table's dotted path with its dot, "" at the top level;
        other_keys are known keys (sub-tables) that the caller reads itself."""
        self.unknown_keys(table, [*schema, *other_keys], file, prefix, where)
        return {key: self.value(field, table.get(key, ABSENT), file, prefix + key)
                for key, field in schema.items()}

    def raise_problems(self, what: str, value_error: type[ConfigValueError] = ConfigValueError
                       ) -> None:
        """Raise every problem at once: ConfigFileError when a file could not be read at all,
        else value_error; `.problems` holds them one by one."""
        if not self.problems:
            return
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        message = f"{count} in {what}:\n" + "\n".join(f"  {p}" for p in self.problems)
        error_class = (ConfigFileError if any(not p.key for p in self.problems)
                       else value_error)
        raise error_class(message, problems=self.problems)
