"""The wheel a board gets holds every module of the package, its data files and the extension
(an editable install would hide a forgotten package), and asks for the requirements the image
builder installs."""

import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from agent.deploy import image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(out), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    [built] = out.glob("hearth-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_contains_every_module_and_data_file(wheel):
    names = set(wheel.namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").rglob("*.py")}
    assert sources - names == set()
    assert any(n.startswith("agent/deploy/") for n in sources)
    assert "agent/deploy/runtime.toml" in names
    boards = {f"agent/boards/{p.name}" for p in (ROOT / "hardware/boards").glob("*.toml")}
    assert boards and boards <= names
    assert any(n.startswith("agent/sim/scenarios/") and n.endswith(".toml") for n in names)
    assert any(n.startswith("agent/control/_cpid") and n.endswith(".so") for n in names)


def test_wheel_requires_what_the_image_builder_installs(wheel):
    """setup.py and the image builder read one list (agent/deploy/runtime.toml)."""
    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    headers = HeaderParser().parsestr(wheel.read(metadata).decode())
    runtime = [r for r in headers.get_all("Requires-Dist") if "extra ==" not in r]
    with image.RUNTIME_FILE.open("rb") as handle:
        assert runtime == tomllib.load(handle)["requires"] == image.install_requires()
    assert runtime


def test_image_builder_compiles_the_extensions_setup_py_builds(wheel):
    names = wheel.namelist()
    for spec in image.extensions():
        package, stem = spec.name.rsplit(".", 1)
        assert any(n.startswith(f"{package.replace('.', '/')}/{stem}.") and n.endswith(".so")
                   for n in names), spec.name
        assert ("Py_LIMITED_API", "0x030B0000") in spec.macros
        assert "-ffp-contract=off" in spec.compile_args
