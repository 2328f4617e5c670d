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


def problem_lines(error) -> list[str]:
    return [str(problem) for problem in error.problems]


def test_the_site_config_reports_several_problems_at_once(tmp_path):
    from agent.config import load_config

    site = tmp_path / "hearth.toml"
    site.write_text('board_type = "oil-carrier"\n[limits]\nsoc_critical_c = 85\n'
                    '[control]\nperiod_s = "fast"\nreport_perod_s = 2\n')
    with pytest.raises(ConfigValueError) as raised:
        load_config(site)
    lines = problem_lines(raised.value)
    assert f"{site}: limits.soc_critical_c = 85: expected a number from 40 to 79" in lines
    assert f'{site}: control.period_s = "fast": expected a number from 0.02 to 1' in lines
    assert any(line.startswith(f"{site}: control.report_perod_s = 2: expected a key of "
                               "[control]: ") and "did you mean 'report_period_s'?" in line
               for line in lines)


def test_a_board_scenario_reports_several_problems_at_once():
    from agent.sim.scenario import parse_scenario

    text = ('description = "x"\nduration_s = 0\n[start]\nsetpoint_w = 50\n'
            '[[at]]\ntime_s = 5\nfualt = "pump_off"\n')
    with pytest.raises(ConfigValueError) as raised:
        parse_scenario(text, "b.toml", "b")
    lines = problem_lines(raised.value)
    assert lines[0] == "b.toml: duration_s = 0: expected a number from 1 to 604800"
    assert lines[1] == "b.toml: start.setpoint_w = 50: expected a number from 0 to 20"
    assert lines[2].startswith('b.toml: at[1].fualt = "pump_off": expected a key of [[at]]: ')
    assert lines[2].endswith("did you mean 'fault'?") and len(lines) == 3


def test_a_site_scenario_reports_several_problems_at_once():
    from agent.sim.site_scenario import parse_site_scenario

    text = ('description = "x"\nduration_s = 3600\n[building]\ntarget_c = 90\n'
            '[[at]]\ntime_s = 5\naction = "pump_of"\n')
    with pytest.raises(ConfigValueError) as raised:
        parse_site_scenario(text, "s.toml", "s")
    assert problem_lines(raised.value) == [
        "s.toml: building.target_c = 90: expected a number from 20 to 60",
        's.toml: at[1].action = "pump_of": expected one of ' + ", ".join(
            repr(action) for action in ("pump_off", "pump_on", "leader_crash", "leader_restart",
                                        "broker_down", "broker_up", "board_fault",
                                        "board_clear")),
    ]


def test_the_inventory_reports_several_problems_at_once(tmp_path):
    from agent.deploy.broker_config import InventoryError, load_inventory

    inventory = tmp_path / "site.toml"
    inventory.write_text('site = "maple-school"\nbroker = "h"\nport = 70000\n[[module]]\n'
                         'name = "m1"\n'
                         '[[board]]\nmodule = "m1"\nname = "leader"\n'
                         '[[board]]\nmodule = "m2"\nname = "b02"\nslot = 99\n'
                         '[[leader]]\nmodule = "m1"\nboard = "b01"\n')
    with pytest.raises(InventoryError) as raised:
        load_inventory(inventory)
    lines = problem_lines(raised.value)
    assert lines[:4] == [
        f"{inventory}: port = 70000: expected an integer from 1 to 65535",
        f"{inventory}: board[1].name = \"leader\": expected a name other than 'leader'; "
        "<module>/leader/ holds the leader's topics; choose another board name",
        f"{inventory}: board[2].slot = 99: expected an integer from 1 to 63",
        f"{inventory}: board[2].module = \"m2\": expected one of the [[module]] names: 'm1'",
    ]
    assert lines[4].startswith(f'{inventory}: leader[1].board = "b01": expected a [[board]] '
                               "of module m1") and len(lines) == 5


def test_an_identity_table_reports_several_problems_at_once(tmp_path):
    from agent.identity import load_table

    table = tmp_path / "identity-table.toml"
    table.write_text('site = "Maple"\n[[board]]\nmodule = "m1"\nboard = "b1"\nslot = 0\n'
                     '[[board]]\nmodule = "m1"\nbord = "b2"\nserial = "xyz"\n')
    with pytest.raises(ConfigValueError) as raised:
        load_table(table)
    lines = problem_lines(raised.value)
    assert lines[0].startswith(f"{table}: site = \"Maple\": expected a string like "
                               "'maple-school'; ")
    assert lines[1] == f"{table}: board[1].slot = 0: expected an integer from 1 to 63"
    assert lines[2] == (f"{table}: board[2].bord = \"b2\": expected a key of a [[board]]: "
                        "module, board, serial, slot; did you mean 'board'?")
    assert lines[3].startswith(f"{table}: board[2].board is missing: expected a string like "
                               "'b07'")
    assert lines[4] == (f"{table}: board[2].serial = \"xyz\": expected a hexadecimal serial "
                        "number like '10000000a1b2c3d4'") and len(lines) == 5
