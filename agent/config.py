"""Hearth's site and board configuration: read the TOML once, check all of it, return frozen values.

A site config (default /etc/hearth/hearth.toml) names a board type; the board definition
(<config dir>/boards/<type>.toml, else the one shipped in agent.boards) declares that carrier's
pins and sensors, and the site config may override them. Every problem is collected before
anything is raised, so an operator fixes a config in one round instead of one error per restart.
"""

import dataclasses
import importlib.resources
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.schema import Field, Schema
from agent.tables import ABSENT, TableCheck, suggest, toml_value

DEFAULT_CONFIG_PATH = Path("/etc/hearth/hearth.toml")

_TOPIC_LEVEL_RULE = ("lowercase letters, digits, '_' and '-', at most 32, starting with a letter "
                     "or digit; it becomes an MQTT topic level")
_CGROUP_PATTERN = r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]*(/[A-Za-z0-9_@-][A-Za-z0-9_.@-]*)*"
_CGROUP_RULE = "a path relative to /sys/fs/cgroup, without '..'"

TOP_SCHEMA: Schema = {
    "board_type": Field(str, "the carrier board: `<config dir>/boards/<type>.toml` if present, "
                        "else the definition shipped with Hearth (`hardware/boards/`)",
                        pattern=r"[a-z0-9][a-z0-9_-]*", example="oil-carrier"),
}

IDENTITY_SCHEMA: Schema = {
    "site": Field(str, "the site (home, pool, school): " + _TOPIC_LEVEL_RULE,
                  pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="school-7"),
    "module": Field(str, "the module (one oil loop and its broker): " + _TOPIC_LEVEL_RULE,
                    pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="m1"),
    "board": Field(str, "this board within its module: " + _TOPIC_LEVEL_RULE,
                   pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="b07"),
}

# The firmware throttles the Arm on its own from 80 C; the agent's SoC limits stay below that so
# that its control, not the firmware's, is in charge (DESIGN.md section 7).
LIMITS_SCHEMA: Schema = {
    "soc_warning_c": Field(float, "SoC temperature at which the board is held back (LIMITED)",
                           default=70.0, min=40.0, max=79.0),
    "soc_limit_c": Field(float, "SoC temperature the temperature-limit loop holds the SoC below",
                         default=75.0, min=40.0, max=79.0),
    "soc_critical_c": Field(float, "SoC temperature that forces SAFE at once",
                            default=78.0, min=40.0, max=79.0),
    "oil_warning_c": Field(float, "local oil temperature at which the board is held back",
                           default=60.0, min=20.0, max=90.0),
    "oil_limit_c": Field(float, "local oil temperature the limit loop holds the oil below",
                         default=65.0, min=20.0, max=90.0),
    "oil_critical_c": Field(float, "local oil temperature that forces SAFE at once",
                            default=70.0, min=20.0, max=90.0),
    "hysteresis_c": Field(float, "how far a temperature must fall below a threshold before its "
                          "mode is left, so the mode does not chatter", default=2.0,
                          min=0.5, max=10.0),
    "power_min_w": Field(float, "lowest board power the controller will command "
                         "(a Pi 4 idles at 2-3 W)", default=2.0, min=0.0, max=15.0),
    "power_max_w": Field(float, "highest board power the controller will command "
                         "(a Pi 4 draws 5.5-6.5 W fully loaded)", default=6.5, min=0.5, max=15.0),
}

CONTROL_SCHEMA: Schema = {
    "period_s": Field(float, "control loop period (sample, supervise, control, govern)",
                      default=0.1, min=0.02, max=1.0),
    "report_period_s": Field(float, "how often state is published over MQTT",
                             default=1.0, min=0.1, max=60.0),
    "fallback_setpoint_w": Field(float, "power setpoint used while the leader or broker is silent",
                                 default=3.0, min=0.0, max=15.0),
    "leader_timeout_s": Field(float, "the leader or broker counts as lost after this long without "
                              "a message, and fallback_setpoint_w applies", default=30.0,
                              min=1.0, max=3600.0),
    "setpoint_hold_s": Field(float, "a setpoint from the leader expires after this long unless "
                             "renewed", default=300.0, min=1.0, max=86400.0),
}

ACTUATORS_SCHEMA: Schema = {
    "cpufreq_policy": Field(str, "cpufreq policy directory under /sys/devices/system/cpu/cpufreq",
                            default="policy0", pattern=r"policy[0-9]+", example="policy0"),
    "workload_cgroup": Field(str, "cgroup v2 group of the paid workload: " + _CGROUP_RULE,
                             default="hearth.slice/hearth-workload.slice", pattern=_CGROUP_PATTERN,
                             example="hearth.slice/hearth-workload.slice"),
    "heatfill_cgroup": Field(str, "cgroup v2 group of the heat-fill load: " + _CGROUP_RULE,
                             default="hearth.slice/hearth-heatfill.slice", pattern=_CGROUP_PATTERN,
                             example="hearth.slice/hearth-heatfill.slice"),
    "cpu_period_us": Field(int, "period written to cpu.max with the workload's quota "
                           "(the kernel accepts 1 ms to 1 s)", default=100000,
                           min=1000, max=1000000),
}

_FILE_RULE = "an absolute path, or empty for none"
_FILE_PATTERN = r"(/[^\x00]*)?"

MQTT_SCHEMA: Schema = {
    "host": Field(str, "the module's broker (the leader board runs it): host name or address",
                  pattern=r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?",
                  example="leader.m1.local"),
    "port": Field(int, "the broker's port (8883 is MQTT over TLS)", default=8883, min=1,
                  max=65535),
    "keepalive_s": Field(int, "seconds between pings when idle; the broker publishes the Last "
                         "Will (`offline`) about 1.5 times this after the board goes silent",
                         default=30, min=5, max=3600),
    "ca_file": Field(str, "CA certificate that signed the broker's certificate; TLS is used when "
                     "this is set: " + _FILE_RULE, default="", pattern=_FILE_PATTERN,
                     example="/etc/hearth/tls/ca.crt"),
    "cert_file": Field(str, "this board's client certificate, if the broker asks for one: "
                       + _FILE_RULE, default="", pattern=_FILE_PATTERN,
                       example="/etc/hearth/tls/board.crt"),
    "key_file": Field(str, "the client certificate's private key: " + _FILE_RULE, default="",
                      pattern=_FILE_PATTERN, example="/etc/hearth/tls/board.key"),
    "username": Field(str, "this board's broker account (provisioning names it after the "
                      "board); empty for none", default="", pattern=r"[A-Za-z0-9_.@-]{0,64}",
                      example="school-7.m1.b07"),
    "password_file": Field(str, "file holding the account's password on its first line (kept "
                           "out of hearth.toml so the config can be shown): " + _FILE_RULE,
                           default="", pattern=_FILE_PATTERN,
                           example="/etc/hearth/mqtt-password"),
}

_READING_NAME = r"([a-z][a-z0-9_]*(\.[a-z_]+)?)?"
_READING_RULE = ("a reading of a [[sensor]] in this file (its name, or name.quantity such as "
                 "`module_power.power_w`), or empty for none")

# The module leader's own settings and the module sensors on its board (docs/leader.md).
LEADER_SCHEMA: Schema = {
    "period_s": Field(float, "leader period: setpoints (the boards' heartbeat), module totals and "
                      "the interlock check", default=5.0, min=0.5, max=60.0),
    "silence_timeout_s": Field(float, "a board without a state message for this long counts as "
                               "silent and gets no share", default=15.0, min=2.0, max=600.0),
    "budget_w": Field(float, "module heat budget until the site sends one", default=0.0,
                      min=0.0, max=100000.0),
    "water_in_reading": Field(str, "module water inlet temperature: " + _READING_RULE,
                              default="", pattern=_READING_NAME, example="module_in"),
    "water_out_reading": Field(str, "module water outlet temperature: " + _READING_RULE,
                               default="", pattern=_READING_NAME, example="module_out"),
    "flow_reading": Field(str, "module water flow (L/min): " + _READING_RULE, default="",
                          pattern=_READING_NAME, example="module_flow"),
    "oil_reading": Field(str, "module oil temperature: " + _READING_RULE, default="",
                         pattern=_READING_NAME, example="module_oil"),
    "flow_min_l_per_min": Field(float, "module flow below this sets the interlock (all boards "
                                "SAFE); checked only when flow_reading is set", default=2.0,
                                min=0.0, max=1000.0),
    "oil_max_c": Field(float, "module oil at or above this sets the interlock; checked only when "
                       "oil_reading is set", default=68.0, min=20.0, max=90.0),
    "interlock_clear_s": Field(float, "the causes must be gone this long before the interlock "
                               "clears", default=30.0, min=0.0, max=3600.0),
    "metrics_port": Field(int, "Prometheus endpoint port (/metrics); 0 for none", default=9105,
                          min=0, max=65535),
}

SITE_SCHEMA: Schema = {
    "period_s": Field(float, "how often module budgets are sent", default=10.0, min=1.0,
                      max=600.0),
    "target_c": Field(float, "tank/loop temperature target (Home Assistant can change it)",
                      default=55.0, min=20.0, max=75.0),
    "loop_reading": Field(str, "tank/loop temperature: " + _READING_RULE + "; without it demand "
                          "comes only from `site/demand`", default="", pattern=_READING_NAME,
                          example="tank"),
    "kp_w_per_k": Field(float, "demand PI: watts per kelvin below target", default=50.0,
                        min=0.0, max=100000.0),
    "ki_w_per_k_s": Field(float, "demand PI: integral gain, watts per kelvin-second",
                          default=0.05, min=0.0, max=1000.0),
    "demand_timeout_s": Field(float, "an external `site/demand` older than this is forgotten",
                              default=120.0, min=1.0, max=86400.0),
}

_GPIO = Field(int, "BCM GPIO number", min=0, max=27)

PINS_SCHEMA: Schema = {
    "one_wire_gpio": Field(int, "1-wire data line of the DS18B20s (dtoverlay=w1-gpio,gpiopin=N)",
                           min=0, max=27),
    "flow_gpio": Field(int, "pulse output of the water flow meter", min=0, max=27),
    "status_led_gpio": Field(int, "status LED, blinked by `identify`", min=0, max=27),
    "slot_id_gpios": Field(list, "slot-ID straps on the backplane, bit 0 first, each a BCM GPIO "
                           "number from 0 to 27", example="[5, 6, 13]", items=_GPIO),
}

# Sections of the site config: (table name, schema, what it is for, required as a whole).
SECTIONS: tuple[tuple[str, Schema, str, bool], ...] = (
    ("identity", IDENTITY_SCHEMA, "Who this board is. Optional: without it the board learns its "
     "identity at boot (boot-partition file, slot straps, serial number). If present, all three "
     "keys are required.", False),
    ("limits", LIMITS_SCHEMA, "Safety thresholds and the power range the controller may command.",
     True),
    ("control", CONTROL_SCHEMA, "Loop timing and what to do when the leader goes quiet.", True),
    ("actuators", ACTUATORS_SCHEMA, "Where the governor writes: cpufreq policy and cgroups.", True),
    ("pins", PINS_SCHEMA, "GPIO wiring. The board definition declares all of them; the site "
     "config may override any.", True),
    ("mqtt", MQTT_SCHEMA, "The module's MQTT broker (docs/mqtt.md). Optional: without it the "
     "board runs on its own, on its fallback setpoint. If present, `host` is required.", False),
    ("leader", LEADER_SCHEMA, "Only on the board that runs `hearth leader` for its module: the "
     "leader's timing and the module's own sensors, named by reading (docs/leader.md).", False),
    ("site", SITE_SCHEMA, "Only where `hearth site` runs: how building demand is found.", False),
)

SENSOR_NAME_FIELD = Field(str, "unique sensor name, used in readings and MQTT state: lowercase "
                          "letters, digits and '_', starting with a letter",
                          pattern=r"[a-z][a-z0-9_]*", example="water_in")

BOARD_SCHEMA: Schema = {
    "description": Field(str, "what the carrier board is, for people",
                         example="Hearth oil carrier"),
}

# Values that must rise along each chain: (key paths, strictly). Checked after every single value
# passed its own bounds; listed in the generated reference.
ORDERED_CHAINS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("limits.soc_warning_c", "limits.soc_limit_c", "limits.soc_critical_c"), True),
    (("limits.oil_warning_c", "limits.oil_limit_c", "limits.oil_critical_c"), True),
    (("limits.power_min_w", "limits.power_max_w"), True),
    (("limits.power_min_w", "control.fallback_setpoint_w", "limits.power_max_w"), False),
    (("control.period_s", "control.report_period_s"), False),
)

# What an operator does when a required sensor key is missing and the key's doc is not enough.
MISSING_KEY_HINTS: dict[tuple[str, str], str] = {
    ("ds18b20", "id"): "the board definition leaves DS18B20 ids to each board: set it in the site "
                       "config; `hearth w1 list` shows the ids on this bus",
}

def _dataclass_from(name: str, schema: Schema, doc: str) -> type:
    """Turn a section schema into a frozen dataclass, so the keys are declared only once."""
    fields = [(key, tuple if field.type is list else field.type) for key, field in schema.items()]
    return dataclasses.make_dataclass(name, fields, frozen=True,
                                      namespace={"__doc__": doc, "__module__": __name__})


Identity = _dataclass_from("Identity", IDENTITY_SCHEMA, SECTIONS[0][2])
Limits = _dataclass_from("Limits", LIMITS_SCHEMA, SECTIONS[1][2])
Control = _dataclass_from("Control", CONTROL_SCHEMA, SECTIONS[2][2])
Actuators = _dataclass_from("Actuators", ACTUATORS_SCHEMA, SECTIONS[3][2])
Pins = _dataclass_from("Pins", PINS_SCHEMA, SECTIONS[4][2])
Mqtt = _dataclass_from("Mqtt", MQTT_SCHEMA, SECTIONS[5][2])
Leader = _dataclass_from("Leader", LEADER_SCHEMA, SECTIONS[6][2])
Site = _dataclass_from("Site", SITE_SCHEMA, SECTIONS[7][2])


@dataclasses.dataclass(frozen=True)
class SensorConfig:
    """One sensor after merging board and site tables: settings has every key of the driver's
    SCHEMA (defaults filled, name and kind removed) and is read-only."""

    name: str
    kind: str
    settings: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class BoardConfig:
    """Everything a board agent needs from its config, checked, read once."""

    path: Path
    board_type: str
    board_path: str
    board_description: str
    identity: Identity | None  # None: the board learns its identity at boot
    limits: Limits
    control: Control
    actuators: Actuators
    pins: Pins
    sensors: tuple[SensorConfig, ...]
    mqtt: Mqtt | None = None  # None: no broker, the board runs on its own
    leader: Leader | None = None  # None: this board runs no leader
    site: Site | None = None  # None: no site role here

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain TOML/JSON values (what `hearth config show` prints)."""
        effective: dict[str, Any] = {"board_type": self.board_type}
        for section, *_ in SECTIONS:
            values = getattr(self, section)
            if values is not None:
                effective[section] = {key: list(value) if isinstance(value, tuple) else value
                                      for key, value in dataclasses.asdict(values).items()}
        effective["sensor"] = [{"name": sensor.name, "kind": sensor.kind, **sensor.settings}
                               for sensor in self.sensors]
        return effective


def board_definitions(config_dir: Path, packaged_boards: Any = None) -> dict[str, Any]:
    """Known board types and their files; one in <config dir>/boards replaces a shipped one."""
    packaged = packaged_boards if packaged_boards is not None else (
        importlib.resources.files("agent.boards"))
    found: dict[str, Any] = {}
    for source in (packaged, config_dir / "boards"):
        if source.is_dir():
            for entry in sorted(source.iterdir(), key=lambda entry: entry.name):
                if entry.name.endswith(".toml"):
                    found[entry.name.removesuffix(".toml")] = entry
    return found


def load_config(path: Path | str = DEFAULT_CONFIG_PATH, *,
                sensor_classes: Mapping[str, type] | None = None,
                packaged_boards: Any = None) -> BoardConfig:
    """Read and check a site config and its board definition.

    Raises ConfigFileError when the site file is unreadable or not TOML (nothing else can be
    checked then) or when a board definition is, otherwise ConfigValueError; either way the
    error's `.problems` lists everything found. sensor_classes defaults to the driver registry;
    packaged_boards to the shipped agent.boards.
    """
    if sensor_classes is None:
        from agent.drivers.registry import SENSOR_CLASSES as sensor_classes
    return _Check(Path(path), sensor_classes, packaged_boards).run()


@dataclasses.dataclass
class _Entry:
    """A value with where it was written, so an error can name the right file and table."""

    value: Any
    file: str
    index: int | None = None  # position of its [[sensor]] table in that file, from 1


@dataclasses.dataclass
class _SensorDraft:
    """A sensor while board and site tables are merged into it."""

    name: str | None
    file: str  # the last table naming it (the site's, if any): where a missing key belongs
    index: int
    entries: dict[str, _Entry]


class _Check(TableCheck):
    """One pass over a site config and its board definition, collecting problems as it goes."""

    def __init__(self, path: Path, sensor_classes: Mapping[str, type], packaged_boards: Any):
        super().__init__()
        self.path = path
        self.file = str(path)
        self.sensor_classes = sensor_classes
        self.packaged_boards = packaged_boards
        self.board_usable = True
        self.written: dict[str, _Entry] = {}  # section key path -> the value as written

    def run(self) -> BoardConfig:
        site = self.read_toml(self.path, "pass the right path, or start from "
                              "docs/examples/hearth.toml")
        if site is None:
            self.raise_problems("the configuration")
        self.unknown_keys(site, [*TOP_SCHEMA, *(name for name, *_ in SECTIONS), "sensor"],
                          self.file, "", "the top level")
        board_type = self.value(TOP_SCHEMA["board_type"], site.get("board_type", ABSENT),
                                self.file, "board_type")
        board_file, board = self.board_definition(board_type)
        self.board_usable = board is not None
        board = board or {}
        sections = {}
        for name, schema, _, required in SECTIONS:
            # Only the board definition may supply pins; without it, missing pins are not news.
            layers = [(site, self.file)]
            if name == "pins":
                layers.insert(0, (board, board_file))
            sections[name] = self.section(name, schema, layers, required,
                                          report_missing=self.board_usable or name != "pins")
        sensors = self.sensors(site, board, board_file)
        self.cross_checks(sections)
        self.raise_problems("the configuration")
        return BoardConfig(
            path=self.path, board_type=board_type, board_path=board_file,
            board_description=board.get("description", ""),
            identity=Identity(**sections["identity"]) if sections["identity"] else None,
            limits=Limits(**sections["limits"]), control=Control(**sections["control"]),
            actuators=Actuators(**sections["actuators"]), pins=Pins(**sections["pins"]),
            sensors=tuple(sensors), mqtt=Mqtt(**sections["mqtt"]) if sections["mqtt"] else None,
            leader=Leader(**sections["leader"]) if sections["leader"] else None,
            site=Site(**sections["site"]) if sections["site"] else None)

    def board_definition(self, board_type: str | None) -> tuple[str, dict | None]:
        """The board definition's file name and contents (None when it cannot be used)."""
        if board_type is None:
            return "", None
        known = board_definitions(self.path.parent, self.packaged_boards)
        if board_type not in known:
            self.report(self.file, "board_type",
                        "one of the known board types: " + (", ".join(map(repr, known)) or "none"),
                        value=board_type,
                        hint=suggest(board_type, list(known)) or
                        f"add a definition as {self.path.parent / 'boards' / board_type}.toml")
            return "", None
        board_file = str(known[board_type])
        board = self.read_toml(known[board_type])
        if board is None:
            return board_file, None
        self.unknown_keys(board, [*BOARD_SCHEMA, "pins", "sensor"], board_file, "",
                          "a board definition")
        self.value(BOARD_SCHEMA["description"], board.get("description", ABSENT), board_file,
                   "description")
        return board_file, board

    def section(self, name: str, schema: Schema, layers: list[tuple[dict, str]], required: bool,
                report_missing: bool) -> dict | None:
        """A section's checked values, later layers (the site config) overriding earlier ones."""
        entries: dict[str, _Entry] = {}
        for table, file in layers:
            if name not in table:
                continue
            values = self.table(table[name], file, name, f"a table [{name}]")
            if values is None:
                return None
            self.unknown_keys(values, schema, file, f"{name}.", f"[{name}]")
            entries.update({key: _Entry(value, file) for key, value in values.items()
                            if key in schema})
        if not required and not any(name in table for table, _ in layers):
            return None
        checked = {}
        for key, field in schema.items():
            if key not in entries and field.required and not report_missing:
                checked[key] = None
                continue
            entry = entries.get(key, _Entry(ABSENT, layers[0][1] or self.file))
            if key in entries:
                self.written[f"{name}.{key}"] = entry
            checked[key] = self.value(field, entry.value, entry.file, f"{name}.{key}")
        return checked

    def sensor_tables(self, data: dict, file: str) -> list[_SensorDraft]:
        if "sensor" not in data:
            return []
        tables = data["sensor"]
        if not isinstance(tables, list):
            self.report(file, "sensor", "[[sensor]] tables (an array of tables)", value=tables)
            return []
        drafts: list[_SensorDraft] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(tables, start=1):
            if self.table(table, file, f"sensor[{index}]", "a [[sensor]] table") is None:
                continue
            name = self.value(SENSOR_NAME_FIELD, table.get("name", ABSENT), file,
                              f"sensor[{index}].name")
            if name in seen:
                self.report(file, f"sensor[{index}].name",
                            f"a name no other [[sensor]] in this file has (sensor[{seen[name]}] "
                            "has it)", value=name)
                name = None  # its keys are still checked, as an unnamed sensor
            elif name is not None:
                seen[name] = index
            entries = {key: _Entry(value, file, index) for key, value in table.items()
                       if key != "name"}
            drafts.append(_SensorDraft(name, file, index, entries))
        return drafts

    def sensors(self, site: dict, board: dict, board_file: str) -> list[SensorConfig]:
        merged: dict[str, _SensorDraft] = {}
        unnamed: list[_SensorDraft] = []
        for draft in self.sensor_tables(board, board_file) + self.sensor_tables(site, self.file):
            if draft.name is None:
                unnamed.append(draft)
                continue
            base = merged.get(draft.name)
            if base is None:
                merged[draft.name] = draft
                continue
            new_kind, old_kind = draft.entries.get("kind"), base.entries.get("kind")
            if new_kind is not None and old_kind is not None and new_kind.value != old_kind.value:
                self.report(self.file, f"sensor[{draft.index}] {draft.name!r}.kind",
                            f"{toml_value(old_kind.value)}, the kind {base.file} declares for "
                            f"{draft.name!r}", value=new_kind.value,
                            hint="a site config may change a board sensor's keys, not its kind; "
                            "give a different sensor its own name")
                continue
            base.entries.update(draft.entries)
            base.file, base.index = draft.file, draft.index
        sensors = []
        for draft in [*merged.values(), *unnamed]:
            sensor = self.sensor(draft)
            if sensor is not None:
                sensors.append(sensor)
        self.shared_i2c_addresses(sensors, merged)
        return sensors

    def sensor(self, draft: _SensorDraft) -> SensorConfig | None:
        label = f"sensor[{{}}] {draft.name!r}" if draft.name else "sensor[{}]"
        kinds = sorted(self.sensor_classes)
        kind_entry = draft.entries.get("kind", _Entry(ABSENT, draft.file, draft.index))
        kind_path = f"{label.format(kind_entry.index)}.kind"
        kind = kind_entry.value
        if kind not in kinds:
            expected = "one of the sensor kinds: " + ", ".join(map(repr, kinds))
            if kind is ABSENT:
                if self.board_usable:  # else it may override a sensor of the unread board
                    self.report(kind_entry.file, kind_path, expected)
            else:
                self.report(kind_entry.file, kind_path, expected, value=kind,
                            hint=suggest(str(kind), kinds))
            return None
        schema = self.sensor_classes[kind].SCHEMA
        settings = {}
        for key, entry in draft.entries.items():
            if key != "kind" and key not in schema:
                self.report(entry.file, f"{label.format(entry.index)}.{key}",
                            f"a key of a {kind} sensor: " + (", ".join(schema) or
                                                             "none besides name and kind"),
                            value=entry.value, hint=suggest(key, list(schema)))
        for key, field in schema.items():
            entry = draft.entries.get(key, _Entry(ABSENT, draft.file, draft.index))
            hint = MISSING_KEY_HINTS.get((kind, key), "")
            if not hint and draft.file != self.file:
                hint = f"set it in the site config's [[sensor]] table with name = {draft.name!r}"
            settings[key] = self.value(field, entry.value, entry.file,
                                       f"{label.format(entry.index)}.{key}", missing_hint=hint)
        if None in settings.values() or draft.name is None:
            return None
        return SensorConfig(draft.name, kind, types.MappingProxyType(settings))

    def shared_i2c_addresses(self, sensors: list[SensorConfig],
                             drafts: dict[str, _SensorDraft]) -> None:
        """Two chips cannot answer at one address on one bus; the second would read the first."""
        owners: dict[tuple[int, int], str] = {}
        for sensor in sensors:
            if "bus" not in sensor.settings or "address" not in sensor.settings:
                continue
            spot = (sensor.settings["bus"], sensor.settings["address"])
            if spot in owners:
                entry = drafts[sensor.name].entries["address"]
                self.report(entry.file, f"sensor[{entry.index}] {sensor.name!r}.address",
                            f"an address no other sensor uses on bus {spot[0]} "
                            f"({owners[spot]!r} is at 0x{spot[1]:02x})", value=spot[1], hex=True)
            else:
                owners[spot] = sensor.name

    def cross_checks(self, sections: dict[str, dict | None]) -> None:
        """Relations between values, checked only where each value passed on its own."""
        for chain, strict in ORDERED_CHAINS:
            for lower_path, upper_path in zip(chain, chain[1:]):
                lower, upper = (self.lookup(sections, p) for p in (lower_path, upper_path))
                if lower is None or upper is None:
                    continue
                if upper > lower or (upper == lower and not strict):
                    continue
                # Blame the value the operator wrote, not a default they never saw.
                if upper_path not in self.written and lower_path in self.written:
                    entry = self.written[lower_path]
                    self.report(entry.file, lower_path,
                                f"a number {'below' if strict else 'at most'} {upper_path} "
                                f"({upper:g}, the default)", value=entry.value)
                else:
                    entry = self.written.get(upper_path, _Entry(upper, self.file))
                    self.report(entry.file, upper_path,
                                f"a number {'above' if strict else 'at least'} {lower_path} "
                                f"({lower:g})", value=entry.value)
        actuators = sections.get("actuators") or {}
        workload, heatfill = actuators.get("workload_cgroup"), actuators.get("heatfill_cgroup")
        if workload is not None and workload == heatfill:
            self.report(self.file, "actuators.heatfill_cgroup",
                        "a different cgroup from actuators.workload_cgroup", value=heatfill,
                        hint="the heat-fill load is throttled separately from the paid workload")
        mqtt = sections.get("mqtt") or {}
        if bool(mqtt.get("cert_file")) != bool(mqtt.get("key_file")):
            present, absent = (("cert_file", "key_file") if mqtt.get("cert_file")
                               else ("key_file", "cert_file"))
            self.report(self.file, f"mqtt.{absent}", f"a file, because mqtt.{present} is set",
                        value=mqtt.get(absent), hint="a client certificate needs its key")
        if mqtt.get("cert_file") and not mqtt.get("ca_file"):
            self.report(self.file, "mqtt.ca_file", "a CA file, because mqtt.cert_file is set",
                        value=mqtt.get("ca_file"), hint="client certificates are only sent over "
                        "TLS, which needs the CA that signed the broker's certificate")
        if mqtt.get("password_file") and not mqtt.get("username"):
            self.report(self.file, "mqtt.username", "an account name, because "
                        "mqtt.password_file is set", value=mqtt.get("username"))
        pins = sections.get("pins") or {}
        used: dict[int, str] = {}
        for key, value in pins.items():
            for gpio in value if isinstance(value, tuple) else (value,):
                if gpio is None:
                    continue
                if gpio not in used:
                    used[gpio] = key
                    continue
                # Blame the site config's override, if it is one of the two, over the board's.
                other = used[gpio]
                if self.written[f"pins.{other}"].file == self.file != self.written[
                        f"pins.{key}"].file:
                    key, other = other, key
                entry = self.written[f"pins.{key}"]
                self.report(entry.file, f"pins.{key}",
                            f"a GPIO no other pin uses (pins.{other} is GPIO {gpio})",
                            value=entry.value)

    @staticmethod
    def lookup(sections: dict[str, dict | None], key_path: str) -> Any:
        section, key = key_path.split(".")
        return (sections.get(section) or {}).get(key)


def reference_markdown(sensor_classes: Mapping[str, type] | None = None) -> str:
    """The config reference page, generated from the same schemas the checker uses."""
    if sensor_classes is None:
        from agent.drivers.registry import SENSOR_CLASSES as sensor_classes
    lines = [
        "# Hearth configuration reference",
        "",
        "<!-- Generated by `hearth config docs` from agent/config.py and each driver's SCHEMA; "
        "tests/test_config.py fails when this page and the schemas disagree. -->",
        "",
        f"The site config is TOML, by default `{DEFAULT_CONFIG_PATH}`; check one with "
        "`hearth config check FILE`, see the merged result with `hearth config show FILE`. "
        "It names a board type, whose definition (`<config dir>/boards/<type>.toml` if present, "
        "else the one shipped in `hardware/boards/`) declares the carrier's pins and sensors. "
        "Unknown keys are errors. Numbers may be written as integers where a number is expected; "
        "`true`/`false` are never numbers.",
        "",
        "## Top level",
        "",
        *_schema_table(TOP_SCHEMA),
    ]
    for name, schema, doc, _ in SECTIONS:
        lines += ["", f"## [{name}]", "", doc, "", *_schema_table(schema)]
    lines += [
        "",
        "## [[sensor]]",
        "",
        "Sensors come from the board definition's `[[sensor]]` tables, then the site config's, "
        "merged by `name`: a table with a name the board already declares overrides those keys "
        "(its `kind` may not change); a new name adds a sensor. Every table has:",
        "",
        *_schema_table({"name": SENSOR_NAME_FIELD,
                        "kind": Field(str, "which driver reads it",
                                      choices=tuple(sorted(sensor_classes)))}),
    ]
    for kind in sorted(sensor_classes):
        sensor_class = sensor_classes[kind]
        lines += ["", f'### kind = "{kind}"', "", sensor_class.doc, ""]
        lines += _schema_table(sensor_class.SCHEMA) if sensor_class.SCHEMA else [
            "No keys besides `name` and `kind`."]
    lines += ["", "## Checks across keys", ""]
    for chain, strict in ORDERED_CHAINS:
        lines.append("* " + (" < " if strict else " <= ").join(f"`{path}`" for path in chain))
    lines += [
        "* `actuators.workload_cgroup` and `actuators.heatfill_cgroup` differ.",
        "* No GPIO appears twice in `[pins]`.",
        "* `mqtt.cert_file` and `mqtt.key_file` come together, and need `mqtt.ca_file`; "
        "`mqtt.password_file` needs `mqtt.username`.",
        "* Sensor names are unique within a file; no two sensors share an I2C bus and address.",
        "",
    ]
    return "\n".join(lines)


def _schema_table(schema: Schema) -> list[str]:
    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, field in schema.items():
        default = "required" if field.required else f"`{toml_value(field.default, field.hex)}`"
        cells = (f"`{key}`", default, field.expected(), field.doc)
        rows.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ")
                                      for cell in cells) + " |")
    return rows


def effective_toml(config: BoardConfig, sensor_classes: Mapping[str, type]) -> str:
    """The merged config as TOML that loads back to the same values (I2C addresses in hex)."""
    effective = config.to_dict()
    lines = [f"# Effective configuration: {config.path} with board definition {config.board_path}",
             f"board_type = {toml_value(effective['board_type'])}"]
    for name, schema, *_ in SECTIONS:
        if name in effective:
            lines += ["", f"[{name}]"] + [f"{key} = {toml_value(value, schema[key].hex)}"
                                          for key, value in effective[name].items()]
    for sensor in config.sensors:
        schema = sensor_classes[sensor.kind].SCHEMA
        lines += ["", "[[sensor]]", f"name = {toml_value(sensor.name)}",
                  f"kind = {toml_value(sensor.kind)}"]
        lines += [f"{key} = {toml_value(value, schema[key].hex)}"
                  for key, value in sensor.settings.items()]
    return "\n".join(lines) + "\n"
