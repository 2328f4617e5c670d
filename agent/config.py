"""Loading Hearth's site and board configuration: read the TOML once, check all of it, return
frozen values (the sections and their keys are in agent.config_schema).

A site config (default /etc/hearth/hearth.toml) names a board type; the board definition
(<config dir>/boards/<type>.toml, else the one shipped in agent.boards) declares that carrier's
pins and sensors, and the site config may override them. Sensor roles are resolved here, once,
into the readings that serve them (BoardConfig.roles). Every problem is collected before
anything is raised, so an operator fixes a config in one round instead of one error per restart.
"""

import dataclasses
import importlib.resources
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config_schema import (BOARD_SCHEMA, DEFAULT_CONFIG_PATH, LEADER_ROLE_KEYS,
                                 MISSING_KEY_HINTS, ORDERED_CHAINS, SECTIONS, SENSOR_NAME_FIELD,
                                 SENSOR_ROLE_FIELD, SENSOR_ROLES, TOP_SCHEMA, Actuators,
                                 BoardConfig, Control, Identity, Leader, Limits, Mqtt, Pins, Report,
                                 IDENTITY_SCHEMA, MQTT_PORT, MQTT_SCHEMA, MQTT_TLS_PORT,
                                 SensorConfig, Site)
from agent.schema import Schema
from agent.tables import ABSENT, TableCheck, suggest, toml_value


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


def load_connection(path: Path | str) -> tuple[Mqtt, Identity | None]:
    """Only [mqtt] (required) and [identity] of a file, checked as load_config checks them: how
    a simulated board logs in to a site's broker as a board of that site. The file may be a
    whole role config or the [mqtt] section `hearth broker-config` writes for an account;
    whatever else it holds is not read."""
    check = _Check(Path(path), {}, None)
    document = check.read_toml(check.path, "pass the right path")
    if document is None:
        check.raise_problems("the connection settings")
    layers = [(document, check.file)]
    mqtt = check.section("mqtt", MQTT_SCHEMA, layers, required=True, report_missing=True)
    identity = check.section("identity", IDENTITY_SCHEMA, layers, required=False,
                             report_missing=True)
    check.mqtt_checks(mqtt or {})
    check.raise_problems("the connection settings")
    return _mqtt(mqtt), Identity(**identity) if identity else None


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
        sensors, drafts = self.sensors(site, board, board_file)
        self.cross_checks(sections)
        roles = self.roles(sensors, drafts, sections["leader"])
        self.raise_problems("the configuration")
        return BoardConfig(
            path=self.path, board_type=board_type, board_path=board_file,
            board_description=board.get("description", ""),
            identity=Identity(**sections["identity"]) if sections["identity"] else None,
            limits=Limits(**sections["limits"]), control=Control(**sections["control"]),
            actuators=Actuators(**sections["actuators"]), pins=Pins(**sections["pins"]),
            sensors=tuple(sensors), mqtt=_mqtt(sections["mqtt"]) if sections["mqtt"] else None,
            leader=Leader(**sections["leader"]) if sections["leader"] else None,
            site=Site(**sections["site"]) if sections["site"] else None,
            report=Report(**sections["report"]) if sections["report"] else None,
            roles=types.MappingProxyType(roles),
            leader_only_sensors=self.leader_only_sensors(roles) if sections["leader"] else
            frozenset())

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

    def sensors(self, site: dict, board: dict, board_file: str
                ) -> tuple[list[SensorConfig], dict[str, _SensorDraft]]:
        """The merged sensors, and the drafts they came from by name (where each key was set)."""
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
        return sensors, merged

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
            if key not in ("kind", "role") and key not in schema:
                self.report(entry.file, f"{label.format(entry.index)}.{key}",
                            f"a key of a {kind} sensor: " + (", ".join(schema) or
                                                             "none besides name, kind and role"),
                            value=entry.value, hint=suggest(key, list(schema)))
        for key, field in schema.items():
            entry = draft.entries.get(key, _Entry(ABSENT, draft.file, draft.index))
            hint = MISSING_KEY_HINTS.get((kind, key), "")
            if not hint and draft.file != self.file:
                hint = f"set it in the site config's [[sensor]] table with name = {draft.name!r}"
            settings[key] = self.value(field, entry.value, entry.file,
                                       f"{label.format(entry.index)}.{key}", missing_hint=hint)
        role = self.role(draft, label, kind)
        if None in settings.values() or draft.name is None or role is ABSENT:
            return None
        return SensorConfig(draft.name, kind, types.MappingProxyType(settings), role)

    def role(self, draft: _SensorDraft, label: str, kind: str) -> Any:
        """The sensor's role, None for none, ABSENT when it is wrong (reported)."""
        entry = draft.entries.get("role")
        if entry is None:
            return None
        path = f"{label.format(entry.index)}.role"
        role = self.value(SENSOR_ROLE_FIELD, entry.value, entry.file, path)
        if role is None:
            return ABSENT
        quantities = self.sensor_classes[kind].QUANTITIES
        if SENSOR_ROLES[role][0] in quantities:
            return role
        possible = [name for name, (quantity, _) in SENSOR_ROLES.items() if quantity in quantities]
        givers = [other for other, cls in sorted(self.sensor_classes.items())
                  if SENSOR_ROLES[role][0] in cls.QUANTITIES]
        self.report(entry.file, path,
                    f"a role a {kind} sensor can give: " + ", ".join(map(repr, possible))
                    if possible else f"no role: a {kind} sensor gives none", value=role,
                    hint=f"{role!r} needs a sensor that measures {SENSOR_ROLES[role][0]}: "
                    + ", ".join(givers))
        return ABSENT

    def role_reading(self, sensor: SensorConfig, role: str) -> str | None:
        """The reading of `sensor` that serves `role`, None when its kind cannot give it."""
        suffixes = self.sensor_classes[sensor.kind].QUANTITIES
        quantity = SENSOR_ROLES[role][0]
        return sensor.name + suffixes[quantity] if quantity in suffixes else None

    def roles(self, sensors: list[SensorConfig], drafts: dict[str, _SensorDraft],
              leader: dict | None) -> dict[str, str]:
        """Each role given -> the reading that serves it. A role is given once: by a sensor's
        `role`, or for the leader's roles also by a [leader] *_reading key naming a sensor."""
        roles: dict[str, str] = {}
        owners: dict[str, tuple[SensorConfig, _Entry]] = {}
        for sensor in sensors:
            if sensor.role is None:
                continue
            entry = drafts[sensor.name].entries["role"]
            if sensor.role not in owners:
                owners[sensor.role] = (sensor, entry)
                roles[sensor.role] = self.role_reading(sensor, sensor.role)
                continue
            first, first_entry = owners[sensor.role]
            # Blame the site config's table, if it is one of the two, over the board's.
            if first_entry.file == self.file != entry.file:
                (first, first_entry), (sensor, entry) = (sensor, entry), (first, first_entry)
            self.report(entry.file, f"sensor[{entry.index}] {sensor.name!r}.role",
                        f"a role no other sensor has ({first.name!r} in {first_entry.file} has "
                        "it)", value=sensor.role, hint="a role names one sensor; remove it "
                        "from one of them")
        by_name = {sensor.name: sensor for sensor in sensors}
        for role, key in LEADER_ROLE_KEYS.items():
            written = (leader or {}).get(key)
            if not written:
                continue
            entry = self.written[f"leader.{key}"]
            name, _, quantity = written.partition(".")
            sensor = by_name.get(name)
            if sensor is None:
                self.report(entry.file, f"leader.{key}", "the name of a [[sensor]] in this "
                            "config: " + ", ".join(map(repr, by_name)), value=written,
                            hint=suggest(name, list(by_name)) or "add the sensor, or fix the "
                            "name")
                continue
            reading = self.role_reading(sensor, role)
            if reading is None:
                self.report(entry.file, f"leader.{key}", f"a sensor that measures "
                            f"{SENSOR_ROLES[role][0]} for {role} ({name!r} is a {sensor.kind})",
                            value=written)
            elif quantity and written != reading:
                self.report(entry.file, f"leader.{key}", f"{reading!r}, the reading {name!r} "
                            f"gives for {role}", value=written)
            elif role in owners and roles[role] != reading:
                first, first_entry = owners[role]
                self.report(entry.file, f"leader.{key}", f"{roles[role]!r} or empty: the "
                            f"sensor {first.name!r} in {first_entry.file} has role = {role!r}",
                            value=written, hint="a role names one sensor")
            else:
                roles[role] = reading
        return roles

    @staticmethod
    def leader_only_sensors(roles: dict[str, str]) -> frozenset[str]:
        """Sensors that only the leader's roles name: a sensor with a role of the board's stays
        the board's too, so the board keeps its own protection."""
        sensor_of = {role: reading.partition(".")[0] for role, reading in roles.items()}
        leader = {name for role, name in sensor_of.items() if role in LEADER_ROLE_KEYS}
        board = {name for role, name in sensor_of.items() if role not in LEADER_ROLE_KEYS}
        return frozenset(leader - board)

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
        self.mqtt_checks(sections.get("mqtt") or {})
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

    def mqtt_checks(self, mqtt: dict[str, Any]) -> None:
        """[mqtt]'s relations: a client certificate with its key and CA, a password with its
        account, at least one broker and ports in range."""
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
        if mqtt.get("brokers") == ():
            self.report(self.file, "mqtt.brokers", "at least one broker, `host` or `host:port`",
                        value=[], hint="the site's broker first, then any standby")
        for position, broker in enumerate(mqtt.get("brokers") or (), start=1):
            _, colon, port = broker.partition(":")
            if colon and not 1 <= int(port) <= 65535:
                self.report(self.file, f"mqtt.brokers[{position}]", "a port from 1 to 65535",
                            value=broker)

    @staticmethod
    def lookup(sections: dict[str, dict | None], key_path: str) -> Any:
        section, key = key_path.split(".")
        return (sections.get(section) or {}).get(key)


def _mqtt(values: dict[str, Any]) -> Mqtt:
    """[mqtt] with every broker's port filled in: the default is the TLS port only when TLS is
    on (ca_file), so a broker written without a port is never sent plain text on 8883."""
    port = values["port"] or (MQTT_TLS_PORT if values["ca_file"] else MQTT_PORT)
    brokers = tuple(broker if ":" in broker else f"{broker}:{port}"
                    for broker in values["brokers"])
    return Mqtt(**{**values, "brokers": brokers, "port": port})
