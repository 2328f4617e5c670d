"""`hearth config check --json`: a tool gets one JSON object saying ok, or listing each problem
with its file, key, value and what was expected (the same findings as the human output)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "hearth.toml"
HEARTH = str(Path(sys.executable).with_name("hearth"))


def config_check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([HEARTH, "config", "check", *argv], capture_output=True, text=True,
                          timeout=60)


def test_a_good_config_is_ok_in_json():
    done = config_check(str(EXAMPLE), "--json")
    assert (done.returncode, done.stderr) == (0, "")
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["file"] == str(EXAMPLE)
    assert report["board_type"] == "oil-carrier" and report["sensors"] > 0
    assert report["identity"] == {"site": "school-7", "module": "m1", "board": "b07"}


def test_each_problem_is_listed_with_file_key_value_and_expectation(tmp_path):
    path = tmp_path / "hearth.toml"
    path.write_text('board_type = "oil-carrier"\n[limits]\npower_max_w = "a lot"\n'
                    'soc_limit_c = 99\nsoc_limt_c = 70\n')
    done = config_check("--json", "--config", str(path))
    assert done.returncode == 1 and done.stderr == ""
    report = json.loads(done.stdout)
    assert report["ok"] is False
    problems = {problem["key"]: problem for problem in report["problems"]}
    assert problems["limits.power_max_w"] == {
        "file": str(path), "key": "limits.power_max_w", "value": '"a lot"', "missing": False,
        "expected": "a number from 0.5 to 15", "hint": ""}
    assert problems["limits.soc_limit_c"]["value"] == "99"
    assert "soc_limit_c" in problems["limits.soc_limt_c"]["hint"] + \
        problems["limits.soc_limt_c"]["expected"]
    assert all(set(problem) == {"file", "key", "value", "missing", "expected", "hint"}
               for problem in report["problems"])


def test_a_missing_file_is_a_problem_in_json(tmp_path):
    done = config_check(str(tmp_path / "nowhere.toml"), "--json")
    assert done.returncode == 1
    [problem] = json.loads(done.stdout)["problems"]
    assert problem["file"] == str(tmp_path / "nowhere.toml") and problem["key"] == ""
    assert "readable TOML file" in problem["expected"]
