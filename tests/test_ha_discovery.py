"""Home Assistant discovery payloads checked against the documented device-discovery schema
(home-assistant.io/integrations/mqtt, "Device discovery payload"): required `dev` and `o`,
`cmps` with a platform `p` and a `unique_id` each, unique ids across devices, valid device and
state classes and units that fit their device class."""

import json
import re

import pytest

from agent.ha_discovery import leader_discovery, site_discovery

PLATFORMS = {"sensor", "binary_sensor", "number"}
SENSOR_UNITS = {"power": {"W", "kW"}, "temperature": {"°C", "°F", "K"},
                "energy": {"Wh", "kWh", "MWh"}, "enum": {None}, None: None}
BINARY_CLASSES = {None, "problem", "running", "heat", "power", "safety"}
NUMBER_CLASSES = {None, "temperature", "power"}
STATE_CLASSES = {None, "measurement", "total", "total_increasing"}
ID_RULE = r"[a-zA-Z0-9_-]+"


def check(topic: str, payload: dict) -> list[str]:
    """Every way `payload` breaks the schema; empty when it is good."""
    problems = []
    match = re.fullmatch(rf"homeassistant/device/({ID_RULE})/config", topic)
    if not match:
        problems.append(f"topic {topic!r} is not homeassistant/device/<id>/config")
    device = payload.get("dev") or payload.get("device")
    if not isinstance(device, dict) or not (device.get("ids") or device.get("identifiers")):
        problems.append("dev with ids is required")
    origin = payload.get("o") or payload.get("origin")
    if not isinstance(origin, dict) or not origin.get("name"):
        problems.append("o with name is required")
    components = payload.get("cmps") or payload.get("components")
    if not isinstance(components, dict) or not components:
        problems.append("cmps must map component ids to configs")
        return problems
    for key, component in components.items():
        where = f"cmps.{key}"
        if not re.fullmatch(ID_RULE, key):
            problems.append(f"{where}: component id must match {ID_RULE}")
        platform = component.get("p") or component.get("platform")
        if platform not in PLATFORMS:
            problems.append(f"{where}: platform {platform!r}")
        if not component.get("unique_id"):
            problems.append(f"{where}: unique_id required")
        device_class = component.get("device_class")
        unit = component.get("unit_of_measurement")
        state_class = component.get("state_class")
        if state_class not in STATE_CLASSES:
            problems.append(f"{where}: state_class {state_class!r}")
        if platform == "sensor":
            if device_class not in SENSOR_UNITS:
                problems.append(f"{where}: device_class {device_class!r}")
            elif SENSOR_UNITS[device_class] is not None and unit not in SENSOR_UNITS[
                    device_class]:
                problems.append(f"{where}: unit {unit!r} does not fit {device_class}")
            if device_class == "energy" and state_class not in ("total", "total_increasing"):
                problems.append(f"{where}: energy needs state_class total or total_increasing")
            if device_class == "enum" and (state_class or unit or not component.get("options")):
                problems.append(f"{where}: enum needs options and no unit or state_class")
        if platform == "binary_sensor" and device_class not in BINARY_CLASSES:
            problems.append(f"{where}: device_class {device_class!r}")
        if platform == "number":
            if device_class not in NUMBER_CLASSES:
                problems.append(f"{where}: device_class {device_class!r}")
            if not component.get("command_topic") and not payload.get("command_topic"):
                problems.append(f"{where}: a number needs a command_topic")
            if not component.get("min", 0) < component.get("max", 100):
                problems.append(f"{where}: min must be below max")
        if not (component.get("state_topic") or payload.get("state_topic")):
            problems.append(f"{where}: no state_topic")
    return problems


def all_payloads():
    return [leader_discovery("school-7", "m1"), leader_discovery("school-7", "m2"),
            site_discovery("school-7", 20.0, 75.0)]


@pytest.mark.parametrize("topic,payload", all_payloads())
def test_payloads_follow_the_schema(topic, payload):
    assert check(topic, payload) == []
    json.dumps(payload, allow_nan=False)


def test_unique_ids_are_unique_across_devices():
    ids = [c["unique_id"] for _, payload in all_payloads() for c in payload["cmps"].values()]
    assert len(ids) == len(set(ids))


def test_energy_is_kwh_total_increasing_heat_and_electricity_apart():
    for _, payload in all_payloads():
        energy = {k: c for k, c in payload["cmps"].items() if c.get("device_class") == "energy"}
        assert set(energy) == {"energy_electric", "energy_heat"}
        assert {c["unit_of_measurement"] for c in energy.values()} == {"kWh"}
        assert {c["state_class"] for c in energy.values()} == {"total_increasing"}


def test_site_target_is_a_number_with_a_command_topic():
    _, payload = site_discovery("school-7", 20.0, 75.0)
    target = payload["cmps"]["target"]
    assert target["p"] == "number"
    assert target["command_topic"] == "hearth/v1/school-7/site/target/set"


@pytest.mark.parametrize("breakage", [
    lambda p: p.pop("o"),
    lambda p: p.pop("dev"),
    lambda p: p["cmps"]["power"].pop("p"),
    lambda p: p["cmps"]["power"].update(unit_of_measurement="°C"),
    lambda p: p["cmps"]["energy_heat"].update(state_class="measurement"),
    lambda p: p["cmps"]["power"].update(device_class="watts"),
])
def test_the_check_catches_broken_payloads(breakage):
    topic, payload = leader_discovery("school-7", "m1")
    breakage(payload)
    assert check(topic, payload) != []
