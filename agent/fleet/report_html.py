"""The statement as one static HTML page for a lobby screen: the month's figures in large type,
uptime per module, each fault with its outcome, and two plots of the month as inline SVG.

Why no script and no external file: the page is copied onto whatever a building shows, often a
signage player that runs no JavaScript and reaches no network; everything it needs is inside.
Every figure is an element with `data-figure`, so a test (or a screen-reader) finds it by name.
"""

import html
import math
from typing import Any

WIDTH_PX = 1800
HEAT_COLOUR = "#f08c2e"
ELECTRIC_COLOUR = "#4aa3df"

STYLE = """
body { background: #10151c; color: #e8edf2; font-family: "DejaVu Sans", Arial, sans-serif;
       margin: 32px 48px; }
h1 { font-size: 44px; margin: 0 0 4px 0; }
.sub { color: #9fb0c0; font-size: 22px; margin-bottom: 24px; }
.tiles { display: flex; gap: 20px; margin-bottom: 24px; }
.tile { background: #1c2530; border-radius: 12px; padding: 16px 22px; flex: 1; }
.tile .label { color: #9fb0c0; font-size: 20px; }
.tile .value { font-size: 52px; font-weight: bold; }
.tile .unit { font-size: 24px; color: #c9d4de; }
.row { display: flex; gap: 28px; }
.panel { background: #1c2530; border-radius: 12px; padding: 14px 20px; margin-bottom: 20px; }
h2 { font-size: 24px; margin: 0 0 8px 0; color: #c9d4de; }
table { border-collapse: collapse; font-size: 20px; width: 100%; }
td, th { text-align: left; padding: 4px 10px; border-bottom: 1px solid #2c3846; }
th { color: #9fb0c0; font-weight: normal; }
.small { font-size: 15px; color: #9fb0c0; }
"""


def _number(value: float | None, decimals: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{decimals}f}"


def _tile(figure: str, label: str, value: str, unit: str) -> str:
    return (f'<div class="tile"><div class="label">{html.escape(label)}</div>'
            f'<span class="value" data-figure="{figure}">{html.escape(value)}</span> '
            f'<span class="unit">{html.escape(unit)}</span></div>')


def daily_energy_svg(days: list[dict[str, Any]], width_px: int = 1060,
                     height_px: int = 330) -> str:
    """Heat and electricity per day, side by side, on a kWh axis with four gridlines."""
    left, bottom, top = 70, 40, 20
    plot_w, plot_h = width_px - left - 10, height_px - bottom - top
    peak = max([d["heat_kwh"] for d in days] + [d["electricity_kwh"] for d in days] + [0.001])
    step = _nice_step(peak / 4)
    axis_max = step * 4 if step * 4 >= peak else step * 5
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width_px}" height="{height_px}" '
             f'role="img" aria-label="heat and electricity per day">']
    for tick in range(int(round(axis_max / step)) + 1):
        y = top + plot_h - plot_h * tick * step / axis_max
        parts.append(f'<line x1="{left}" x2="{width_px - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#2c3846"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 5:.1f}" fill="#9fb0c0" font-size="15" '
                     f'text-anchor="end">{tick * step:g}</text>')
    slot = plot_w / max(len(days), 1)
    for index, day in enumerate(days):
        x = left + index * slot
        for offset, key, colour in ((0.1, "heat_kwh", HEAT_COLOUR),
                                    (0.5, "electricity_kwh", ELECTRIC_COLOUR)):
            bar_h = plot_h * day[key] / axis_max
            parts.append(f'<rect x="{x + offset * slot:.1f}" y="{top + plot_h - bar_h:.1f}" '
                         f'width="{slot * 0.4:.1f}" height="{bar_h:.1f}" fill="{colour}">'
                         f'<title>{day["date"]} {key}: {day[key]:.1f}</title></rect>')
        if index % 2 == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{height_px - 18}" fill="#9fb0c0" '
                         f'font-size="15" text-anchor="middle">{int(day["date"][-2:])}</text>')
    parts.append(f'<text x="{left}" y="{height_px - 2}" fill="#9fb0c0" font-size="15">kWh per '
                 f'day: <tspan fill="{HEAT_COLOUR}">heat</tspan>, <tspan '
                 f'fill="{ELECTRIC_COLOUR}">electricity</tspan></text></svg>')
    return "".join(parts)


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)


def uptime_svg(days: list[dict[str, Any]], modules: list[str], width_px: int = 640,
               cell_h: int = 34) -> str:
    """A strip per module, a cell per day: green all day up, amber some hours out, red most."""
    left = 90
    height_px = cell_h * len(modules) + 30
    cell_w = (width_px - left - 4) / max(len(days), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width_px}" height="{height_px}" '
             'role="img" aria-label="uptime per module and day">']
    for row, module in enumerate(modules):
        y = row * cell_h
        parts.append(f'<text x="0" y="{y + cell_h * 0.65:.1f}" fill="#c9d4de" font-size="17">'
                     f'{html.escape(module)}</text>')
        for index, day in enumerate(days):
            pct = day["uptime_pct"].get(module, 0.0)
            colour = "#3fb56b" if pct >= 99.0 else "#e3b23c" if pct >= 75.0 else "#d9534f"
            parts.append(f'<rect x="{left + index * cell_w:.1f}" y="{y + 3}" '
                         f'width="{cell_w - 2:.1f}" height="{cell_h - 6}" fill="{colour}">'
                         f'<title>{day["date"]} {html.escape(module)}: {pct:.1f} %</title>'
                         '</rect>')
    parts.append(f'<text x="{left}" y="{height_px - 6}" fill="#9fb0c0" font-size="15">each '
                 'day: green 99 % or more up, amber 75 % or more, red less</text></svg>')
    return "".join(parts)


def render(figures: dict[str, Any]) -> str:
    """The whole page."""
    site, month = html.escape(figures["site"]), html.escape(figures["month"])
    displaced = figures["displaced"]
    tiles = [
        _tile("heat_kwh", "Heat delivered", _number(figures["heat_kwh"]), "kWh"),
        _tile("electricity_kwh", "Electricity used", _number(figures["electricity_kwh"]), "kWh"),
        _tile("recovery_pct", "Heat recovered", _number(figures["recovery_pct"]), "%"),
        _tile("displaced_kwh", f"{displaced.capitalize()} heating displaced",
              _number(figures["displaced_kwh"]), f"kWh of {displaced}"),
        _tile("co2_avoided_kg", "CO\u2082 avoided", _number(figures["co2_avoided_kg"]),
              "kg CO\u2082e")]
    if figures["displaced_cost"] is not None:
        tiles.append(_tile("displaced_cost", "Heating cost saved",
                           _number(figures["displaced_cost"], 2), figures["currency"]))
    module_rows = "".join(
        f'<tr><td>{html.escape(m["module"])}</td>'
        f'<td data-figure="module:{html.escape(m["module"])}:uptime_pct">'
        f'{_number(m["uptime_pct"])}</td>'
        f'<td data-figure="module:{html.escape(m["module"])}:heat_kwh">'
        f'{_number(m["heat_kwh"])}</td>'
        f'<td data-figure="module:{html.escape(m["module"])}:electricity_kwh">'
        f'{_number(m["electricity_kwh"])}</td></tr>' for m in figures["modules"])
    fault_rows = "".join(
        f'<tr data-figure="fault"><td>{html.escape(f["time"])}</td>'
        f'<td>{html.escape(f["module"])} / {html.escape(f["board"])}</td>'
        f'<td>{html.escape(f["cause"])}</td><td>{html.escape(f["outcome"])}</td></tr>'
        for f in figures["faults"]) or '<tr><td colspan="4">No faults this month.</td></tr>'
    factors = figures["factors"]
    efficiency = figures["displaced_efficiency"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{site}: heat statement {month}</title>
<style>{STYLE}</style></head>
<body style="width:{WIDTH_PX}px">
<h1>{site}: heat from computing, {month}</h1>
<div class="sub">Recorded <span data-figure="hours_recorded">{figures["hours_recorded"]:.0f}</span> of {figures["days_in_month"] * 24} hours this month.
Displaced: a {displaced} heater at {efficiency:g} efficiency,
{factors["gas_co2_kg_per_kwh"] if displaced == "gas" else factors["grid_co2_kg_per_kwh"]:g}
kg CO\u2082e per kWh; the electricity itself:
<span data-figure="co2_electricity_kg">{_number(figures["co2_electricity_kg"])}</span>
kg CO\u2082e at {factors["grid_co2_kg_per_kwh"]:g} per kWh.</div>
<div class="tiles">{"".join(tiles)}</div>
<div class="row">
<div class="panel"><h2>Heat and electricity per day</h2>{daily_energy_svg(figures["days"])}</div>
<div class="panel"><h2>Uptime per module</h2>
{uptime_svg(figures["days"], [m["module"] for m in figures["modules"]])}
<table><tr><th>module</th><th>uptime %</th><th>heat kWh</th><th>electricity kWh</th></tr>
{module_rows}</table></div>
</div>
<div class="panel"><h2>Faults and what became of them (<span data-figure="fault_count"
>{len(figures["faults"])}</span>; warnings: {figures["warnings"]})</h2>
<table><tr><th>when</th><th>module / board</th><th>cause</th><th>outcome</th></tr>
{fault_rows}</table></div>
</body></html>
"""
