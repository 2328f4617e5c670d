"""The wheel a board gets holds every module of the package, its data files and the extension
(an editable install would hide a forgotten package)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_module_and_data_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    [wheel] = tmp_path.glob("hearth-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").rglob("*.py")}
    assert sources - names == set()
    boards = {f"agent/boards/{p.name}" for p in (ROOT / "hardware/boards").glob("*.toml")}
    assert boards and boards <= names
    assert any(n.startswith("agent/sim/scenarios/") and n.endswith(".toml") for n in names)
    assert any(n.startswith("agent/control/_cpid") and n.endswith(".so") for n in names)
