"""The leader's Prometheus endpoint: module totals and per-board figures in the text exposition
format (version 0.0.4), served by the standard library's http.server.

Why by hand and not prometheus_client: the exposition format is a few lines of text, the
leader already holds every figure in its `leader/state` snapshot, and the golden image is built
offline (DESIGN.md section 8), so one dependency fewer is one thing fewer to fetch, pin and
audit on every board. `promtool check metrics` in the tests keeps the output honest.
Each leader serves its own port; nothing here is module-level state.
"""

import http.server
import math
import threading
from typing import Any, Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, type, help, field of the leader/state snapshot)
MODULE_METRICS = (
    ("hearth_module_budget_watts", "gauge", "Heat budget given to the module by the site.",
     "budget_w"),
    ("hearth_module_electric_budget_watts", "gauge",
     "Electric budget after the trim loop (what the boards are asked to draw in total).",
     "electric_budget_w"),
    ("hearth_module_power_watts", "gauge", "Electric power drawn by the online boards.",
     "power_w"),
    ("hearth_module_heat_watts", "gauge", "Heat to water measured by the module meter.",
     "heat_w"),
    ("hearth_module_recovery_ratio", "gauge", "Heat to water over electric power (smoothed).",
     "efficiency"),
    ("hearth_module_capacity_watts", "gauge", "Most power the usable boards can draw now.",
     "capacity_w"),
    ("hearth_module_water_in_celsius", "gauge", "Module water inlet temperature.",
     "water_in_c"),
    ("hearth_module_water_out_celsius", "gauge", "Module water outlet temperature.",
     "water_out_c"),
    ("hearth_module_oil_celsius", "gauge", "Module oil temperature.", "oil_c"),
    ("hearth_module_flow_litres_per_minute", "gauge", "Module water flow.", "flow_l_per_min"),
    ("hearth_module_boards_online", "gauge", "Boards whose status is online.", "boards_online"),
    ("hearth_module_boards_usable", "gauge", "Boards given a share of the budget.",
     "boards_usable"),
    ("hearth_module_electric_energy_joules_total", "counter",
     "Electric energy drawn by the module's boards (ledger, survives restarts).",
     "energy_electric_wh"),
    ("hearth_module_heat_energy_joules_total", "counter",
     "Heat energy reported by the module's boards (ledger, survives restarts).",
     "energy_heat_wh"),
    ("hearth_module_metered_heat_energy_joules_total", "counter",
     "Heat energy measured by the module meter.", "energy_heat_metered_wh"),
)

BOARD_METRICS = (
    ("hearth_board_setpoint_watts", "gauge", "Setpoint the leader sent the board.",
     "setpoint_w"),
    ("hearth_board_power_watts", "gauge", "Electric power the board reported.", "power_w"),
    ("hearth_board_restarts_total", "counter", "Board restarts seen (new boot ids).",
     "restarts"),
    ("hearth_board_lost_states_total", "counter", "State messages lost (sequence gaps).",
     "lost_states"),
    ("hearth_board_lost_events_total", "counter", "Event messages lost (sequence gaps).",
     "lost_events"),
    ("hearth_board_rejected_states_total", "counter",
     "State messages the leader rejected (unusable or impossible values).", "rejected_states"),
    ("hearth_board_rejected_events_total", "counter",
     "Event messages the leader rejected (unusable envelope).", "rejected_events"),
    ("hearth_board_rejected_energy_reports_total", "counter",
     "Energy reports the ledger did not count (more than the board could draw).",
     "rejected_energy"),
    ("hearth_board_electric_energy_joules_total", "counter", "Electric energy of the board (ledger).",
     "energy_electric_wh"),
    ("hearth_board_heat_energy_joules_total", "counter", "Heat energy of the board (ledger).",
     "energy_heat_wh"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


JOULES_PER_WH = 3600.0
"""Prometheus wants base units: the ledger's Wh are exposed as joules."""


def _number(value: Any, scale: float = 1.0) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)) and math.isfinite(value):
        if scale != 1.0:
            return repr(float(value) * scale)
        return repr(float(value)) if isinstance(value, float) else str(value)
    return None


def _family(lines: list[str], name: str, kind: str, help_text: str,
            samples: list[tuple[str, str]]) -> None:
    if not samples:
        return
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(f"{name}{{{labels}}} {value}" for labels, value in samples)


def exposition(site: str, module: str, snapshot: dict[str, Any]) -> str:
    """The text format for one leader's snapshot; unknown values are left out, not made up."""
    base = f'site="{_escape(site)}",module="{_escape(module)}"'
    lines: list[str] = []
    for name, kind, help_text, field in MODULE_METRICS:
        value = _number(snapshot.get(field), JOULES_PER_WH if "joules" in name else 1.0)
        _family(lines, name, kind, help_text, [(base, value)] if value is not None else [])
    interlock = snapshot.get("interlock") or {}
    _family(lines, "hearth_module_interlock_active", "gauge",
            "1 while the module interlock holds every board in SAFE.",
            [(base, _number(bool(interlock.get("active"))))] if snapshot else [])
    boards = snapshot.get("boards") or {}
    for name, kind, help_text, field in BOARD_METRICS:
        samples = []
        for board, data in sorted(boards.items()):
            value = _number(data.get(field), JOULES_PER_WH if "joules" in name else 1.0)
            if value is not None:
                samples.append((f'{base},board="{_escape(board)}"', value))
        _family(lines, name, kind, help_text, samples)
    samples = [(f'{base},board="{_escape(board)}",status="{_escape(str(data.get("status")))}"',
                "1") for board, data in sorted(boards.items())]
    _family(lines, "hearth_board_status", "gauge",
            "The board's availability as the leader sees it (online, offline, silent).", samples)
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `/metrics` from `render()` on its own thread; `close()` stops it."""

    def __init__(self, render: Callable[[], str], host: str = "0.0.0.0", port: int = 9105):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news for the journal

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"metrics:{self.port}")

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
