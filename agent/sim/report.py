"""The report of a simulated site run: summary figures (text for people, JSON for tools) and
plots, all from one Recording.

Why pure Python for the figures and matplotlib only inside write_report: `hearth sim` and the
tests import this module for summarize() alone, and matplotlib takes a second to import.

Series are sampled at the engine's cadence; a sample holds until the next one (its weight is
the gap to the next sample, the last one repeats the previous gap), so averages and board-time
stay right if the cadence changes. None in a series (leader offline, value unknown) is skipped.
"""

import json
import math
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from agent.sim.building import BAND_K, comfort
from agent.sim.recording import Recording

BALANCE_TOLERANCE = 0.01
"""Relative error within which electric = heat_to_water + to_room + stored must close."""

MODE_ORDER = ("NORMAL", "STARTING", "LIMITED", "UNKNOWN", "SAFE", "FAULT", "SHUTDOWN")
"""Board modes from harmless to worst; a heat map row standing for several boards shows the
worst. UNKNOWN is a sample with no mode (the board or its leader did not report)."""

MODE_COLOURS = {"NORMAL": "#4caf50", "STARTING": "#81d4fa", "LIMITED": "#ffb300",
                "UNKNOWN": "#d9d9d9", "SAFE": "#f4511e", "FAULT": "#b71c1c",
                "SHUTDOWN": "#212121"}

TRACKING_NOTE = ("heat reaches the water through the oil bath minutes after the power "
                 "changes, so part of this error is physics, not control")

EVENT_KINDS_SHOWN = 6
"""Event kinds named in the text and coloured in demand.png; the rarer ones are lumped."""

HEATMAP_MAX_ROWS = 256
HEATMAP_MAX_COLUMNS = 1000
PLOT_DPI = 100


def summarize(recording: Recording) -> dict[str, Any]:
    """The run's figures as plain JSON-ready values; a figure that cannot be known is None."""
    weights = _sample_weights(recording.times_s)
    # Recording documents the keys bare ("electric"); the engine may spell them with their unit
    # ("electric_wh"). Both mean Wh.
    energy = {key: recording.energy.get(key, recording.energy.get(f"{key}_wh")) for key in (
        "requested", "heat_to_water", "electric", "to_room", "stored", "load",
        "metered_electric", "metered_heat")}
    simulated_s = recording.meta.get("simulated_s")
    if simulated_s is None and recording.times_s:
        simulated_s = recording.times_s[-1] - recording.times_s[0]
    wall_s = recording.meta.get("wall_s")
    return {
        "scenario": recording.meta.get("scenario", "unnamed"),
        "description": recording.meta.get("description", ""),
        "simulated_s": simulated_s,
        "wall_s": wall_s,
        "speed": _ratio(simulated_s, wall_s),
        "modules": _module_count(recording),
        "boards": _board_count(recording),
        "samples": len(recording.times_s),
        "energy_wh": energy,
        "recovery_efficiency": _ratio(energy["heat_to_water"], energy["electric"]),
        "mean_load_w": _weighted_mean(recording.site.get("load_w", []), weights),
        "mean_demand_w": _weighted_mean(recording.site.get("demand_w", []), weights),
        "mean_heat_w": _weighted_mean(recording.site.get("heat_w", []), weights),
        "balance": _balance(energy),
        "metering": {"electric_ratio": _ratio(energy["metered_electric"], energy["electric"]),
                     "heat_ratio": _ratio(energy["metered_heat"], energy["heat_to_water"])},
        "tracking": _tracking(recording.site, weights),
        "tank": _tank(recording.site, recording.times_s),
        "modes": _mode_time(recording, weights),
        "faults": [{"t_s": f.t_s, "kind": f.kind, "target": f.target,
                    "description": f.description, "outcome": f.outcome,
                    "cleared_s": f.cleared_s} for f in recording.faults],
        "events": dict(Counter(str(e.get("kind", "?")) for e in recording.events).most_common()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned plain text for a terminal and summary.txt."""
    energy = summary["energy_wh"]
    scale, unit = _energy_unit(energy.values())

    def kwh(key: str) -> str:
        value = energy[key]
        return "n/a" if value is None else f"{value / scale:,.2f} {unit}"

    metering, tracking, balance = summary["metering"], summary["tracking"], summary["balance"]
    if balance["closure"] is None:
        closes, verdict = "n/a", "needs electric, heat_to_water, to_room and stored"
    else:
        # Rounded up, so "within" stays true when the error is a few thousandths of a percent.
        closes = f"closes within {math.ceil(balance['closure'] * 10000 - 1e-9) / 100:.2f} %"
        verdict = ("electricity = heat to water + to room + stored" if balance["within_tolerance"]
                   else f"FAILS the {BALANCE_TOLERANCE:.0%} check: find the energy not counted")
    lines = [f"Hearth simulation: {summary['scenario']}",
             *textwrap.wrap(summary["description"], 96, initial_indent="  ",
                            subsequent_indent="  "),
             _row("simulated", _duration(summary["simulated_s"]),
                  f"in {_duration(summary['wall_s'])} of wall time "
                  f"({_number(summary['speed'], '.0f', 'x')})"),
             _row("site", f"{summary['boards']} boards",
                  f"in {summary['modules']} modules, {summary['samples']} samples"),
             *_tank_lines(summary["tank"]),
             "Energy",
             _row("requested", kwh("requested"), "site demand integrated"),
             _row("heat to water", kwh("heat_to_water"), "physics"),
             _row("to room", kwh("to_room"), "lost from boards and baths to the room"),
             _row("stored", kwh("stored"), "change of heat held in SoCs and oil baths"),
             _row("electricity", kwh("electric"), "physics"),
             _row("recovery", _percent(summary["recovery_efficiency"]),
                  "heat to water / electricity"),
             _row("building load", kwh("load"),
                  f"mean {_number(summary['mean_load_w'], ',.0f', ' W')}"),
             _row("balance", closes, verdict),
             _row("metered electricity", _number(metering["electric_ratio"], ".3f", " x"),
                  "leaders' MQTT ledger / physics"),
             _row("metered heat", _number(metering["heat_ratio"], ".3f", " x"),
                  "leaders' MQTT ledger / physics"),
             f"Diagnostic: the site's own command, |demand - heat to water|, "
             f"{tracking['samples']} samples",
             _row("mean", _number(tracking["mean_abs_error_w"], ",.1f", " W"),
                  f"{_number(tracking['mean_abs_error_pct'], '.1f', ' %')} of mean demand "
                  f"{_number(tracking['mean_demand_w'], ',.0f', ' W')}"),
             _row("RMS", _number(tracking["rms_error_w"], ",.1f", " W"),
                  f"{_number(tracking['rms_error_pct'], '.1f', ' %')} of mean demand"),
             "  (heat lags power through the oil bath: part of this error is physics)"]
    lines.append("Board modes (share of board-time)")
    board_s = sum(share["board_s"] for share in summary["modes"].values())
    divisor, unit = (3600.0, "board-h") if board_s >= 7200 else (1.0, "board-s")
    for mode, share in summary["modes"].items():
        lines.append(_row(mode, f"{share['pct']:.2f} %",
                          f"{share['board_s'] / divisor:,.{2 if divisor > 1 else 0}f} {unit}"))
    lines.append(f"Faults ({len(summary['faults'])})")
    for fault in summary["faults"]:
        cleared = ("not cleared" if fault["cleared_s"] is None
                   else f"cleared {_clock(fault['cleared_s'])}")
        lines.append(f"  {_clock(fault['t_s'])}  {fault['kind']} on {fault['target']}: "
                     f"{fault['outcome']} ({cleared})")
    events = list(summary["events"].items())
    shown = ", ".join(f"{kind} {count}" for kind, count in events[:EVENT_KINDS_SHOWN])
    more = len(events) - EVENT_KINDS_SHOWN
    lines.append(f"Events ({sum(count for _, count in events)})" + (f": {shown}" if shown else "")
                 + (f" and {more} more kinds (summary.json has all)" if more > 0 else ""))
    return "\n".join(lines) + "\n"


def write_report(recording: Recording, directory: Path) -> dict[str, Path]:
    """Write summary.txt, summary.json, recording.json and four PNG plots into `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarize(recording)
    paths = {name: directory / name for name in (
        "summary.txt", "summary.json", "recording.json",
        "demand.png", "temperatures.png", "boards.png", "modules.png")}
    paths["summary.txt"].write_text(format_summary(summary))
    paths["summary.json"].write_text(_json({**summary, "meta": recording.meta}))
    paths["recording.json"].write_text(_json(recording.to_json(), indent=None))
    for name, plot in (("demand.png", _plot_demand), ("temperatures.png", _plot_temperatures),
                       ("boards.png", _plot_boards), ("modules.png", _plot_modules)):
        figure = plot(recording, plt)
        figure.savefig(paths[name], dpi=PLOT_DPI)
        plt.close(figure)
    return paths


# --- summary figures ---------------------------------------------------------------------

def _sample_weights(times_s: list[float]) -> list[float]:
    if len(times_s) < 2:
        return [0.0] * len(times_s)
    gaps = [later - earlier for earlier, later in zip(times_s, times_s[1:])]
    return gaps + [gaps[-1]]


def _present(values: list[Any], weights: list[float]):
    """(value, weight) for each sample that has a number."""
    return [(v, w) for v, w in zip(values, weights) if v is not None and not _is_nan(v)]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _weighted_mean(values: list[Any], weights: list[float]) -> float | None:
    pairs = _present(values, weights)
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _module_count(recording: Recording) -> int:
    if recording.modules:
        return len(recording.modules)
    modules = recording.meta.get("modules", 0)
    return len(modules) if isinstance(modules, (list, tuple, dict)) else int(modules or 0)


def _board_count(recording: Recording) -> int:
    if recording.boards:
        return len(recording.boards)
    return _module_count(recording) * int(recording.meta.get("boards_per_module", 0) or 0)


def _balance(energy: dict[str, float | None]) -> dict[str, Any]:
    parts = [energy[key] for key in ("heat_to_water", "to_room", "stored")]
    if energy["electric"] is None or None in parts or not energy["electric"]:
        return {"residual_wh": None, "closure": None, "within_tolerance": None,
                "tolerance": BALANCE_TOLERANCE}
    residual = energy["electric"] - sum(parts)
    closure = abs(residual) / abs(energy["electric"])
    return {"residual_wh": residual, "closure": closure,
            "within_tolerance": closure <= BALANCE_TOLERANCE, "tolerance": BALANCE_TOLERANCE}


def _tracking(site: dict[str, list[Any]], weights: list[float]) -> dict[str, Any]:
    pairs = [(d, h, w) for d, h, w in zip(site.get("demand_w", []), site.get("heat_w", []), weights)
             if d is not None and h is not None and not _is_nan(d) and not _is_nan(h)]
    total = sum(w for _, _, w in pairs)
    if total <= 0:
        return {"samples": len(pairs), "mean_abs_error_w": None, "rms_error_w": None,
                "mean_demand_w": None, "mean_abs_error_pct": None, "rms_error_pct": None,
                "note": TRACKING_NOTE}
    mean_error = sum(abs(d - h) * w for d, h, w in pairs) / total
    rms_error = math.sqrt(sum((d - h) ** 2 * w for d, h, w in pairs) / total)
    mean_demand = sum(d * w for d, _, w in pairs) / total
    return {"samples": len(pairs), "mean_abs_error_w": mean_error, "rms_error_w": rms_error,
            "mean_demand_w": mean_demand,
            "mean_abs_error_pct": _percent_of(mean_error, mean_demand),
            "rms_error_pct": _percent_of(rms_error, mean_demand), "note": TRACKING_NOTE}


def _percent_of(value: float, whole: float) -> float | None:
    return value / whole * 100 if whole else None


def _tank(site: dict[str, list[Any]], times_s: list[float]) -> dict[str, float | None]:
    tank = [v for v in site.get("tank_c", []) if v is not None and not _is_nan(v)]
    target = [v for v in site.get("target_c", []) if v is not None and not _is_nan(v)]
    gaps = [t - c for c, t in zip(site.get("tank_c", []), site.get("target_c", []))
            if c is not None and t is not None and not _is_nan(c) and not _is_nan(t)]
    band = comfort(times_s, site.get("tank_c", []), site.get("target_c", []))
    return {"min_c": min(tank, default=None), "max_c": max(tank, default=None),
            "band_k": BAND_K,
            "below_band_k_h": band.below_band_k_h if band else None,
            "worst_deficit_k": band.worst_deficit_k if band else None,
            "below_band_s": band.below_band_s if band else None,
            "below_2k_s": band.below_2k_s if band else None,
            "final_c": tank[-1] if tank else None,
            "target_min_c": min(target, default=None), "target_max_c": max(target, default=None),
            "max_below_target_c": max(max(gaps), 0.0) if gaps else None,
            "max_above_target_c": max(-min(gaps), 0.0) if gaps else None}


def _tank_lines(tank: dict[str, Any]) -> list[str]:
    """The headline: what the building feels, the tank against its target band."""
    target = _range(tank["target_min_c"], tank["target_max_c"])
    return [f"Tank against its target ({target} °C ± {tank['band_k']} K)",
            _row("below the band", _number(tank["below_band_k_h"], ".2f", " K·h"),
                 f"{_duration(tank['below_band_s'])} below the band, "
                 f"{_duration(tank['below_2k_s'])} more than 2 K below"),
            _row("worst deficit", _number(tank["worst_deficit_k"], ".1f", " K"),
                 "furthest below the target"),
            _row("temperature", f"{_range(tank['min_c'], tank['max_c'])} °C",
                 f"{_number(tank['max_above_target_c'], '.1f', ' K')} above the target at most")]


def _mode_time(recording: Recording, weights: list[float]) -> dict[str, dict[str, float]]:
    """Board-seconds in each mode; a sample without a mode counts as UNKNOWN."""
    seconds: Counter[str] = Counter()
    for series in recording.boards.values():
        for mode, weight in zip(series.get("mode", []), weights):
            seconds[mode if mode else "UNKNOWN"] += weight
    total = sum(seconds.values())
    ordered = sorted(seconds, key=_mode_rank)
    return {mode: {"board_s": seconds[mode], "pct": seconds[mode] / total * 100 if total else 0.0}
            for mode in ordered}


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


# --- text --------------------------------------------------------------------------------

def _row(label: str, value: str, note: str = "") -> str:
    return f"  {label:<20}{value:>20}" + (f"   {note}" if note else "")


def _number(value: float | None, spec: str, unit: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _range(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "n/a"
    return f"{low:.1f}" if abs(high - low) < 0.05 else f"{low:.1f} .. {high:.1f}"


def _energy_unit(values) -> tuple[float, str]:
    largest = max((abs(v) for v in values if v is not None), default=0.0)
    return (1000.0, "kWh") if largest >= 10_000 else (1.0, "Wh")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 7200:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _json(value: Any, indent: int | None = 1) -> str:
    """Strict JSON (NaN would make files other tools refuse). Mending values walks every one of
    millions of samples, so it happens only when the plain encoding refuses."""
    try:
        return json.dumps(value, indent=indent, allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(_finite(value), indent=indent, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --- plots -------------------------------------------------------------------------------

def _time_axis(recording: Recording) -> tuple[list[float], str, float]:
    """Sample times in hours, or in minutes for runs under two hours; the axis label; the
    divisor that turns other times in seconds (faults, events) into the same unit."""
    times = recording.times_s
    span = recording.meta.get("simulated_s") or (times[-1] - times[0] if times else 0.0)
    divisor, unit = (3600.0, "h") if span >= 7200 else (60.0, "min")
    return [t / divisor for t in times], f"simulated time ({unit})", divisor


def _title(recording: Recording, what: str) -> str:
    """What the plot shows and the scenario, then its description wrapped to the plot's width."""
    scenario = recording.meta.get("scenario", "unnamed")
    description = recording.meta.get("description", "")
    return "\n".join([f"{what} - scenario {scenario}"] + textwrap.wrap(description, 120))


def _floats(values: list[Any]):
    """A series as a float array, None as NaN (matplotlib leaves a gap)."""
    import numpy

    return numpy.array([numpy.nan if v is None else float(v) for v in values], dtype=float)


def _plot_demand(recording: Recording, plt):
    x, xlabel, divisor = _time_axis(recording)
    figure, axes = plt.subplots(figsize=(12, 5.5), layout="constrained")
    site = recording.site
    for key, label, colour in (("demand_w", "site demand", "#1f77b4"),
                               ("heat_w", "heat delivered to water", "#d62728"),
                               ("load_w", "building load", "#7f7f7f")):
        if key in site:
            axes.plot(x, _floats(site[key]), label=label, color=colour, linewidth=1.2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("power (W)")
    axes.grid(alpha=0.3)
    tank_axes = axes.twinx()
    if "tank_c" in site:
        tank_axes.plot(x, _floats(site["tank_c"]), label="tank", color="black", linewidth=1.2)
    if "target_c" in site:
        tank_axes.plot(x, _floats(site["target_c"]), label="tank target", color="black",
                       linestyle="--", linewidth=1)
    tank_axes.set_ylabel("tank temperature (°C)")
    _mark_faults(axes, recording, divisor)
    _mark_events(axes, recording, divisor)
    lines, labels = axes.get_legend_handles_labels()
    tank_lines, tank_labels = tank_axes.get_legend_handles_labels()
    axes.legend(lines + tank_lines, labels + tank_labels, loc="upper left",
                bbox_to_anchor=(1.07, 1.0), fontsize=8, frameon=False)
    axes.set_title(_title(recording, "Demand and heat"), fontsize=11)
    return figure


def _mark_faults(axes, recording: Recording, divisor: float) -> None:
    """A dashed line where each fault was injected, shading until it cleared, a short label."""
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(axes.transData, axes.transAxes)
    labelled = len(recording.faults) <= 12
    for number, fault in enumerate(recording.faults):
        start = fault.t_s / divisor
        axes.axvline(start, color="#b71c1c", linestyle="--", linewidth=0.9,
                     label="fault" if number == 0 else None)
        if fault.cleared_s is not None:
            axes.axvspan(start, fault.cleared_s / divisor, color="#b71c1c", alpha=0.07, linewidth=0)
        if labelled:
            axes.text(start, 0.93, f"{fault.kind} {fault.target}", transform=transform,
                      rotation=90, va="top", ha="right", fontsize=7, color="#b71c1c",
                      bbox={"facecolor": "white", "alpha": 0.75, "linewidth": 0, "pad": 1})


def _mark_events(axes, recording: Recording, divisor: float) -> None:
    """Events as ticks along the top edge, one colour per kind (there may be thousands)."""
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(axes.transData, axes.transAxes)
    by_kind: dict[str, list[float]] = {}
    for event in recording.events:
        if event.get("t_s") is not None:
            by_kind.setdefault(str(event.get("kind", "?")), []).append(event["t_s"] / divisor)
    kinds = sorted(by_kind.items(), key=lambda kind_times: -len(kind_times[1]))
    if len(kinds) > EVENT_KINDS_SHOWN:
        rest = kinds[EVENT_KINDS_SHOWN - 1:]
        kinds = kinds[:EVENT_KINDS_SHOWN - 1] + [
            (f"{len(rest)} other kinds", [t for _, times in rest for t in times])]
    for (kind, times), colour in zip(kinds, _colours(len(kinds), "Dark2")):
        axes.vlines(times, 0.955, 1.0, transform=transform, color=colour, linewidth=1,
                    label=f"event: {kind} ({len(times)})")


def _colours(count: int, palette_name: str = "") -> list:
    from matplotlib import colormaps

    palette = colormaps[palette_name or ("tab10" if count <= 10 else "tab20")]
    return [palette(i % palette.N) for i in range(count)]


def _plot_temperatures(recording: Recording, plt):
    import numpy

    x, xlabel, _ = _time_axis(recording)
    figure, (oil_axes, soc_axes) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True,
                                                layout="constrained")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="black", linewidth=1.1, label="oil bath"),
               Line2D([], [], color="black", linewidth=1, linestyle="--", label="water outlet")]
    for (name, series), colour in zip(recording.modules.items(),
                                      _colours(len(recording.modules))):
        if "oil_c" in series:
            oil_axes.plot(x, _floats(series["oil_c"]), color=colour, linewidth=1.1)
        if "outlet_c" in series:
            oil_axes.plot(x, _floats(series["outlet_c"]), color=colour, linewidth=1,
                          linestyle="--")
        handles.append(Line2D([], [], color=colour, linewidth=4, label=name))
    oil_axes.set_ylabel("temperature (°C)")
    oil_axes.set_title(_title(recording, "Module oil baths (solid) and water outlets (dashed)"),
                       fontsize=11)
    oil_axes.grid(alpha=0.3)
    oil_axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                    frameon=False, ncol=1 if len(handles) <= 14 else 2)
    socs = [_floats(series["soc_c"]) for series in recording.boards.values() if "soc_c" in series]
    if socs and len(x):
        names = [name for name, series in recording.boards.items() if "soc_c" in series]
        grid = numpy.vstack(socs)
        known = ~numpy.isnan(grid)
        any_known = known.any(axis=0)
        filled = numpy.where(known, grid, -numpy.inf)
        hottest = numpy.where(any_known, filled.max(axis=0), numpy.nan)
        coolest = numpy.where(any_known, numpy.where(known, grid, numpy.inf).min(axis=0), numpy.nan)
        median = numpy.full(len(x), numpy.nan)
        for column in numpy.flatnonzero(any_known):
            median[column] = numpy.median(grid[known[:, column], column])
        soc_axes.fill_between(x, coolest, hottest, color="#ff7f0e", alpha=0.15, linewidth=0,
                              label="coolest .. hottest board")
        soc_axes.plot(x, hottest, color="#d62728", linewidth=1.2, label="hottest board")
        soc_axes.plot(x, median, color="#1f77b4", linewidth=1, label="median board")
        if any_known.any():
            peak = numpy.unravel_index(numpy.argmax(filled), filled.shape)
            right_half = x[peak[1]] > (x[0] + x[-1]) / 2
            soc_axes.annotate(f"peak {grid[peak]:.1f} °C: {names[peak[0]]}",
                              (x[peak[1]], grid[peak]), xytext=(-8 if right_half else 8, -14),
                              textcoords="offset points", ha="right" if right_half else "left",
                              fontsize=8, color="#d62728")
        soc_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    soc_axes.set_ylabel("SoC temperature (°C)")
    soc_axes.set_title(f"Board SoC temperatures ({len(socs)} boards)", fontsize=10)
    soc_axes.set_xlabel(xlabel)
    soc_axes.grid(alpha=0.3)
    return figure


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _board_grid(recording: Recording, column: str, encode) -> tuple[list[str], Any]:
    """One row per board (sorted by module, then board), one column per sample."""
    import numpy

    names = sorted(recording.boards, key=_natural_key)
    rows = []
    for name in names:
        values = recording.boards[name].get(column, [])
        padded = list(values[:len(recording.times_s)])
        padded += [None] * (len(recording.times_s) - len(padded))
        rows.append([encode(v) for v in padded])
    return names, numpy.array(rows, dtype=float).reshape(len(names), len(recording.times_s))


def _shrink(grid, reduce):
    """Bin rows and columns so a heat map has at most as many cells as it has pixels to show."""
    import numpy

    for axis, limit in ((0, HEATMAP_MAX_ROWS), (1, HEATMAP_MAX_COLUMNS)):
        size = grid.shape[axis]
        factor = math.ceil(size / limit) if size > limit else 1
        if factor > 1:
            pad = (-size) % factor
            widths = [(0, 0), (0, 0)]
            widths[axis] = (0, pad)
            padded = numpy.pad(grid, widths, constant_values=numpy.nan)
            shape = (padded.shape[0] // factor, factor, padded.shape[1]) if axis == 0 else \
                (padded.shape[0], padded.shape[1] // factor, factor)
            grid = reduce(padded.reshape(shape), axis=axis + 1)
    return grid


def _nanmean(grid, axis):
    import numpy

    known = ~numpy.isnan(grid)
    count = known.sum(axis=axis)
    total = numpy.where(known, grid, 0.0).sum(axis=axis)
    return numpy.divide(total, count, out=numpy.full(count.shape, numpy.nan), where=count > 0)


def _nanmax(grid, axis):
    import numpy

    filled = numpy.where(numpy.isnan(grid), -1.0, grid).max(axis=axis)
    return numpy.where(filled < 0, numpy.nan, filled)


def _plot_boards(recording: Recording, plt):
    import numpy
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    samples = [m for series in recording.boards.values() for m in series.get("mode", [])]
    modes = sorted({m if m else "UNKNOWN" for m in samples} or {"UNKNOWN"}, key=_mode_rank)
    spare = iter(_colours(len(modes)))
    colours = [MODE_COLOURS.get(m) or next(spare) for m in modes]
    codes = {mode: float(i) for i, mode in enumerate(modes)}
    names, setpoints = _board_grid(recording, "setpoint_w",
                                   lambda v: numpy.nan if v is None else float(v))
    _, mode_grid = _board_grid(recording, "mode", lambda v: codes[v if v else "UNKNOWN"])
    setpoints = _shrink(setpoints, _nanmean)
    mode_grid = _shrink(mode_grid, _nanmax)
    x, xlabel, _ = _time_axis(recording)
    bins = math.ceil(len(names) / HEATMAP_MAX_ROWS) if len(names) > HEATMAP_MAX_ROWS else 1
    extent = (x[0] if x else 0, x[-1] if x else 1, setpoints.shape[0] * bins - 0.5, -0.5)
    figure, (set_axes, mode_axes) = plt.subplots(2, 1, figsize=(12, 9 if len(names) <= 64 else 12),
                                                 sharex=True, layout="constrained")
    set_cmap = plt.get_cmap("viridis").with_extremes(bad="#e0e0e0")
    image = set_axes.imshow(setpoints, aspect="auto", interpolation="nearest", cmap=set_cmap,
                            extent=extent)
    figure.colorbar(image, ax=set_axes, label="setpoint (W)", pad=0.01)
    per_row = f" (each row: {bins} boards, mean)" if bins > 1 else ""
    set_axes.set_title(_title(recording, f"Board power setpoints{per_row}"), fontsize=11)
    mode_cmap = ListedColormap(colours).with_extremes(bad="#ffffff")
    norm = BoundaryNorm([i - 0.5 for i in range(len(modes) + 1)], len(modes))
    mode_axes.imshow(mode_grid, aspect="auto", interpolation="nearest", cmap=mode_cmap, norm=norm,
                     extent=extent)
    worst = f" (each row: {bins} boards, worst mode)" if bins > 1 else ""
    mode_axes.set_title(f"Board modes{worst}", fontsize=10)
    mode_axes.legend(handles=[Patch(color=c, label=m) for m, c in zip(modes, colours)],
                     loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    mode_axes.set_xlabel(xlabel)
    for axes in (set_axes, mode_axes):
        _label_modules(axes, names)
    return figure


def _label_modules(axes, names: list[str]) -> None:
    """Name each module's block of rows and rule a line between blocks."""
    blocks: list[tuple[str, int, int]] = []
    for row, name in enumerate(names):
        module = name.split("/", 1)[0]
        if blocks and blocks[-1][0] == module:
            blocks[-1] = (module, blocks[-1][1], row)
        else:
            blocks.append((module, row, row))
    axes.set_yticks([(first + last) / 2 for _, first, last in blocks],
                    [f"{module} ({last - first + 1})" for module, first, last in blocks],
                    fontsize=7 if len(blocks) > 16 else 8)
    if len(names) <= 64:
        for row in range(1, len(names)):
            axes.axhline(row - 0.5, color="white", linewidth=0.3, alpha=0.6)
    for _, first, _ in blocks[1:]:
        axes.axhline(first - 0.5, color="white", linewidth=1.2)
    axes.set_ylabel("boards by module")


def _spans(x: list[float], flags: list[Any], wanted: bool) -> list[tuple[float, float]]:
    """Runs of samples where a flag equals `wanted`, each until the next sample."""
    spans: list[tuple[float, float]] = []
    for i, flag in enumerate(flags[:len(x)]):
        if flag is None or bool(flag) != wanted:
            continue
        end = x[i + 1] if i + 1 < len(x) else x[i]
        if spans and spans[-1][1] == x[i]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((x[i], end))
    return spans


def _plot_modules(recording: Recording, plt):
    x, xlabel, _ = _time_axis(recording)
    count = max(len(recording.modules), 1)
    columns = min(4, math.ceil(count / 8))
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(12, 1.2 + 1.6 * rows), sharex=True,
                                squeeze=False, layout="constrained")
    flat = [axes for row in grid for axes in row]
    for axes, (name, series) in zip(flat, recording.modules.items()):
        for key, label, colour, style in (("budget_w", "budget", "#1f77b4", "--"),
                                          ("power_w", "power", "#ff7f0e", "-"),
                                          ("heat_w", "metered heat", "#d62728", "-")):
            if key in series:
                axes.plot(x, _floats(series[key]), color=colour, linestyle=style, linewidth=1,
                          label=label)
        for start, end in _spans(x, series.get("interlock", []), True):
            axes.axvspan(start, end, color="#b71c1c", alpha=0.18, linewidth=0)
        for start, end in _spans(x, series.get("leader_online", []), False):
            axes.axvspan(start, end, color="#616161", alpha=0.25, linewidth=0, hatch="//")
        axes.set_title(name, fontsize=9, loc="left")
        axes.set_ylabel("W", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    for axes in flat[len(recording.modules):]:
        axes.set_visible(False)
    for axes in grid[-1]:
        axes.set_xlabel(xlabel, fontsize=8)
    from matplotlib.patches import Patch

    handles, labels = flat[0].get_legend_handles_labels()
    handles += [Patch(color="#b71c1c", alpha=0.18, label="interlock"),
                Patch(facecolor="#616161", alpha=0.25, hatch="//", label="leader offline")]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
                  frameon=False)
    figure.suptitle(_title(recording, "Modules: budget, power, metered heat"), fontsize=11,
                    x=0.01, ha="left")
    return figure
