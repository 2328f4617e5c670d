"""A site's monthly statement, as figures: heat delivered and electricity, recovery, the heating
it displaced and the CO2 avoided, uptime per module, each fault with its outcome, and the days
of the month; from the ledger's rows (agent/fleet/ledger.py), at the factors of [report].

Why the CO2 avoided is the displaced heating's alone: the electricity was bought for the compute
the boards sold, and would have been drawn in a data centre without them; what the building
did not burn is the saving. The electricity's own CO2 at the grid factor is given beside it, so
a reader can net the two if they count otherwise.
"""

import calendar
import csv
import datetime
import io
from typing import Any, Iterable

from agent.config_schema import REPORT_SCHEMA, Report
from agent.errors import ConfigValueError

FAULT_SEVERITIES = ("error", "critical")
"""Events that took a board to SAFE or latched a FAULT; warnings are counted, not listed."""
ENDED_BY_POWEROFF = ("shutdown", "poweroff")


def report_defaults() -> Report:
    """[report] at its documented defaults, for a site config without the section."""
    return Report(**{key: field.default for key, field in REPORT_SCHEMA.items()})


def month_bounds_s(month: str) -> tuple[float, float]:
    """The month's first and last instant, UTC seconds; ValueError for anything not YYYY-MM."""
    start = datetime.datetime.strptime(month, "%Y-%m").replace(tzinfo=datetime.timezone.utc)
    days = calendar.monthrange(start.year, start.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400.0


def month_rows(ledger, month: str, kept_by: str) -> list[dict[str, Any]]:
    """The rows of `month` from a LedgerFile, or a ConfigValueError an operator can act on:
    a month not written YYYY-MM, or no ledger for it (`kept_by` says what writes it)."""
    try:
        month_bounds_s(month)
    except ValueError:
        raise ConfigValueError(f"--month {month!r} is not a month; write it YYYY-MM, "
                               "e.g. 2026-12") from None
    rows = ledger.read_month(month)
    if not rows:
        raise ConfigValueError(f"no ledger for site {ledger.site!r} in {month}: "
                               f"{ledger.path(month)} is missing or empty; check --site, "
                               f"--month and --ledger-dir, and that {kept_by}")
    return rows


def _utc(wall_s: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(wall_s, datetime.timezone.utc)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60.0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours / 24:.1f} days"


def fault_outcomes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fault (an error or critical event) with how it ended: cleared, reset by a
    technician, the board powered off or restarted, or still open at the month's end."""
    ordered = sorted(events, key=lambda event: event["t"])
    faults = []
    for index, fault in enumerate(ordered):
        if fault["severity"] not in FAULT_SEVERITIES:
            continue
        outcome = "still open at the end of the month"
        for later in ordered[index + 1:]:
            if (later["module"], later["board"]) != (fault["module"], fault["board"]):
                continue
            took = _duration(later["t"] - fault["t"])
            if later["cause"] == "reset" and fault["cause"] in str(later.get("message", "")):
                outcome = f"reset by a technician after {took}"
                break
            if later["cause"] == fault["cause"] and later["severity"] == "info":
                if fault["severity"] != "critical":
                    outcome = f"cleared by itself after {took}"
                    break
                outcome = f"cause gone after {took}; latched until a technician resets it"
            elif later["cause"] in ENDED_BY_POWEROFF:
                outcome = f"board powered off after {took}"
                break
            elif later.get("boot") and fault.get("boot") and later["boot"] != fault["boot"]:
                outcome = f"board restarted after {took}"
                break
        faults.append({"time": _utc(fault["t"]).strftime("%Y-%m-%d %H:%M UTC"),
                       "t": fault["t"], "module": fault["module"], "board": fault["board"],
                       "cause": fault["cause"], "severity": fault["severity"],
                       "message": fault["message"], "outcome": outcome})
    return faults


def statement(site: str, month: str, rows: Iterable[dict[str, Any]],
              factors: Report) -> dict[str, Any]:
    """The month's figures from its ledger rows (the rows that start within the month)."""
    start_s, end_s = month_bounds_s(month)
    rows = [row for row in rows if start_s <= row["start_s"] < end_s]
    modules: dict[str, dict[str, float]] = {}
    days: dict[str, dict[str, float]] = {}
    recorded_s = 0.0
    events: list[dict[str, Any]] = []
    for row in rows:
        recorded_s += row["end_s"] - row["start_s"]
        day = days.setdefault(_utc(row["start_s"]).strftime("%Y-%m-%d"),
                              {"electricity_kwh": 0.0, "heat_kwh": 0.0, "recorded_s": 0.0,
                               "up_s": {}})
        day["recorded_s"] += row["end_s"] - row["start_s"]
        for name, key in (("electric_wh", "electricity_kwh"), ("heat_wh", "heat_kwh")):
            for module, wh in row.get(name, {}).items():
                entry = modules.setdefault(module, {"electricity_kwh": 0.0, "heat_kwh": 0.0,
                                                    "up_s": 0.0})
                entry[key] += wh / 1000.0
                day[key] += wh / 1000.0
        for module, up_s in row.get("up_s", {}).items():
            modules.setdefault(module, {"electricity_kwh": 0.0, "heat_kwh": 0.0,
                                        "up_s": 0.0})["up_s"] += up_s
            day["up_s"][module] = day["up_s"].get(module, 0.0) + up_s
        events.extend(row.get("events", []))
    electricity_kwh = sum(entry["electricity_kwh"] for entry in modules.values())
    heat_kwh = sum(entry["heat_kwh"] for entry in modules.values())
    gas = factors.displaced == "gas"
    efficiency = factors.gas_boiler_efficiency if gas else factors.electric_heater_efficiency
    displaced_kwh = heat_kwh / efficiency
    price = factors.gas_price_per_kwh if gas else factors.electricity_price_per_kwh
    faults = fault_outcomes(events)
    return {
        "site": site, "month": month, "days_in_month": round((end_s - start_s) / 86400.0),
        "hours_recorded": recorded_s / 3600.0,
        "electricity_kwh": electricity_kwh, "heat_kwh": heat_kwh,
        "recovery_pct": 100.0 * heat_kwh / electricity_kwh if electricity_kwh > 0 else None,
        "displaced": factors.displaced, "displaced_kwh": displaced_kwh,
        "displaced_efficiency": efficiency,
        "co2_avoided_kg": displaced_kwh * (factors.gas_co2_kg_per_kwh if gas
                                           else factors.grid_co2_kg_per_kwh),
        "co2_electricity_kg": electricity_kwh * factors.grid_co2_kg_per_kwh,
        "displaced_cost": displaced_kwh * price if price > 0 else None,
        "currency": factors.currency,
        "modules": [{"module": module, "electricity_kwh": entry["electricity_kwh"],
                     "heat_kwh": entry["heat_kwh"],
                     "uptime_pct": 100.0 * entry["up_s"] / recorded_s if recorded_s else None}
                    for module, entry in sorted(modules.items())],
        "faults": faults,
        "warnings": sum(1 for event in events if event["severity"] == "warning"),
        "days": [{"date": date, "electricity_kwh": day["electricity_kwh"],
                  "heat_kwh": day["heat_kwh"],
                  "uptime_pct": {module: 100.0 * day["up_s"].get(module, 0.0)
                                 / day["recorded_s"] for module in sorted(modules)}}
                 for date, day in sorted(days.items())],
        "factors": {key: getattr(factors, key) for key in REPORT_SCHEMA},
    }


def figures_csv(figures: dict[str, Any]) -> str:
    """The statement's figures, one a line: figure, value, unit."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["figure", "value", "unit"])
    for key, unit in (("electricity_kwh", "kWh"), ("heat_kwh", "kWh"), ("recovery_pct", "%"),
                      ("displaced_kwh", f"kWh of {figures['displaced']}"),
                      ("co2_avoided_kg", "kg CO2e"), ("co2_electricity_kg", "kg CO2e"),
                      ("displaced_cost", figures["currency"]), ("hours_recorded", "h")):
        value = figures[key]
        writer.writerow([key, "" if value is None else f"{value:.3f}", unit])
    for module in figures["modules"]:
        for key, unit in (("electricity_kwh", "kWh"), ("heat_kwh", "kWh"),
                          ("uptime_pct", "%")):
            value = module[key]
            writer.writerow([f"module {module['module']} {key}",
                             "" if value is None else f"{value:.3f}", unit])
    return out.getvalue()


def energy_csv(site: str, rows: Iterable[dict[str, Any]], month: str) -> str:
    """For billing: per day and module, electricity and heat in kWh and hours up."""
    start_s, end_s = month_bounds_s(month)
    table: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if not start_s <= row["start_s"] < end_s:
            continue
        day = _utc(row["start_s"]).strftime("%Y-%m-%d")
        for index, name in enumerate(("electric_wh", "heat_wh")):
            for module, wh in row.get(name, {}).items():
                table.setdefault((day, module), [0.0, 0.0, 0.0])[index] += wh / 1000.0
        for module, up_s in row.get("up_s", {}).items():
            table.setdefault((day, module), [0.0, 0.0, 0.0])[2] += up_s / 3600.0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["site", "date", "module", "electricity_kwh", "heat_kwh", "uptime_h"])
    for (day, module), (electric, heat, up_h) in sorted(table.items()):
        writer.writerow([site, day, module, f"{electric:.3f}", f"{heat:.3f}", f"{up_h:.3f}"])
    return out.getvalue()
