"""Every `hearth <words>` that an operator message or a doc quotes is a command the CLI has
(with options it takes, and for `hearth ctl` a console command), so no message sends an
operator to a command that does not exist (it happened: `hearth w1 list`)."""

import argparse
import ast
import re
from pathlib import Path

from agent import cli
from agent.console.commands import COMMANDS as CONSOLE_COMMANDS

REPO = Path(__file__).resolve().parent.parent
QUOTED = re.compile(r"`hearth ([^`]*)`")
CONSOLE_PROMPT = re.compile(r"\S+ \S+> ?$")  # `hearth b07 NORMAL> ` shows the prompt
PLACEHOLDER = re.compile(r"^(<.*>|\[.*\]|[A-Z][A-Z0-9_:]*(\.\w+)?|/\S*|\.\.\.)$")
"""FILE, H:P, FILE.toml, <command>, [FILE], a path: stand for what the operator types."""


def quoted_in_code() -> list[tuple[str, str]]:
    """(where, words) for every string constant of the package (f-strings' text parts too)."""
    found = []
    for path in sorted((REPO / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [(f"{path.relative_to(REPO)}:{node.lineno}", words)
                          for words in QUOTED.findall(node.value)]
    return found


def quoted_in_docs() -> list[tuple[str, str]]:
    paths = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "hardware").rglob("*.md"))]
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        found += [(str(path.relative_to(REPO)), match.group(1))
                  for match in QUOTED.finditer(text.replace("\n", " "))]
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """argparse keeps them in its private _actions; a test may look."""
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def problem(words: str) -> str | None:
    """Why `hearth WORDS` is not a command line the CLI takes, or None."""
    tokens = [token.strip("[]") for token in words.split()]
    if CONSOLE_PROMPT.match(words):
        return None
    top = cli.build_parser(tokens[0])
    if tokens[0] in options(top):
        return None
    command = subcommands(top).get(tokens[0])
    if command is None:
        return f"{tokens[0]!r} is not a hearth command"
    rest = tokens[1:]
    if tokens[0] == "ctl":
        typed = [t for t in rest if not t.startswith("-") and not PLACEHOLDER.match(t)]
        names = {c.name for c in CONSOLE_COMMANDS}
        if typed and " ".join(typed[:2]) not in names and typed[0] not in names:
            return f"{' '.join(typed)!r} is not a console command"
        return None
    actions = subcommands(command)
    if actions and rest and not rest[0].startswith("-") and not PLACEHOLDER.match(rest[0]):
        if rest[0] not in actions:
            return f"{rest[0]!r} is not an action of hearth {tokens[0]}"
        command, rest = actions[rest[0]], rest[1:]
    unknown = [t.split("=")[0] for t in rest
               if t.startswith("-") and t.split("=")[0] not in options(command)]
    return f"hearth {tokens[0]} has no option {unknown[0]}" if unknown else None


def test_the_checker_refuses_what_does_not_exist():
    assert problem("w1 list") == "'w1' is not a hearth command"
    assert problem("ctl w1 lst") == "'w1 lst' is not a console command"
    assert problem("config chek FILE") == "'chek' is not an action of hearth config"
    assert problem("sensors --jsn") == "hearth sensors has no option --jsn"
    assert problem("ctl w1 list") is None and problem("config check --json FILE") is None
    assert problem("b07 NORMAL> ") is None and problem("--help") is None


def test_every_quoted_hearth_command_exists():
    quoted = quoted_in_code() + quoted_in_docs()
    assert len(quoted) > 50, "the search finds the quotes"
    wrong = {f"{where}: `hearth {words}`": problem(words) for where, words in quoted
             if problem(words)}
    assert wrong == {}
