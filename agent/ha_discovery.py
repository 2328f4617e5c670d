"""Home Assistant MQTT device discovery for the leader (one device per module) and the site.

Why device-based discovery (`homeassistant/device/<id>/config`, keys `dev`, `o`, `cmps`): one
retained message per device instead of one per entity, with the device, origin and availability
said once. The entities read Hearth's own `leader/state` and `site/state` with value templates,
so there is no second set of topics to keep in step. Energy is in kWh with `total_increasing`
(heat and electricity apart) so the Energy dashboard takes it; the Wh counters on the wire are
divided in the template. They go out retained through the Link like every Hearth message, so
they carry the envelope fields too: Home Assistant drops keys it does not know from discovery
payloads (home-assistant/core pull request 58390, since 2021.11).
"""

from typing import Any

from agent import __version__
from agent.leader.role import module_topics
from agent.site.role import site_topics

DISCOVERY_PREFIX = "homeassistant"
ORIGIN = {"name": "hearth", "sw": __version__}


def _sensor(unique_id: str, name: str, field: str, unit: str | None, device_class: str | None,
            state_class: str | None, template: str | None = None,
            precision: int | None = None) -> dict[str, Any]:
    component: dict[str, Any] = {
        "p": "sensor", "unique_id": unique_id, "name": name,
        "value_template": template or "{{ value_json.%s }}" % field}
    if unit is not None:
        component["unit_of_measurement"] = unit
    if device_class is not None:
        component["device_class"] = device_class
    if state_class is not None:
        component["state_class"] = state_class
    if precision is not None:
        component["suggested_display_precision"] = precision
    return component


def _energy(unique_id: str, name: str, field: str) -> dict[str, Any]:
    return _sensor(unique_id, name, field, "kWh", "energy", "total_increasing",
                   "{{ (value_json.%s / 1000) | round(4) }}" % field, 3)


def leader_discovery(site: str, module: str) -> tuple[str, dict[str, Any]]:
    """(topic, payload) for one module's leader."""
    device_id = f"hearth_{site}_{module}".replace("-", "_")
    topics = module_topics(site, module)
    uid = device_id + "_"
    components = {
        "power": _sensor(uid + "power", "Electric power", "power_w", "W", "power",
                         "measurement", precision=1),
        "heat": _sensor(uid + "heat", "Heat to water", "heat_w", "W", "power", "measurement",
                        precision=0),
        "budget": _sensor(uid + "budget", "Heat budget", "budget_w", "W", "power",
                          "measurement", precision=0),
        "water_in": _sensor(uid + "water_in", "Water in", "water_in_c", "°C", "temperature",
                            "measurement", precision=1),
        "water_out": _sensor(uid + "water_out", "Water out", "water_out_c", "°C",
                             "temperature", "measurement", precision=1),
        "oil": _sensor(uid + "oil", "Oil", "oil_c", "°C", "temperature", "measurement",
                       precision=1),
        "efficiency": _sensor(uid + "efficiency", "Recovery efficiency", "efficiency", "%",
                              None, "measurement",
                              "{{ (value_json.efficiency * 100) | round(1) "
                              "if value_json.efficiency is not none else none }}", 1),
        "energy_electric": _energy(uid + "energy_electric", "Electricity used",
                                   "energy_electric_wh"),
        "energy_heat": _energy(uid + "energy_heat", "Heat delivered", "energy_heat_wh"),
        "boards_usable": _sensor(uid + "boards_usable", "Boards heating", "boards_usable",
                                 None, None, "measurement"),
        "interlock": {"p": "binary_sensor", "unique_id": uid + "interlock",
                      "name": "Module interlock", "device_class": "problem",
                      "value_template": "{{ 'ON' if value_json.interlock.active else 'OFF' }}"},
    }
    device = {"ids": [device_id], "name": f"Hearth {site} {module}", "mf": "Hearth",
              "mdl": "module leader", "sw": __version__}
    return _device_config(device_id, device, components, topics)


def site_discovery(site: str, target_min_c: float, target_max_c: float) -> tuple[str, dict]:
    """(topic, payload) for the site: totals, demand, and the target as a `number`."""
    device_id = f"hearth_{site}".replace("-", "_")
    topics = site_topics(site)
    uid = device_id + "_"
    components = {
        "demand": _sensor(uid + "demand", "Heat demand", "demand_w", "W", "power",
                          "measurement", precision=0),
        "power": _sensor(uid + "power", "Electric power", "power_w", "W", "power",
                         "measurement", precision=1),
        "heat": _sensor(uid + "heat", "Heat to water", "heat_w", "W", "power", "measurement",
                        precision=0),
        "loop": _sensor(uid + "loop", "Tank/loop temperature", "loop_c", "°C", "temperature",
                        "measurement", precision=1),
        "energy_electric": _energy(uid + "energy_electric", "Electricity used",
                                   "energy_electric_wh"),
        "energy_heat": _energy(uid + "energy_heat", "Heat delivered", "energy_heat_wh"),
        "mode": {"p": "sensor", "unique_id": uid + "mode", "name": "Demand source",
                 "device_class": "enum", "options": ["external", "temperature", "none"],
                 "value_template": "{{ value_json.demand_source }}"},
        "target": {"p": "number", "unique_id": uid + "target", "name": "Target temperature",
                   "device_class": "temperature", "unit_of_measurement": "°C",
                   "min": target_min_c, "max": target_max_c, "step": 0.5, "mode": "box",
                   "command_topic": topics["target_set"],
                   "value_template": "{{ value_json.target_c }}"},
    }
    device = {"ids": [device_id], "name": f"Hearth {site}", "mf": "Hearth", "mdl": "site",
              "sw": __version__}
    return _device_config(device_id, device, components, topics)


def _device_config(device_id: str, device: dict, components: dict,
                   topics: dict) -> tuple[str, dict]:
    """One device-based discovery message: the device, its components, shared availability."""
    payload = {
        "dev": device,
        "o": dict(ORIGIN),
        "cmps": components,
        "state_topic": topics["state"],
        "availability_topic": topics["status"],
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }
    return f"{DISCOVERY_PREFIX}/device/{device_id}/config", payload
