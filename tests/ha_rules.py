"""Home Assistant's documented rules for an MQTT device-discovery message, as a checker that
tests run on the bytes read off the wire: `problems(topic, payload)` lists every rule a message
breaks, `problems_across(messages)` adds the rules between messages.

Each rule says where it comes from. "core" is github.com/home-assistant/core, directory
homeassistant/components/mqtt/; "docs" is home-assistant.io/integrations/mqtt/ ("MQTT
Discovery", "Device discovery payload") or the platform's page (sensor.mqtt, select.mqtt,
water_heater.mqtt, ...), and developers.home-assistant.io for entity and sensor classes.
"""

import json
import re
from typing import Any

DISCOVERY_PREFIX = "homeassistant"
# core discovery.py TOPIC_MATCHER: <prefix>/<component>/[<node_id>/]<object_id>/config with
# ids of [a-zA-Z0-9_-]; docs: component is `device` for a device discovery
TOPIC_RULE = re.compile(r"homeassistant/device/([a-zA-Z0-9_-]+)/config")

# core abbreviations.py: the abbreviations discovery expands before validating (the ones a
# device discovery can meet at the top level and in components; anything else stays as it is
# and is then an unknown key)
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "cmd_t": "command_topic", "cmd_tpl": "command_template",
    "cmps": "components", "curr_temp_t": "current_temperature_topic",
    "curr_temp_tpl": "current_temperature_template", "dev": "device", "dev_cla": "device_class",
    "e": "encoding", "en": "enabled_by_default", "ent_cat": "entity_category",
    "exp_aft": "expire_after", "ic": "icon", "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template", "max_temp": "max_temp",
    "min_temp": "min_temp", "mode_cmd_t": "mode_command_topic",
    "mode_cmd_tpl": "mode_command_template", "mode_stat_t": "mode_state_topic",
    "mode_stat_tpl": "mode_state_template", "o": "origin", "ops": "options", "p": "platform",
    "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off", "pl_on": "payload_on", "pow_cmd_t": "power_command_topic",
    "pow_cmd_tpl": "power_command_template", "stat_cla": "state_class", "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision", "t": "topic",
    "temp_cmd_t": "temperature_command_topic", "temp_cmd_tpl": "temperature_command_template",
    "temp_stat_t": "temperature_state_topic", "temp_stat_tpl": "temperature_state_template",
    "temp_unit": "temperature_unit", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template"}
DEVICE_ABBREVIATIONS = {
    "cns": "connections", "cu": "configuration_url", "hw": "hw_version", "ids": "identifiers",
    "mf": "manufacturer", "mdl": "model", "mdl_id": "model_id", "sa": "suggested_area",
    "sn": "serial_number", "sw": "sw_version"}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}

# core schemas.py DEVICE_DISCOVERY_SCHEMA: MQTT_AVAILABILITY_SCHEMA extended with device,
# components, origin, state_topic, command_topic, qos, encoding; a voluptuous Schema without
# extra=ALLOW_EXTRA, so any other top-level key (an envelope's v, boot, seq, ts) fails the
# whole message. `~` (topic base) is taken out before validation (discovery.py).
AVAILABILITY_KEYS = {"availability", "availability_mode", "availability_template",
                     "availability_topic", "payload_available", "payload_not_available"}
TOP_LEVEL_KEYS = AVAILABILITY_KEYS | {"device", "components", "origin", "state_topic",
                                      "command_topic", "qos", "encoding", "~"}
# core schemas.py MQTT_ENTITY_DEVICE_INFO_SCHEMA (model_id: docs, "Device discovery payload")
DEVICE_KEYS = {"identifiers", "connections", "manufacturer", "model", "model_id", "name",
               "hw_version", "serial_number", "sw_version", "via_device", "suggested_area",
               "configuration_url"}
# core schemas.py MQTT_ORIGIN_INFO_SCHEMA: name required
ORIGIN_KEYS = {"name", "sw_version", "support_url"}

PLATFORMS = {"binary_sensor", "number", "select", "sensor", "update", "water_heater"}
"""The platforms Hearth uses, all in core const.py SUPPORTED_COMPONENTS."""
# developers.home-assistant.io, "Entity": EntityCategory; core mqtt sensor.py and
# binary_sensor.py refuse `config` for read-only entities (validate_sensor_entity_category)
ENTITY_CATEGORIES = {"config", "diagnostic"}
READ_ONLY_PLATFORMS = {"sensor", "binary_sensor"}
# developers.home-assistant.io, "Sensor entity": state classes and the units each device class
# takes (the ones Hearth uses); `enum` has options and neither unit nor state class
STATE_CLASSES = {"measurement", "total", "total_increasing"}
SENSOR_UNITS = {"power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
                "temperature": {"°C", "°F", "K"},
                "energy": {"Wh", "kWh", "MWh", "GWh", "TWh", "mWh", "J", "kJ", "MJ", "GJ",
                           "cal", "kcal", "Mcal", "Gcal"},
                "volume_flow_rate": {"m³/h", "m³/min", "m³/s", "ft³/min", "L/h", "L/min",
                                     "L/s", "gal/min", "mL/s"}}
# home-assistant.io/docs/energy/electricity-grid and sensor docs: the Energy dashboard takes
# an energy sensor with state_class total or total_increasing; Hearth's counters only rise
# (its totals never go lower), so it says total_increasing, in Wh or kWh
ENERGY_STATE_CLASS = "total_increasing"
ENERGY_UNITS = {"Wh", "kWh"}
BINARY_SENSOR_CLASSES = {"battery", "battery_charging", "carbon_monoxide", "cold",
                         "connectivity", "door", "garage_door", "gas", "heat", "light", "lock",
                         "moisture", "motion", "moving", "occupancy", "opening", "plug",
                         "power", "presence", "problem", "running", "safety", "smoke", "sound",
                         "tamper", "update", "vibration", "window"}
# core water_heater.py: the MQTT water heater's `modes` default to (and docs: must be a subset
# of) HA's operation modes; precision one of the three; temperature_unit C or F
WATER_HEATER_MODES = {"eco", "electric", "gas", "heat_pump", "high_demand", "performance",
                      "off"}
WATER_HEATER_PRECISIONS = {0.1, 0.5, 1.0}
# core sensor.py / binary_sensor.py: state_topic required; select.py: command_topic and
# options required; number.py: command_topic required (a topic may come from the device level:
# discovery copies the shared options state_topic/command_topic/availability into components)
REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",),
            "update": ("state_topic",),
            "select": ("command_topic", "options"), "number": ("command_topic",)}
SHARED_OPTIONS = {"state_topic", "command_topic"} | AVAILABILITY_KEYS


def expanded(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its abbreviations replaced as core discovery.py does: the top level,
    origin, device and availability entries, and each component."""
    def expand(data: Any, table: dict[str, str]) -> Any:
        if not isinstance(data, dict):
            return data
        return {table.get(key, key): value for key, value in data.items()}

    result = expand(payload, ABBREVIATIONS)
    if "origin" in result:
        result["origin"] = expand(result["origin"], ORIGIN_ABBREVIATIONS)
    if "device" in result:
        result["device"] = expand(result["device"], DEVICE_ABBREVIATIONS)
    if isinstance(result.get("availability"), list):
        result["availability"] = [expand(a, ABBREVIATIONS) for a in result["availability"]]
    if isinstance(result.get("components"), dict):
        result["components"] = {key: expand(component, ABBREVIATIONS)
                                for key, component in result["components"].items()}
    return result


def problems(topic: str, raw: bytes) -> list[str]:
    """Every documented rule the retained message (`raw` as read off the wire) breaks."""
    found = []
    if not TOPIC_RULE.fullmatch(topic):
        found.append(f"topic {topic!r} is not homeassistant/device/<[a-zA-Z0-9_-]+>/config")
    try:
        payload = json.loads(raw.decode("utf-8"))  # core: json_loads_object
    except (UnicodeDecodeError, ValueError) as error:
        return found + [f"payload is not JSON ({error})"]
    if not isinstance(payload, dict):
        return found + ["payload is not a JSON object"]
    payload = expanded(payload)
    unknown = sorted(set(payload) - TOP_LEVEL_KEYS)
    if unknown:
        found.append(f"unknown top-level keys {unknown}: Home Assistant rejects the message")
    found += _device_problems(payload.get("device"))
    origin = payload.get("origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("name"), str):
        found.append("origin with a name is required")
    elif set(origin) - ORIGIN_KEYS:
        found.append(f"origin: unknown keys {sorted(set(origin) - ORIGIN_KEYS)}")
    if "availability" in payload and "availability_topic" in payload:
        found.append("availability and availability_topic are exclusive")
    components = payload.get("components")
    if not isinstance(components, dict) or not components:
        return found + ["components must map component ids to their configs"]
    shared = {key: payload[key] for key in SHARED_OPTIONS if key in payload}
    for key, component in components.items():
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", key):
            found.append(f"components.{key}: the id must match [a-zA-Z0-9_-]+")
        if not isinstance(component, dict):
            found.append(f"components.{key}: not an object")
            continue
        found += [f"components.{key}: {problem}"
                  for problem in _component_problems({**shared, **component})]
    return found


def _device_problems(device: Any) -> list[str]:
    if not isinstance(device, dict):
        return ["device is required"]
    found = []
    if set(device) - DEVICE_KEYS:
        found.append(f"device: unknown keys {sorted(set(device) - DEVICE_KEYS)}")
    if not (device.get("identifiers") or device.get("connections")):
        found.append("device needs identifiers or connections")  # schemas.py
    for key in DEVICE_KEYS - {"identifiers", "connections"}:
        if key in device and not isinstance(device[key], str):
            found.append(f"device.{key} must be a string")
    return found


def _component_problems(component: dict[str, Any]) -> list[str]:
    found = []
    platform = component.get("platform")
    if platform not in PLATFORMS:
        return [f"platform (p) {platform!r} is missing or not one of {sorted(PLATFORMS)}"]
    if not component.get("unique_id"):
        found.append("unique_id is required in a device discovery")  # docs
    if not (component.get("availability_topic") or component.get("availability")):
        found.append("no availability: Home Assistant would show it available when it is not")
    found += [f"{platform} needs {key}" for key in REQUIRED.get(platform, ())
              if not component.get(key)]
    category = component.get("entity_category")
    if category is not None and (category not in ENTITY_CATEGORIES or (
            category == "config" and platform in READ_ONLY_PLATFORMS)):
        found.append(f"entity_category {category!r} is not allowed for a {platform}")
    if not isinstance(component.get("enabled_by_default", True), bool):
        found.append("enabled_by_default must be true or false")
    check = {"sensor": _sensor_problems, "binary_sensor": _binary_sensor_problems,
             "select": _select_problems, "number": _number_problems,
             "update": _update_problems, "water_heater": _water_heater_problems}[platform]
    return found + check(component)


def _sensor_problems(component: dict[str, Any]) -> list[str]:
    device_class = component.get("device_class")
    unit = component.get("unit_of_measurement")
    state_class = component.get("state_class")
    found = []
    if state_class is not None and state_class not in STATE_CLASSES:
        found.append(f"state_class {state_class!r}")
    if device_class == "enum":
        if unit is not None or state_class is not None:
            found.append("an enum sensor takes neither unit nor state_class")
        options = component.get("options")
        if not isinstance(options, list) or not options:
            found.append("an enum sensor needs its options")
    elif device_class is not None:
        if device_class not in SENSOR_UNITS:
            found.append(f"device_class {device_class!r} is not one Hearth's checker knows")
        elif unit not in SENSOR_UNITS[device_class]:
            found.append(f"unit {unit!r} does not fit device_class {device_class}")
    if device_class == "energy" and (state_class != ENERGY_STATE_CLASS
                                     or unit not in ENERGY_UNITS):
        found.append(f"energy for the Energy dashboard: state_class {ENERGY_STATE_CLASS}, "
                     f"unit Wh or kWh (got {state_class!r}, {unit!r})")
    return found


def _binary_sensor_problems(component: dict[str, Any]) -> list[str]:
    device_class = component.get("device_class")
    if device_class is not None and device_class not in BINARY_SENSOR_CLASSES:
        return [f"device_class {device_class!r}"]
    return []


def _select_problems(component: dict[str, Any]) -> list[str]:
    options = component.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        return ["options must be a list of strings"]
    return []


def _number_problems(component: dict[str, Any]) -> list[str]:
    low, high = component.get("min", 1.0), component.get("max", 100.0)  # core number.py
    return [] if low < high else [f"min {low} must be below max {high}"]


# core components/update/const.py UpdateDeviceClass; core mqtt/update.py: `payload_install`
# only with a `command_topic` (INSTALL is offered when command_topic is set)
UPDATE_DEVICE_CLASSES = {"firmware"}
# core mqtt/update.py MQTT_JSON_UPDATE_SCHEMA: what a state template may render, as JSON; a
# plain vol.Schema, so an unknown key or a null in a string drops the whole message
UPDATE_STATE_STRINGS = {"installed_version", "latest_version", "title", "release_summary",
                        "release_url", "entity_picture"}


def _update_problems(component: dict[str, Any]) -> list[str]:
    found = []
    device_class = component.get("device_class")
    if device_class is not None and device_class not in UPDATE_DEVICE_CLASSES:
        found.append(f"device_class {device_class!r}")
    if "payload_install" in component and not component.get("command_topic"):
        found.append("payload_install without a command_topic installs nothing")
    return found


def update_state_problems(rendered: dict[str, Any]) -> list[str]:
    """What MQTT_JSON_UPDATE_SCHEMA refuses in an update entity's rendered state."""
    found = [f"unknown key {key!r}" for key in sorted(set(rendered) - UPDATE_STATE_STRINGS
                                                       - {"in_progress", "update_percentage"})]
    found += [f"{key} must be a string (got {rendered[key]!r})"
              for key in sorted(UPDATE_STATE_STRINGS & set(rendered))
              if not isinstance(rendered[key], str)]
    if not isinstance(rendered.get("in_progress", False), bool):
        found.append("in_progress must be true or false")
    percentage = rendered.get("update_percentage")
    if percentage is not None and (isinstance(percentage, bool) or not isinstance(
            percentage, (int, float)) or not 0 <= percentage <= 100):
        found.append(f"update_percentage must be null or 0-100 (got {percentage!r})")
    return found


def _water_heater_problems(component: dict[str, Any]) -> list[str]:
    found = []
    modes = component.get("modes", sorted(WATER_HEATER_MODES))
    if not isinstance(modes, list) or not set(modes) <= WATER_HEATER_MODES:
        found.append(f"modes {modes!r} must be among {sorted(WATER_HEATER_MODES)}")
    if component.get("temperature_unit", "C") not in ("C", "F"):
        found.append("temperature_unit must be C or F")
    if component.get("precision", 0.1) not in WATER_HEATER_PRECISIONS:
        found.append("precision must be 0.1, 0.5 or 1.0")
    if component.get("min_temp", 0.0) >= component.get("max_temp", 1000.0):
        found.append("min_temp must be below max_temp")
    if component.get("mode_command_topic") and not component.get("modes"):
        found.append("a mode_command_topic without modes offers HA's whole default list")
    return found


def problems_across(messages: dict[str, bytes]) -> list[str]:
    """The rules between messages: unique_id unique across every entity (docs: "unique_id")
    and a `via_device` naming a device that is discovered too."""
    found = []
    seen: dict[str, str] = {}
    identifiers = set()
    vias = []
    for topic, raw in messages.items():
        payload = expanded(json.loads(raw))
        device = payload.get("device", {})
        identifiers.update(device.get("identifiers", []))
        if "via_device" in device:
            vias.append((topic, device["via_device"]))
        for component in payload.get("components", {}).values():
            uid = component.get("unique_id")
            if uid in seen:
                found.append(f"unique_id {uid!r} in {topic} and {seen[uid]}")
            seen[uid] = topic
    found += [f"{topic}: via_device {via!r} is no discovered device"
              for topic, via in vias if via not in identifiers]
    return found
