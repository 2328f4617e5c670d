"""The leader's and the site's Prometheus endpoints: their figures in the text exposition format
(version 0.0.4), served by the standard library's http.server. docs/metrics.md lists them.

Why by hand and not prometheus_client: the exposition format is a few lines of text, each role
already holds every figure in its state snapshot, and the golden image is built offline
(DESIGN.md section 8), so one dependency fewer is one thing fewer to fetch, pin and audit on
every board. `promtool check metrics` in the tests keeps the output honest.

Units are Prometheus' base units: joules for energy (the ledgers' Wh times 3600, counters with
`_total`), litres per second for flow, watts, degrees Celsius. Modes and statuses are state
sets: one series per possible value, 1 for the current one, so an alert is a plain comparison
(`hearth_board_status{status="offline"} == 1`). Each role serves its own port; nothing here is
module-level state.
"""

import http.server
import ipaddress
import math
import socket
import threading
from typing import Any, Callable, NamedTuple

from agent import __version__
from agent.errors import ConfigValueError
from agent.safety.supervisor import Mode
from agent.site.target_plan import MODES as SITE_MODES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_ADDRESS = "127.0.0.1"
"""Loopback: a figure leaves the machine only when the config says which address to serve."""

JOULES_PER_WH = 3600.0
MINUTES_PER_SECOND = 1.0 / 60.0


class Metric(NamedTuple):
    """One figure of a snapshot: its name, type, help line, snapshot field and scale to base
    units."""

    name: str
    kind: str
    help: str
    field: str
    scale: float = 1.0


MODULE_METRICS = (
    Metric("hearth_module_budget_watts", "gauge", "Heat budget given to the module by the site.",
           "budget_w"),
    Metric("hearth_module_electric_budget_watts", "gauge",
           "Electric budget after the trim loop (what the boards are asked to draw in total).",
           "electric_budget_w"),
    Metric("hearth_module_power_watts", "gauge", "Electric power drawn by the online boards.",
           "power_w"),
    Metric("hearth_module_heat_watts", "gauge", "Heat to water measured by the module meter.",
           "heat_w"),
    Metric("hearth_module_recovery_ratio", "gauge",
           "Heat to water over electric power (smoothed).", "efficiency"),
    Metric("hearth_module_capacity_watts", "gauge", "Most power the usable boards can draw now.",
           "capacity_w"),
    Metric("hearth_module_water_in_celsius", "gauge", "Module water inlet temperature.",
           "water_in_c"),
    Metric("hearth_module_water_out_celsius", "gauge", "Module water outlet temperature.",
           "water_out_c"),
    Metric("hearth_module_oil_celsius", "gauge", "Module oil temperature.", "oil_c"),
    Metric("hearth_module_flow_litres_per_second", "gauge", "Module water flow.",
           "flow_l_per_min", MINUTES_PER_SECOND),
    Metric("hearth_module_boards_online", "gauge", "Boards whose status is online.",
           "boards_online"),
    Metric("hearth_module_boards_usable", "gauge", "Boards given a share of the budget.",
           "boards_usable"),
    Metric("hearth_module_electric_energy_joules_total", "counter",
           "Electric energy drawn by the module's boards (ledger, survives restarts).",
           "energy_electric_wh", JOULES_PER_WH),
    Metric("hearth_module_heat_energy_joules_total", "counter",
           "Heat energy reported by the module's boards (ledger, survives restarts).",
           "energy_heat_wh", JOULES_PER_WH),
    Metric("hearth_module_metered_heat_energy_joules_total", "counter",
           "Heat energy measured by the module meter.", "energy_heat_metered_wh", JOULES_PER_WH),
)

BOARD_METRICS = (
    Metric("hearth_board_setpoint_watts", "gauge", "Setpoint the leader sent the board.",
           "setpoint_w"),
    Metric("hearth_board_power_watts", "gauge", "Electric power the board reported.", "power_w"),
    Metric("hearth_board_restarts_total", "counter", "Board restarts seen (new boot ids).",
           "restarts"),
    Metric("hearth_board_lost_states_total", "counter", "State messages lost (sequence gaps).",
           "lost_states"),
    Metric("hearth_board_lost_events_total", "counter", "Event messages lost (sequence gaps).",
           "lost_events"),
    Metric("hearth_board_rejected_states_total", "counter",
           "State messages the leader rejected (unusable or impossible values).",
           "rejected_states"),
    Metric("hearth_board_rejected_events_total", "counter",
           "Event messages the leader rejected (unusable envelope).", "rejected_events"),
    Metric("hearth_board_rejected_energy_reports_total", "counter",
           "Energy reports the ledger did not count (more than the board could draw).",
           "rejected_energy"),
    Metric("hearth_board_electric_energy_joules_total", "counter",
           "Electric energy of the board (ledger).", "energy_electric_wh", JOULES_PER_WH),
    Metric("hearth_board_heat_energy_joules_total", "counter",
           "Heat energy of the board (ledger).", "energy_heat_wh", JOULES_PER_WH),
)

SITE_METRICS = (
    Metric("hearth_site_demand_watts", "gauge", "Heat the site asks of its modules.", "demand_w"),
    Metric("hearth_site_target_celsius", "gauge", "Tank/loop temperature target in force.",
           "target_c"),
    Metric("hearth_site_loop_celsius", "gauge", "Tank/loop temperature.", "loop_c"),
    Metric("hearth_site_capacity_watts", "gauge", "Most power the available modules can draw now.",
           "capacity_w"),
    Metric("hearth_site_unmet_demand_watts", "gauge",
           "Demand no available module could take.", "unmet_w"),
    Metric("hearth_site_power_watts", "gauge", "Electric power drawn by the site's boards.",
           "power_w"),
    Metric("hearth_site_heat_watts", "gauge", "Heat to water measured by the module meters.",
           "heat_w"),
    Metric("hearth_site_modules_available", "gauge",
           "Modules with a leader online, recent state, no interlock and some capacity.",
           "modules_available"),
    Metric("hearth_site_electric_energy_joules_total", "counter",
           "Electric energy drawn by the site's boards (the leaders' ledgers).",
           "energy_electric_wh", JOULES_PER_WH),
    Metric("hearth_site_heat_energy_joules_total", "counter",
           "Heat energy of the site's boards (the leaders' ledgers).", "energy_heat_wh",
           JOULES_PER_WH),
)

BOARD_MODES = tuple(mode.value for mode in Mode) + ("unknown",)
"""The supervisor's modes, and `unknown` for a board the leader has no state from."""
BOARD_STATUSES = ("online", "offline", "silent", "unknown")
"""A board's availability as agent.leader.tracker.BoardView holds it."""
DEMAND_SOURCES = ("external", "temperature", "none")
"""Where the site role takes its demand from (`demand_source` on `site/state`)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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


def _state_set(labels: str, label: str, values: tuple[str, ...], current: str
               ) -> list[tuple[str, str]]:
    """One sample per possible value, 1 for `current`; a value outside the known ones is shown
    as well, so the set still sums to 1."""
    shown = values if current in values else values + (current,)
    return [(f'{labels},{label}="{_escape(value)}"', "1" if value == current else "0")
            for value in shown]


def _snapshot_families(lines: list[str], labels: str, metrics: tuple[Metric, ...],
                       snapshot: dict[str, Any]) -> None:
    for metric in metrics:
        value = _number(snapshot.get(metric.field), metric.scale)
        _family(lines, metric.name, metric.kind, metric.help,
                [(labels, value)] if value is not None else [])


def _build_info(lines: list[str]) -> None:
    _family(lines, "hearth_build_info", "gauge", "Always 1; the Hearth version serving this.",
            [(f'version="{_escape(__version__)}"', "1")])


def exposition(site: str, module: str, snapshot: dict[str, Any]) -> str:
    """The text format for one leader's snapshot; unknown values are left out, not made up."""
    base = f'site="{_escape(site)}",module="{_escape(module)}"'
    lines: list[str] = []
    _build_info(lines)
    _snapshot_families(lines, base, MODULE_METRICS, snapshot)
    interlock = snapshot.get("interlock") or {}
    _family(lines, "hearth_module_interlock_active", "gauge",
            "1 while the module interlock holds every board in SAFE.",
            [(base, _number(bool(interlock.get("active"))))] if snapshot else [])
    boards = sorted((snapshot.get("boards") or {}).items())
    for metric in BOARD_METRICS:
        samples = []
        for board, data in boards:
            value = _number(data.get(metric.field), metric.scale)
            if value is not None:
                samples.append((f'{base},board="{_escape(board)}"', value))
        _family(lines, metric.name, metric.kind, metric.help, samples)
    _family(lines, "hearth_board_mode", "gauge",
            "The board's last reported mode: 1 for the current one, 0 for the others.",
            [sample for board, data in boards for sample in _state_set(
                f'{base},board="{_escape(board)}"', "mode", BOARD_MODES,
                str(data.get("mode") or "unknown"))])
    _family(lines, "hearth_board_status", "gauge",
            "The board's availability as the leader sees it: 1 for the current one.",
            [sample for board, data in boards for sample in _state_set(
                f'{base},board="{_escape(board)}"', "status", BOARD_STATUSES,
                str(data.get("status") or "unknown"))])
    return "\n".join(lines) + "\n"


def site_exposition(site: str, snapshot: dict[str, Any]) -> str:
    """The text format for the site's `site/state` snapshot; before the site's first period
    only the build info."""
    base = f'site="{_escape(site)}"'
    lines: list[str] = []
    _build_info(lines)
    _snapshot_families(lines, base, SITE_METRICS, snapshot)
    budgets = sorted((snapshot.get("budgets_w") or {}).items())
    _family(lines, "hearth_site_module_budget_watts", "gauge",
            "Heat budget the site sent each module.",
            [(f'{base},module="{_escape(module)}"', value) for module, value in
             ((module, _number(budget)) for module, budget in budgets) if value is not None])
    if snapshot.get("demand_source") is not None:
        _family(lines, "hearth_site_demand_source", "gauge",
                "Where the site's demand comes from: 1 for the current source.",
                _state_set(base, "source", DEMAND_SOURCES, str(snapshot["demand_source"])))
    if snapshot.get("mode") is not None:
        _family(lines, "hearth_site_mode", "gauge",
                "The site's heating mode: 1 for the current one.",
                _state_set(base, "mode", SITE_MODES, str(snapshot["mode"])))
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `/metrics` (GET and HEAD) from `render()` on its own thread; `close()` stops it.
    `address` is an IP address (IPv4 or IPv6) to listen on; port 0 takes a free one."""

    def __init__(self, render: Callable[[], str], address: str = DEFAULT_ADDRESS,
                 port: int = 9105):
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, with_body: bool) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self.answer(with_body=True)

            def do_HEAD(self) -> None:
                self.answer(with_body=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news for the journal

        class Server(http.server.ThreadingHTTPServer):
            address_family = (socket.AF_INET6 if ipaddress.ip_address(address).version == 6
                              else socket.AF_INET)
            daemon_threads = True

        self.server = Server((address, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"metrics:{self.port}")

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


def start_endpoint(render: Callable[[], str], address: str, port: int, keys: str
                   ) -> MetricsServer | None:
    """A started MetricsServer, or None when `port` is 0. An address or port it cannot listen
    on is a ConfigValueError naming `keys`, the config keys an operator would change."""
    if port == 0:
        return None
    try:
        return MetricsServer(render, address, port).start()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        raise ConfigValueError(
            f"cannot serve /metrics on {where} ({reason}); set {keys} to an address "
            "of this machine and a free port, or the port to 0 for none") from None
