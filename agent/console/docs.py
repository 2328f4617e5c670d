"""docs/console.md, generated from the command definitions so the page cannot drift from them.

Regenerate with `python -m agent.console.docs > docs/console.md`; a test checks it matches.
"""

from agent.console.commands import COMMANDS, OVERRIDE_DEFAULT_MIN
from agent.console.session import BURST, RATE_PER_S
from agent.console.spec import MAX_LINE
from agent.console.transports import DEFAULT_BAUD, DEFAULT_SERIAL, DEFAULT_SOCKET, MAX_CLIENTS
from agent.console.wire import MAX_DEPTH, MAX_REQUEST

INTRO = f"""# Technician console

A technician with a USB-serial cable, or a shell on the board, sees what the board is doing and
acts on it without the network. The same commands are reached three ways, all through one
`CommandProcessor` (`agent/console/commands.py`, whose docstring is the API; what each
command does is in `agent/console/handlers/`, one module per concern, reading the agent only
through its API):

* **serial**: `hearth console` (hearth-console.service) on `{DEFAULT_SERIAL}` at {DEFAULT_BAUD}
  8N1 passes lines to the agent over its socket and keeps answering when the agent is down
  (prompt `NO-AGENT`; `help`, `config`, `w1 list` still work). `hearth agent --console-serial
  DEV` serves a port from inside the agent instead (no separate service, used by the tests).
  From a laptop: `hearth term /dev/ttyUSB0` (history, tab completion; Ctrl-C goes to the
  board's console, which cancels the line, and Ctrl-D on an empty line quits), or picocom/screen.
* **local socket**: `hearth ctl <command>` talks to `{DEFAULT_SOCKET}` (mode 0660 in the
  agent's 0750 runtime directory: group `hearth` only); it exits 0 when done, 1 when refused,
  2 for a command line it cannot read (argparse's usage error) and 3 with one line when the
  agent does not answer. `--json` goes before or after the command (`hearth ctl --json status`,
  `hearth ctl status --json`); without an agent it prints `{{"ok": false, "command": null,
  "reason": ...}}`.
* **MQTT**: the remote subset below (docs/mqtt.md "Commands"), same definitions and checks.

Typed lines are the only place text becomes a number, and only ASCII digits count (`4.5`,
`3e0`; not `nan`, `inf`, `1_0` or `٣`). JSON callers (MQTT, the socket's `{{"command": ...,
"args": ...}}`) must send JSON numbers: `{{"watts": "3"}}` is refused, as are `true`, non-finite
and out-of-range numbers. Every refusal names the argument, the value and what was expected,
changes nothing, and is counted (`refused_commands` in `status --json`).

The socket takes one JSON object per line, at most {MAX_REQUEST} bytes and {MAX_DEPTH} levels
deep, and answers each with exactly one line. A request it cannot represent (not UTF-8, a
non-finite number, an integer beyond 2^53, a lone surrogate, an unknown key or a wrong type)
is refused there with the reason. It serves {MAX_CLIENTS} clients at once; when a new client
arrives and all places are taken, the client idle longest is told why and dropped, so a
technician always gets in (only if all {MAX_CLIENTS} are in the middle of a command is the
newcomer asked to try again).

Every command takes `--json` (one JSON object per line: `{{"ok": true, "command": ..., "data":
...}}` or `{{"ok": false, "command": ..., "reason": ...}}`). Destructive commands ask for
confirmation (type `yes`; `--yes` skips the question). A rejected command changes nothing and
says what was wrong and what to type.

The prompt shows the board and its mode: `hearth b07 NORMAL> `. Lines end with CR, LF or CRLF;
backspace/DEL edit, Ctrl-U clears the line, Ctrl-C cancels it (and a pending confirmation).
A line longer than {MAX_LINE} characters is discarded; a line with any byte that is not
printable text (line noise, a wrong baud rate, a control character or lone surrogate sent over
the socket) is refused whole, never executed; at most {RATE_PER_S:g} lines
per second are taken (bursts of {BURST}).

A local setpoint or `mode hold` lasts {OVERRIDE_DEFAULT_MIN:g} minutes unless told otherwise,
then the leader's setpoint (or the fallback) applies again; `mode auto` ends it at once.
`mode safe` holds the board in SAFE through the safety supervisor until `mode auto`.
"""


def reference_markdown() -> str:
    lines = [INTRO, "## Commands", "",
             "| command | what it does | confirmation | over MQTT from |",
             "| --- | --- | --- | --- |"]
    for command in COMMANDS:
        usage = command.usage().replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| `{usage}` | {command.help} | "
                     f"{'yes' if command.destructive else ''} | "
                     f"{', '.join(command.remote)} |")
    lines += ["", "## Arguments", "", "| command | argument | meaning | accepted values |",
              "| --- | --- | --- | --- |"]
    for command in COMMANDS:
        for arg in command.args:
            default = f" (default {arg.default:g})" if isinstance(arg.default, float) else ""
            lines.append(f"| `{command.name}` | `{arg.name}` | {arg.help}{default} | "
                         f"{arg.expected()} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
