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


SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
"""What a fresh machine's PATH holds: the README's commands put tools there (Debian packages)
and Hearth into .venv, never onto PATH."""


def test_ci_runs_the_readme_test_command_with_the_system_path_only(tmp_path):
    """A command installed by hand (in ~/.local/bin, /usr/local/bin, a .venv on PATH) cannot
    make CI green: .ci/run hands scripts/test a PATH of the system's directories."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci/run").write_text((ROOT / ".ci/run").read_text())
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/test").write_text('#!/bin/sh\necho "$PATH"\necho "$@"\n')
    (tmp_path / "scripts/test").chmod(0o755)
    hand_installed = tmp_path / "bin"
    hand_installed.mkdir()
    done = subprocess.run(["/bin/bash", str(tmp_path / ".ci/run")], capture_output=True,
                          text=True, timeout=30,
                          env={"PATH": f"{hand_installed}:{SYSTEM_PATH}", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [SYSTEM_PATH, "-q"]


def programs_the_tests_run() -> set[str]:
    """Program names the tests give as a literal: the first item of an argument list handed
    to subprocess, and every shutil.which("...")."""
    import ast

    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            called = ast.unparse(node.func)
            if called.startswith("subprocess.") and isinstance(first, ast.List) and first.elts:
                first = first.elts[0]
            elif called != "shutil.which":
                continue
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_tests_run_nothing_from_path_but_what_the_system_directories_hold():
    """`hearth` is the .venv's (sys.executable -m agent, or the script beside it); every other
    program a test runs by name is one a Debian package puts in the system's directories."""
    import shutil

    names = programs_the_tests_run()
    assert {"mosquitto", "openssl"} <= names, "the search sees the tests' programs"
    assert "hearth" not in names
    assert {name for name in names
            if shutil.which(name, path=SYSTEM_PATH) is None and shutil.which(name)} == set()
