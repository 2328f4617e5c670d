"""Config loading and `hearth config`: broken configs must fail loudly with every problem named."""

import dataclasses
import json
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from agent import config as hearth_config
from agent import config_schema
from agent.cli import main
from agent.drivers.registry import SENSOR_CLASSES
from agent.errors import ConfigFileError, ConfigValueError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "hearth.toml"
BOARD_FILE = str(REPO / "hardware" / "boards" / "oil-carrier.toml")

# The board definition leaves both DS18B20 ids to the site config; most cases set them.
IDS = """
[[sensor]]
name = "water_in"
id = "28-0316a2795eff"

[[sensor]]
name = "water_out"
id = "28-0316a27f1c2a"
"""


def write(directory: Path, text: str, name: str = "hearth.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["config", "check", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def address_expectation(kind: str) -> str:
    return SENSOR_CLASSES[kind].SCHEMA["address"].expected()


# (case, site config, what the output must contain besides the file's path). Each names the
# key path, the value as written and what was expected.
BROKEN = [
    ("unknown key", 'board_type = "oil-carrier"\n[control]\nperod_s = 0.2\n' + IDS,
     ["control.perod_s = 0.2", "expected a key of [control]", "did you mean 'period_s'?"]),
    ("unknown top-level key", 'board_type = "oil-carrier"\nboard_typ = "x"\n' + IDS,
     ['board_typ = "x"', "did you mean 'board_type'?"]),
    ("string for a number", 'board_type = "oil-carrier"\n[limits]\nhysteresis_c = "2"\n' + IDS,
     ['limits.hysteresis_c = "2"', "expected a number from 0.5 to 10"]),
    ("bool for an integer", 'board_type = "oil-carrier"\n[actuators]\ncpu_period_us = true\n'
     + IDS, ["actuators.cpu_period_us = true", "expected an integer from 1000 to 1000000"]),
    ("float for an integer", 'board_type = "oil-carrier"\n[pins]\nflow_gpio = 17.0\n' + IDS,
     ["pins.flow_gpio = 17.0", "expected an integer from 0 to 27"]),
    ("out of range", 'board_type = "oil-carrier"\n[limits]\nsoc_critical_c = 85\n' + IDS,
     ["limits.soc_critical_c = 85", "expected a number from 40 to 79"]),
    ("bad list item", 'board_type = "oil-carrier"\n[pins]\nslot_id_gpios = [5, 40]\n' + IDS,
     ["pins.slot_id_gpios[2] = 40", "expected an integer from 0 to 27"]),
    ("duplicate sensor name", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "soc"\n[[sensor]]\nname = "tank"\nkind = "soc"\n',
     ['sensor[4].name = "tank"', "a name no other [[sensor]] in this file has (sensor[3] has it)"]),
    ("missing ds18b20 id", 'board_type = "oil-carrier"\n',
     [BOARD_FILE, "sensor[4] 'water_in'.id is missing", "sensor[5] 'water_out'.id is missing",
      "set it in the site config", "`w1 list`"]),
    ("bad I2C address", 'board_type = "oil-carrier"\n' + IDS + '[[sensor]]\nname = "oil"\n'
     'address = 0x90\n', ["sensor[3] 'oil'.address = 0x90", address_expectation("tmp117")]),
    ("unknown board type", 'board_type = "oil-carier"\n' + IDS,
     ['board_type = "oil-carier"', "expected one of the known board types: 'oil-carrier'",
      "did you mean 'oil-carrier'?"]),
    ("missing board type", IDS, ["board_type is missing", "expected a string like 'oil-carrier'"]),
    ("unknown sensor kind", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "ds18b2O"\n',
     ['sensor[3] \'tank\'.kind = "ds18b2O"', "expected one of the sensor kinds:",
      "did you mean 'ds18b20'?"]),
    ("new sensor without kind", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nzone = 1\n',
     ["sensor[3] 'tank'.kind is missing", "expected one of the sensor kinds:"]),
    ("unknown sensor key", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "board_power"\nshunt_ohm = 0.05\n',
     ["sensor[3] 'board_power'.shunt_ohm = 0.05", "expected a key of a ina219 sensor",
      "did you mean 'shunt_ohms'?"]),
    ("bad sensor name", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "Tank 2"\nkind = "soc"\n',
     ['sensor[3].name = "Tank 2"', "expected a string like 'water_in'",
      "lowercase letters, digits and '_'"]),
    ("sensor as a table, not an array", 'board_type = "oil-carrier"\n[sensor]\nname = "x"\n',
     ['sensor = { name = "x" }', "expected [[sensor]] tables"]),
    ("invalid TOML", 'board_type = "oil-carrier"\n[limits\nsoc_limit_c = 70\n',
     ["expected valid TOML", "(at line 2, column 8)"]),
    ("limits out of order", 'board_type = "oil-carrier"\n[limits]\nsoc_warning_c = 74\n'
     "soc_limit_c = 72\n" + IDS,
     ["limits.soc_limit_c = 72: expected a number above limits.soc_warning_c (74)"]),
    ("limit crosses a default", 'board_type = "oil-carrier"\n[limits]\noil_warning_c = 66\n'
     + IDS, ["limits.oil_warning_c = 66",
             "expected a number below limits.oil_limit_c (65, the default)"]),
    ("power range inverted", 'board_type = "oil-carrier"\n[limits]\npower_min_w = 5\n'
     "power_max_w = 4\n" + IDS,
     ["limits.power_max_w = 4: expected a number above limits.power_min_w (5)"]),
    ("fallback outside the power range", 'board_type = "oil-carrier"\n[control]\n'
     "fallback_setpoint_w = 9\n" + IDS,
     ["control.fallback_setpoint_w = 9",
      "expected a number at most limits.power_max_w (6.5, the default)"]),
    ("kind changed in override", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "oil"\nkind = "ds18b20"\nid = "28-0316a2795eff"\n',
     ['sensor[3] \'oil\'.kind = "ds18b20"', f'expected "tmp117", the kind {BOARD_FILE} declares',
      "not its kind"]),
    ("duplicate bus and address", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "tmp117"\nbus = 1\naddress = 0x48\n',
     ["sensor[3] 'tank'.address = 0x48", "an address no other sensor uses on bus 1",
      "('oil' is at 0x48)"]),
    ("identity not a topic level", 'board_type = "oil-carrier"\n[identity]\nsite = "School 7"\n'
     'module = "m1"\nboard = "b/7"\n' + IDS,
     ['identity.site = "School 7"', 'identity.board = "b/7"', "MQTT topic level"]),
    ("identity incomplete", 'board_type = "oil-carrier"\n[identity]\nsite = "s1"\n' + IDS,
     ["identity.module is missing", "identity.board is missing"]),
    ("identity empty", 'board_type = "oil-carrier"\n[identity]\n' + IDS,
     ["identity.site is missing", "identity.module is missing", "identity.board is missing"]),
    ("same GPIO twice", 'board_type = "oil-carrier"\n[pins]\nstatus_led_gpio = 17\n' + IDS,
     ["pins.status_led_gpio = 17", "a GPIO no other pin uses (pins.flow_gpio is GPIO 17)"]),
    ("same GPIO as a later board pin", 'board_type = "oil-carrier"\n[pins]\none_wire_gpio = 17\n'
     + IDS, ["hearth.toml: pins.one_wire_gpio = 17",
             "a GPIO no other pin uses (pins.flow_gpio is GPIO 17)"]),
    ("strap on a used GPIO", 'board_type = "oil-carrier"\n[pins]\nslot_id_gpios = [5, 4]\n'
     + IDS, ["pins.slot_id_gpios = [5, 4]",
             "a GPIO no other pin uses (pins.one_wire_gpio is GPIO 4)"]),
    ("one cgroup for both loads", 'board_type = "oil-carrier"\n[actuators]\n'
     'heatfill_cgroup = "hearth.slice/hearth-workload.slice"\n' + IDS,
     ['actuators.heatfill_cgroup = "hearth.slice/hearth-workload.slice"',
      "a different cgroup from actuators.workload_cgroup"]),
    ("cgroup escaping the hierarchy", 'board_type = "oil-carrier"\n[actuators]\n'
     'workload_cgroup = "../etc"\n' + IDS,
     ['actuators.workload_cgroup = "../etc"', "without '..'"]),
    ("section not a table", 'board_type = "oil-carrier"\nlimits = 70\n' + IDS,
     ["limits = 70", "expected a table [limits]"]),
    ("role given twice", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "tmp117"\nbus = 1\naddress = 0x4a\nrole = "oil"\n',
     ['sensor[3] \'tank\'.role = "oil"',
      f"expected a role no other sensor has ('oil' in {BOARD_FILE} has it)"]),
    ("role the kind cannot give", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "ds18b20"\nid = "28-0316a2795e00"\nrole = "power"\n',
     ['sensor[3] \'tank\'.role = "power"', "expected a role a ds18b20 sensor can give: ",
      "'water_in'", "'power' needs a sensor that measures power: ina219, ina226"]),
    ("role on a kind that gives none", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "water_pressure"\nrole = "flow"\n',
     ['sensor[3] \'water_pressure\'.role = "flow"', "expected no role: a ads1115 sensor gives "
      "none", "'flow' needs a sensor that measures flow: flow"]),
    ("unknown role", 'board_type = "oil-carrier"\n' + IDS +
     '[[sensor]]\nname = "tank"\nkind = "tmp117"\nbus = 1\naddress = 0x4a\nrole = "tank"\n',
     ['sensor[3] \'tank\'.role = "tank"', "expected one of 'power', 'soc', 'oil'"]),
    ("leader names no sensor", 'board_type = "oil-carrier"\n[leader]\nflow_reading = "wate_flow"\n'
     + IDS, ['leader.flow_reading = "wate_flow"', "expected the name of a [[sensor]] in this "
             "config", "did you mean 'water_flow'?"]),
    ("leader names a sensor of the wrong kind", 'board_type = "oil-carrier"\n[leader]\n'
     'flow_reading = "oil"\n' + IDS, ['leader.flow_reading = "oil"', "expected a sensor that "
                                       "measures flow for module_flow ('oil' is a tmp117)"]),
    ("leader names a reading the sensor does not give", 'board_type = "oil-carrier"\n[leader]\n'
     'flow_reading = "water_flow.flow_l_per_min"\n' + IDS,
     ['leader.flow_reading = "water_flow.flow_l_per_min"',
      "expected 'water_flow', the reading 'water_flow' gives for module_flow"]),
    ("mqtt host written the old way", 'board_type = "oil-carrier"\n[mqtt]\nhost = "b.local"\n'
     + IDS, ['mqtt.host = "b.local"', "mqtt.brokers is missing",
             'brokers = ["hearth-broker.local"] replaces host']),
    ("mqtt broker port out of range", 'board_type = "oil-carrier"\n[mqtt]\n'
     'brokers = ["a.local", "b.local:70000"]\n' + IDS,
     ['mqtt.brokers[2] = "b.local:70000"', "expected a port from 1 to 65535"]),
    ("mqtt broker that is no host", 'board_type = "oil-carrier"\n[mqtt]\n'
     'brokers = ["a.local:x"]\n' + IDS, ['mqtt.brokers[1] = "a.local:x"']),
    ("mqtt without a broker", 'board_type = "oil-carrier"\n[mqtt]\nbrokers = []\n' + IDS,
     ["mqtt.brokers = []", "expected at least one broker"]),
    ("leader key and a sensor's role disagree", 'board_type = "oil-carrier"\n[leader]\n'
     'oil_reading = "oil"\n' + IDS + '[[sensor]]\nname = "module_oil"\nkind = "tmp117"\n'
     'bus = 1\naddress = 0x4a\nrole = "module_oil"\n',
     ['leader.oil_reading = "oil"', "expected 'module_oil' or empty: the sensor 'module_oil' "
      "in", "has role = 'module_oil'"]),
]


@pytest.mark.parametrize("site, expected", [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_config_fails_naming_file_key_value_and_expectation(tmp_path, capsys, site,
                                                                  expected):
    path = write(tmp_path, site)
    status, out, err = check(capsys, path)
    assert status == 1
    assert out == ""
    assert str(path) in err or BOARD_FILE in err
    for fragment in expected:
        assert fragment in err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = write(tmp_path, 'board_type = "oil-carrier"\n'
                 "[limits]\nsoc_limit_c = 90\nhysterisis_c = 1\n"
                 "[control]\nperiod_s = 0\n"
                 '[[sensor]]\nname = "oil"\naddress = 0x20\n'
                 '[[sensor]]\nname = "water_in"\nid = 28\n')
    status, _, err = check(capsys, path)
    assert status == 1
    for fragment in ("limits.soc_limit_c = 90", "limits.hysterisis_c = 1",
                     "control.period_s = 0", "sensor[1] 'oil'.address = 0x20",
                     "sensor[2] 'water_in'.id = 28", "'water_out'.id is missing"):
        assert fragment in err
    assert err.startswith("6 problems in the configuration:")
    assert len(err.strip().splitlines()) == 7


def test_problems_are_structured_on_the_error(tmp_path):
    path = write(tmp_path, 'board_type = "oil-carrier"\n[control]\nperiod_s = 3\n' + IDS)
    with pytest.raises(ConfigValueError) as raised:
        hearth_config.load_config(path)
    (problem,) = raised.value.problems
    assert (problem.file, problem.key, problem.value) == (str(path), "control.period_s", 3)
    assert problem.expected == config_schema.CONTROL_SCHEMA["period_s"].expected()
    assert isinstance(raised.value, ValueError)


def test_missing_file_is_a_file_error(tmp_path, capsys):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigFileError) as raised:
        hearth_config.load_config(path)
    assert isinstance(raised.value, OSError)
    status, _, err = check(capsys, path)
    assert status == 1
    assert f"{path}: expected a readable TOML file; No such file or directory" in err


def test_error_in_board_definition_names_that_file(tmp_path, capsys):
    board = write(tmp_path, 'description = "test carrier"\ncolour = "green"\n'
                  "[pins]\none_wire_gpio = 4\nflow_gpio = 17\nstatus_led_gpio = 27\n"
                  "slot_id_gpios = []\n"
                  '[[sensor]]\nname = "oil"\nkind = "tmp117"\nbus = 1\naddress = 0x47\n',
                  "boards/test-carrier.toml")
    site = write(tmp_path, 'board_type = "test-carrier"\n')
    status, _, err = check(capsys, site)
    assert status == 1
    assert f'{board}: colour = "green": expected a key of a board definition' in err
    assert f"{board}: sensor[1] 'oil'.address = 0x47" in err


def test_board_definition_that_is_not_toml_names_that_file(tmp_path, capsys):
    board = write(tmp_path, "description = \n", "boards/broken.toml")
    site = write(tmp_path, 'board_type = "broken"\n[limits]\npower_max_w = 99\n')
    with pytest.raises(ConfigFileError):
        hearth_config.load_config(site)
    status, _, err = check(capsys, site)
    assert status == 1
    assert f"{board}: expected valid TOML; Invalid value (at line 1, column 15)" in err
    assert f"{site}: limits.power_max_w = 99" in err
    assert "pins." not in err, "pins the unreadable board would declare are not reported"


def test_local_board_definition_replaces_the_shipped_one(tmp_path):
    write(tmp_path, 'description = "re-wired carrier"\n'
          "[pins]\none_wire_gpio = 22\nflow_gpio = 23\nstatus_led_gpio = 24\n"
          "slot_id_gpios = [5]\n", "boards/oil-carrier.toml")
    config = hearth_config.load_config(write(tmp_path, 'board_type = "oil-carrier"\n'))
    assert config.board_path == str(tmp_path / "boards" / "oil-carrier.toml")
    assert config.pins.one_wire_gpio == 22
    assert config.sensors == ()


def test_example_config_passes(capsys):
    status, out, err = check(capsys, EXAMPLE)
    assert (status, err) == (0, "")
    board = tomllib.loads(Path(BOARD_FILE).read_text(encoding="utf-8"))
    assert out == (f"{EXAMPLE}: OK: board type oil-carrier, {len(board['sensor'])} sensors, "
                   "identity school-7/m1/b07\n")


def test_config_option_is_accepted_like_the_file_argument(capsys):
    assert main(["config", "check", "--config", str(EXAMPLE)]) == 0
    assert "OK: board type oil-carrier" in capsys.readouterr().out


def test_installed_command_exits_non_zero_on_a_broken_config(tmp_path):
    path = write(tmp_path, 'board_type = "oil-carrier"\n[limits]\npower_max_w = "a lot"\n')
    installed = str(Path(sys.executable).with_name("hearth"))  # the .venv's, not PATH's
    broken = subprocess.run([installed, "config", "check", str(path)],
                            capture_output=True, text=True)
    assert broken.returncode == 1
    assert (f'{path}: limits.power_max_w = "a lot": expected a number from 0.5 to 15'
            in broken.stderr)
    good = subprocess.run([sys.executable, "-m", "agent", "config", "check", "--config",
                           str(EXAMPLE)], capture_output=True, text=True)
    assert (good.returncode, good.stderr) == (0, "")


def test_loaded_values_merge_board_and_site_and_fill_defaults():
    board = tomllib.loads(Path(BOARD_FILE).read_text(encoding="utf-8"))
    board_sensors = {table["name"]: table for table in board["sensor"]}
    config = hearth_config.load_config(EXAMPLE)
    sensors = {sensor.name: sensor for sensor in config.sensors}
    assert list(sensors) == list(board_sensors)  # the example only overrides board sensors
    assert sensors["board_power"].settings["shunt_ohms"] == 0.05  # site override
    assert board_sensors["board_power"]["shunt_ohms"] != 0.05
    assert (sensors["board_power"].settings["max_current_a"]
            == board_sensors["board_power"]["max_current_a"])  # kept from the board
    assert sensors["water_in"].settings["id"] == "28-0316a2795eff"
    assert set(sensors["oil"].settings) == set(SENSOR_CLASSES["tmp117"].SCHEMA)
    assert config.limits.oil_limit_c == 62.0 and isinstance(config.limits.oil_limit_c, float)
    assert config.limits.soc_limit_c == config_schema.LIMITS_SCHEMA["soc_limit_c"].default
    assert config.control.leader_timeout_s == 20.0
    assert config.pins.slot_id_gpios == tuple(board["pins"]["slot_id_gpios"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.soc_limit_c = 90.0
    with pytest.raises(TypeError):
        sensors["oil"].settings["address"] = 0x49


def test_roles_are_resolved_once_to_the_readings_that_serve_them():
    config = hearth_config.load_config(EXAMPLE)
    assert dict(config.roles) == {
        "power": "board_power.power_w", "oil": "oil", "water_in": "water_in",
        "water_out": "water_out", "flow": "water_flow", "soc": "soc", "throttle": "throttle"}
    assert {sensor.name: sensor.role for sensor in config.sensors}["water_pressure"] is None
    assert config.leader_only_sensors == frozenset()  # no [leader] here
    with pytest.raises(TypeError):
        config.roles["oil"] = "water_in"


def test_module_roles_come_from_sensors_or_leader_keys_and_only_theirs_are_the_leaders(tmp_path):
    config = hearth_config.load_config(write(
        tmp_path, 'board_type = "oil-carrier"\n[leader]\noil_reading = "oil"\n'
        'water_in_reading = "module_in"\n' + IDS +
        '[[sensor]]\nname = "module_in"\nkind = "ds18b20"\nid = "28-00000000aaa1"\n'
        '[[sensor]]\nname = "module_flow"\nkind = "flow"\npin = 22\npulses_per_litre = 450.0\n'
        'role = "module_flow"\n'))
    assert {role: config.roles[role] for role in ("module_water_in", "module_flow",
                                                  "module_oil", "oil")} == {
        "module_water_in": "module_in", "module_flow": "module_flow", "module_oil": "oil",
        "oil": "oil"}
    assert "module_water_out" not in config.roles
    # the board's own oil keeps its protection: the board agent builds it as well
    assert config.leader_only_sensors == {"module_in", "module_flow"}


def test_role_problems_are_structured_on_the_error(tmp_path):
    path = write(tmp_path, 'board_type = "oil-carrier"\n' + IDS +
                 '[[sensor]]\nname = "tank"\nkind = "ds18b20"\nid = "28-0316a2795e00"\n'
                 'role = "power"\n[[sensor]]\nname = "cpu"\nkind = "soc"\nrole = "soc"\n')
    with pytest.raises(ConfigValueError) as raised:
        hearth_config.load_config(path)
    kind_problem, twice_problem = raised.value.problems
    assert (kind_problem.file, kind_problem.key, kind_problem.value) == (
        str(path), "sensor[3] 'tank'.role", "power")
    assert kind_problem.expected.startswith("a role a ds18b20 sensor can give: ")
    assert (twice_problem.file, twice_problem.key, twice_problem.value) == (
        str(path), "sensor[4] 'cpu'.role", "soc")
    assert twice_problem.expected == f"a role no other sensor has ('soc' in {BOARD_FILE} has it)"


def test_mqtt_brokers_in_order_with_the_port_default_of_their_transport(tmp_path):
    """A broker without a port gets 8883 over TLS (ca_file set) and 1883 without: never plain
    text to the TLS port."""
    plain = hearth_config.load_config(write(tmp_path, 'board_type = "oil-carrier"\n[mqtt]\n'
                                            'brokers = ["hearth-broker.local", "10.0.0.2:1884"]\n'
                                            + IDS))
    assert plain.mqtt.brokers == ("hearth-broker.local:1883", "10.0.0.2:1884")
    assert plain.mqtt.port == 1883
    tls = hearth_config.load_config(write(tmp_path, 'board_type = "oil-carrier"\n[mqtt]\n'
                                          'brokers = ["hearth-broker.local", "standby.local"]\n'
                                          'ca_file = "/etc/hearth/tls/ca.crt"\n' + IDS))
    assert tls.mqtt.brokers == ("hearth-broker.local:8883", "standby.local:8883")
    assert tls.mqtt.port == 8883
    given = hearth_config.load_config(write(tmp_path, 'board_type = "oil-carrier"\n[mqtt]\n'
                                            'brokers = ["a.local", "b.local:8884"]\nport = 9000\n'
                                            'ca_file = "/etc/hearth/tls/ca.crt"\n' + IDS))
    assert given.mqtt.brokers == ("a.local:9000", "b.local:8884")


def test_identity_is_optional(tmp_path):
    config = hearth_config.load_config(write(tmp_path, 'board_type = "oil-carrier"\n' + IDS))
    assert config.identity is None


def test_show_prints_toml_that_loads_back_to_the_same_config(tmp_path, capsys):
    assert main(["config", "show", str(EXAMPLE)]) == 0
    shown = capsys.readouterr().out
    assert "address = 0x40" in shown
    assert main(["config", "show", "--json", str(EXAMPLE)]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert tomllib.loads(shown) == as_json
    reloaded = hearth_config.load_config(write(tmp_path, shown))
    assert reloaded.to_dict() == hearth_config.load_config(EXAMPLE).to_dict()


def test_show_reports_problems_like_check(tmp_path, capsys):
    path = write(tmp_path, 'board_type = "oil-carrier"\n')
    assert main(["config", "show", str(path)]) == 1
    assert "'water_in'.id is missing" in capsys.readouterr().err


def test_committed_reference_page_matches_the_schemas(capsys):
    assert main(["config", "docs"]) == 0
    generated = capsys.readouterr().out
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == generated, "regenerate it: hearth config docs > docs/config.md"
    for kind, sensor_class in SENSOR_CLASSES.items():
        assert f'### kind = "{kind}"' in generated
        for key in sensor_class.SCHEMA:
            assert f"| `{key}` |" in generated


def test_each_section_dataclass_has_exactly_its_schema_keys_with_their_types():
    """The section dataclasses are written out in config_schema; this keeps them and the
    schemas (what is checked and documented) the same keys, types and order."""
    board_fields = typing.get_type_hints(config_schema.BoardConfig)
    for name, schema, _, required in config_schema.SECTIONS:
        section_class = board_fields[name] if required else typing.get_args(board_fields[name])[0]
        hints = typing.get_type_hints(section_class)
        assert [field.name for field in dataclasses.fields(section_class)] == list(schema), name
        for key, field in schema.items():
            expected = tuple[field.items.type, ...] if field.type is list else field.type
            # A key whose default is None may stay None, or be resolved at load (mqtt.port).
            allowed = (expected, expected | None) if field.default is None else (expected,)
            assert hints[key] in allowed, f"{name}.{key}"
        assert section_class.__dataclass_params__.frozen, name


def test_connection_settings_load_from_a_file_with_only_mqtt(tmp_path):
    """What `hearth agent --sim --config` reads: the [mqtt] file broker-config writes for an
    account loads alone, checked as in a whole config."""
    mqtt, identity = hearth_config.load_connection(write(
        tmp_path, '[mqtt]\nbrokers = ["a.local", "b.local:8884"]\nusername = "m1.b01"\n'
        'password_file = "/etc/hearth/m1.b01/credentials.toml"\n'))
    assert (mqtt.brokers, mqtt.username, identity) == (("a.local:1883", "b.local:8884"),
                                                       "m1.b01", None)
    with pytest.raises(ConfigValueError) as raised:
        hearth_config.load_connection(write(tmp_path, '[mqtt]\nbrokers = ["a.local"]\n'
                                            'cert_file = "/etc/hearth/c.crt"\n', "bad.toml"))
    assert {problem.key for problem in raised.value.problems} == {"mqtt.key_file",
                                                                 "mqtt.ca_file"}
    with pytest.raises(ConfigValueError, match="mqtt.brokers is missing"):
        hearth_config.load_connection(write(tmp_path, '[identity]\nsite = "s"\n', "none.toml"))
