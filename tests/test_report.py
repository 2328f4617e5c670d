"""`hearth report` (agent/fleet/report*.py): a simulated month of a site goes through the ledger
into the statement; the page is rendered in headless Chromium, its figures are read off the
page and checked against the ledger (and the ledger against the counters that made it), and the
screenshot is kept and must not be blank."""

import csv
import datetime
import html.parser
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from agent.cli import main
from agent.fleet.ledger import SiteLedger, month_of
from agent.fleet.ledger_file import LedgerFile
from agent.fleet.report import fault_outcomes

REPO = Path(__file__).resolve().parent.parent
MONTH_START_S = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc).timestamp()
STEP_S = 60.0
FACTORS = {"gas_boiler_efficiency": 0.85, "gas_co2_kg_per_kwh": 0.2, "gas_price_per_kwh": 0.1,
           "grid_co2_kg_per_kwh": 0.3}
OUTAGE = (MONTH_START_S + 9 * 86400 + 6 * 3600, MONTH_START_S + 9 * 86400 + 12 * 3600)
"""m2's leader is offline for six hours on 10 December."""


def fault(t: float, module: str, board: str, cause: str, severity: str, seq: int,
          message: str = "", boot: str = "boot-1") -> tuple:
    return (t, module, board, {"v": 1, "boot": boot, "seq": seq, "ts": t, "cause": cause,
                               "severity": severity, "message": message or cause,
                               "mode": "SAFE"})


DAY = 86400.0
EVENTS = [
    fault(MONTH_START_S + 11 * DAY + 3600, "m2", "b03", "i2c:oil", "error", 1),
    fault(MONTH_START_S + 11 * DAY + 3600 + 1200, "m2", "b03", "i2c:oil", "info", 2),
    fault(MONTH_START_S + 19 * DAY, "m1", "b05", "oil:critical", "critical", 1),
    fault(MONTH_START_S + 19 * DAY + 600, "m1", "b05", "oil:critical", "info", 2),
    fault(MONTH_START_S + 19 * DAY + 7200, "m1", "b05", "reset", "info", 3,
          "latched fault(s) oil:critical reset by a technician"),
    fault(MONTH_START_S + 27 * DAY, "m1", "b02", "soc:warning", "warning", 1),
    fault(MONTH_START_S + 30 * DAY, "m2", "b07", "flow:lost", "error", 1),
]


def simulate_month(ledger_dir: Path) -> dict[str, dict[str, float]]:
    """Two modules' leaders over December 2026 (a state a minute), recorded into the ledger
    as the recorder does; returns the energy the leaders counted in the month (Wh)."""
    ledger = SiteLedger(leader_timeout_s=2 * STEP_S)
    ledger_file = LedgerFile(ledger_dir, "s1")
    counted = {m: {"electric": 0.0, "heat": 0.0} for m in ("m1", "m2")}
    counters = {"m1": [5.0e6, 4.6e6, "l1"], "m2": [1.2e6, 1.1e6, "l2"]}
    events = sorted(EVENTS)
    row_start_s, t = MONTH_START_S, MONTH_START_S
    end_s = MONTH_START_S + 31 * DAY
    for module, (electric, heat, boot) in counters.items():  # the baselines, at 00:00
        ledger.leader_state(module, {"boot": boot, "energy_electric_wh": electric,
                                     "energy_heat_wh": heat}, t)
    while t < end_s:
        t += STEP_S
        day = (t - MONTH_START_S) / DAY
        for module, counter in counters.items():
            if module == "m2" and OUTAGE[0] <= t < OUTAGE[1]:
                if t == OUTAGE[0]:
                    ledger.leader_status("m2", "offline", t)
                continue
            if module == "m2" and t == OUTAGE[1]:
                ledger.leader_status("m2", "online", t)
            power_w = (1500.0 if module == "m1" else 900.0) * (1.0 + 0.4 * math.sin(day))
            electric_wh = power_w * STEP_S / 3600.0
            heat_wh = electric_wh * (0.92 if module == "m1" else 0.88)
            if module == "m1" and t == MONTH_START_S + 15 * DAY:
                counter[0], counter[1], counter[2] = 100.0, 90.0, "l1-lost"  # ledger lost
            else:
                counted[module]["electric"] += electric_wh
                counted[module]["heat"] += heat_wh
            counter[0] += electric_wh
            counter[1] += heat_wh
            ledger.leader_state(module, {"boot": counter[2], "energy_electric_wh": counter[0],
                                         "energy_heat_wh": counter[1]}, t)
        while events and events[0][0] <= t:
            _, module, board, payload = events.pop(0)
            ledger.event(module, board, payload, t)
        if t - row_start_s >= 900.0:
            ledger_file.append(month_of(row_start_s), ledger.close_row(row_start_s, t))
            row_start_s = t
    return counted


class Figures(html.parser.HTMLParser):
    """The text of every element with a data-figure attribute, read off the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        name = dict(attrs).get("data-figure")
        self._open.append((tag, name))
        if name is not None:
            self.figures.setdefault(name, []).append("")

    def handle_endtag(self, tag):
        while self._open:
            opened, name = self._open.pop()
            if opened == tag:
                break

    def handle_data(self, data):
        for _, name in self._open:
            if name is not None:
                self.figures[name][-1] += data

    def number(self, name: str) -> float:
        return float(self.figures[name][0].strip().replace(",", ""))


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    """The simulated month's ledger, the statement written by `hearth report` and its files."""
    directory = tmp_path_factory.mktemp("report")
    counted = simulate_month(directory / "ledger")
    config = directory / "hearth.toml"
    config.write_text((REPO / "docs/examples/hearth.toml").read_text() + "\n[report]\n"
                      + "".join(f"{key} = {value}\n" for key, value in FACTORS.items()))
    status = main(["report", "--site", "s1", "--month", "2026-12", "--config", str(config),
                   "--ledger-dir", str(directory / "ledger"), "--out", str(directory / "out")])
    assert status == 0
    return directory, counted


def ledger_sums(ledger_dir: Path) -> dict[str, float]:
    rows = LedgerFile(ledger_dir, "s1").read_month("2026-12")
    return {"electricity_kwh": sum(sum(r["electric_wh"].values()) for r in rows) / 1000.0,
            "heat_kwh": sum(sum(r["heat_wh"].values()) for r in rows) / 1000.0,
            "m2_up_s": sum(r["up_s"].get("m2", 0.0) for r in rows),
            "recorded_s": sum(r["end_s"] - r["start_s"] for r in rows)}


def test_the_ledger_equals_what_the_leaders_counted(month):
    directory, counted = month
    sums = ledger_sums(directory / "ledger")
    for kind, key in (("electric", "electricity_kwh"), ("heat", "heat_kwh")):
        truth_kwh = sum(module[kind] for module in counted.values()) / 1000.0
        assert sums[key] == pytest.approx(truth_kwh, rel=1e-3)


def test_statement_in_headless_chromium_shows_the_ledgers_figures(month):
    directory, _ = month
    page = directory / "out/s1-2026-12.html"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--hide-scrollbars", "--window-size=1920,1080"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    shot = directory / "statement.png"
    subprocess.run([*browser, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    kept = REPO / "reports" / "report-statement.png"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)

    figures = Figures()
    figures.feed(dom)
    sums = ledger_sums(directory / "ledger")
    assert figures.number("electricity_kwh") == pytest.approx(sums["electricity_kwh"], abs=0.05)
    assert figures.number("heat_kwh") == pytest.approx(sums["heat_kwh"], abs=0.05)
    assert figures.number("recovery_pct") == pytest.approx(
        100 * sums["heat_kwh"] / sums["electricity_kwh"], abs=0.05)
    displaced_kwh = sums["heat_kwh"] / FACTORS["gas_boiler_efficiency"]
    assert figures.number("displaced_kwh") == pytest.approx(displaced_kwh, abs=0.05)
    assert figures.number("co2_avoided_kg") == pytest.approx(
        displaced_kwh * FACTORS["gas_co2_kg_per_kwh"], abs=0.05)
    assert figures.number("displaced_cost") == pytest.approx(
        displaced_kwh * FACTORS["gas_price_per_kwh"], abs=0.005)
    assert figures.number("co2_electricity_kg") == pytest.approx(
        sums["electricity_kwh"] * FACTORS["grid_co2_kg_per_kwh"], abs=0.05)
    assert figures.number("hours_recorded") == pytest.approx(31 * 24, abs=0.5)
    m2_uptime = figures.number("module:m2:uptime_pct")
    assert m2_uptime == pytest.approx(100 * sums["m2_up_s"] / sums["recorded_s"], abs=0.05)
    assert m2_uptime == pytest.approx(100 * (1 - 6 / (31 * 24)), abs=0.05)  # the 6 h outage
    assert figures.number("module:m1:uptime_pct") == pytest.approx(100.0, abs=0.05)
    assert figures.number("fault_count") == 3
    faults = [text.split("UTC")[1].strip() for text in figures.figures["fault"]]
    assert [" ".join(f.split()) for f in faults] == [
        "m2 / b03i2c:oilcleared by itself after 20 min",
        "m1 / b05oil:criticalreset by a technician after 2 h 00 min",
        "m2 / b07flow:loststill open at the end of the month"]
    assert dom.count("<svg") == 2 and "<script" not in dom

    image = Image.open(shot).convert("L")
    assert image.size == (1920, 1080)
    assert ImageStat.Stat(image).var[0] > 100.0, f"blank screenshot {kept}"
    assert len(image.resize((192, 108)).getcolors(256)) > 20


def test_statement_json_and_csv_carry_the_same_figures(month):
    directory, _ = month
    figures = json.loads((directory / "out/s1-2026-12.json").read_text())
    table = {row["figure"]: row for row in csv.DictReader(
        io.StringIO((directory / "out/s1-2026-12.csv").read_text()))}
    for key in ("electricity_kwh", "heat_kwh", "co2_avoided_kg", "recovery_pct"):
        assert float(table[key]["value"]) == pytest.approx(figures[key], abs=5e-4)
    assert table["heat_kwh"]["unit"] == "kWh"
    assert figures["heat_kwh"] == pytest.approx(ledger_sums(directory / "ledger")["heat_kwh"])


def test_billing_csv_sums_to_the_ledger(month, capsys):
    directory, _ = month
    assert main(["report", "--site", "s1", "--month", "2026-12", "--csv",
                 "--ledger-dir", str(directory / "ledger"), "--config",
                 str(directory / "hearth.toml")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 31 * 2 and {row["module"] for row in rows} == {"m1", "m2"}
    sums = ledger_sums(directory / "ledger")
    assert sum(float(r["electricity_kwh"]) for r in rows) == pytest.approx(
        sums["electricity_kwh"], abs=0.001 * len(rows))
    assert sum(float(r["heat_kwh"]) for r in rows) == pytest.approx(sums["heat_kwh"],
                                                                     abs=0.001 * len(rows))


def test_a_damaged_ledger_gives_no_statement(tmp_path, capsys):
    ledger_file = LedgerFile(tmp_path / "ledger", "s1")
    for start in (MONTH_START_S, MONTH_START_S + 900):
        ledger_file.append("2026-12", SiteLedger().close_row(start, start + 900))
    path = ledger_file.path("2026-12")
    path.write_bytes(path.read_bytes().replace(b'"end_s":', b'"end_s":1', 1))
    status = main(["report", "--site", "s1", "--month", "2026-12", "--ledger-dir",
                   str(tmp_path / "ledger"), "--out", str(tmp_path / "out"),
                   "--config", str(REPO / "docs/examples/hearth.toml")])
    assert status == 2
    assert "s1-2026-12.jsonl line 1: checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_month_not_written_as_a_month_is_refused(tmp_path, capsys):
    assert main(["report", "--site", "s1", "--month", "12-2026", "--ledger-dir",
                 str(tmp_path), "--config", str(REPO / "docs/examples/hearth.toml")]) == 2
    assert "write it YYYY-MM" in capsys.readouterr().err


def test_a_fault_the_board_restarted_out_of():
    events = [{"t": 0.0, "module": "m1", "board": "b1", "cause": "hang", "severity": "error",
               "message": "", "boot": "x"},
              {"t": 90.0, "module": "m1", "board": "b1", "cause": "mode", "severity": "info",
               "message": "", "boot": "y"}]
    assert fault_outcomes(events)[0]["outcome"] == "board restarted after 2 min"
