"""The one table checker: every problem of a file at once, each naming file, key, value and
expectation, and every TOML file Hearth reads goes through it."""

import pytest

from agent.errors import ConfigFileError, ConfigValueError
from agent.schema import Field
from agent.tables import TableCheck

SCHEMA = {
    "period_s": Field(float, "loop period", default=0.1, min=0.02, max=1.0),
    "name": Field(str, "a name", pattern=r"[a-z]+", example="oil"),
    "gpios": Field(list, "pins", default=[], items=Field(int, "a pin", min=0, max=27)),
}


def test_every_problem_of_a_table_is_collected_with_file_key_value_and_expectation():
    check = TableCheck()
    values = check.fields({"period_s": 5, "gpios": [3, 40], "perod_s": 1}, SCHEMA, "site.toml",
                          "control.", "[control]")
    assert values == {"period_s": None, "name": None, "gpios": None}
    assert [str(problem) for problem in check.problems] == [
        "site.toml: control.perod_s = 1: expected a key of [control]: period_s, name, gpios; "
        "did you mean 'period_s'?",
        "site.toml: control.period_s = 5: expected a number from 0.02 to 1",
        "site.toml: control.name is missing: expected a string like 'oil'; a name",
        "site.toml: control.gpios[2] = 40: expected an integer from 0 to 27",
    ]
    with pytest.raises(ConfigValueError) as raised:
        check.raise_problems("the test file")
    assert str(raised.value).startswith("4 problems in the test file:\n  site.toml: ")
    assert raised.value.problems == check.problems


def test_good_values_are_typed_and_defaults_filled():
    check = TableCheck()
    values = check.fields({"name": "oil", "gpios": [4, 17]}, SCHEMA, "f.toml", "", "the top")
    assert values == {"period_s": 0.1, "name": "oil", "gpios": (4, 17)}
    assert check.fields({"period_s": 1, "name": "a"}, SCHEMA, "f", "", "x")["period_s"] == 1.0
    check.raise_problems("the test file")  # nothing to raise


def test_an_unreadable_file_raises_a_file_error(tmp_path):
    check = TableCheck()
    (tmp_path / "bad.toml").write_text("x = [")
    assert check.read_toml(tmp_path / "bad.toml") is None
    assert check.read_toml(tmp_path / "absent.toml", "start from the example") is None
    with pytest.raises(ConfigFileError) as raised:
        check.raise_problems("the test files")
    first, second = map(str, raised.value.problems)
    assert first.startswith(f"{tmp_path / 'bad.toml'}: expected valid TOML; ")
    assert second.endswith("expected a readable TOML file; No such file or directory; "
                           "start from the example")


def test_arrays_of_tables_are_counted_from_one():
    check = TableCheck()
    found = check.tables([{"a": 1}, 7, {"b": 2}], "inv.toml", "board")
    assert found == [("board[1]", {"a": 1}), ("board[3]", {"b": 2})]
    assert [str(p) for p in check.problems] == ["inv.toml: board[2] = 7: expected a [[board]] "
                                                "table"]
