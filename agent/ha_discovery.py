"""Home Assistant MQTT device discovery: the site, each module and each board as HA devices,
in HA's own format, as the bytes that go on the wire.

Why device-based discovery (`homeassistant/device/<id>/config`, keys `dev`, `o`, `cmps`, `p`):
one retained message per device, with the device, origin and availability said once. HA
rejects a device discovery with any top-level key its schema does not name, so these are plain
JSON, never Hearth's envelope; and HA re-processes a discovery whose bytes changed, so they hold
no time or boot id and their keys are sorted: the same site gives the same bytes on every
start. The entities read Hearth's own `site/state`, `leader/state` and board `state` with value
templates, so there is no second set of topics to keep in step. Energy is in kWh,
`total_increasing`, so the Energy dashboard takes it (the Wh counters on the wire are divided in
the template); the totals behind it never go lower (agent/leader/ledger.py). A module's 64
boards would flood a dashboard, so board entities are diagnostic and disabled until a user
enables them. Rules and their sources: tests/ha_rules.py.
"""

import json
from typing import Any

from agent import __version__
from agent.mqtt.topics import LEADER, ROOT, BoardTopics
from agent.safety.supervisor import Mode

DISCOVERY_PREFIX = "homeassistant"
HA_STATUS_TOPIC = f"{DISCOVERY_PREFIX}/status"
"""Home Assistant's birth and last will (`online` / `offline`)."""
SITE_MODES = ("auto", "comfort", "eco", "off")
"""The site's modes as `site/mode/set` takes them and `site/state` reports them."""
TANK_MODES = ("off", "electric")
"""HA water heater modes for the site's tank: `off` is the site's off, `electric` any other
mode (HA takes only its own list: eco, electric, gas, heat_pump, high_demand, performance,
off; its `eco` is not the site's eco, so the site's modes are offered on a select)."""
ORIGIN = {"name": "hearth", "sw": __version__}
UPDATE_TEMPLATE = (
    "{{ dict(installed_version=value_json.installed or 'unknown', "
    "latest_version=value_json.target or value_json.installed or 'unknown', "
    "in_progress=value_json.state in ('installing', 'trial'), "
    "update_percentage=value_json.progress_pct if value_json.state == 'installing' else none)"
    " | tojson }}")
"""A board's `update` topic (docs/mqtt.md) as Home Assistant's MQTT update entity reads a
rendered JSON state: strings where it wants strings (a null would drop the message), the
target as the latest version, in progress while installing or on trial. It offers no install:
updates go out through `hearth update`, a few boards of a module at a time."""


def device_id(site: str, *parts: str) -> str:
    """`hearth_<site>[_<module>[_<board>]]` with `-` as `_`."""
    return "_".join(("hearth", site) + parts).replace("-", "_")


def discovery_topic(device: str) -> str:
    return f"{DISCOVERY_PREFIX}/device/{device}/config"


def encoded(payload: dict[str, Any]) -> bytes:
    """The wire form: sorted keys and no spaces, so equal payloads are equal bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def _sensor(unique_id: str, name: str, field: str, unit: str | None, device_class: str | None,
            state_class: str | None = "measurement", precision: int | None = None,
            template: str | None = None) -> dict[str, Any]:
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
    return _sensor(unique_id, name, field, "kWh", "energy", "total_increasing", 3,
                   "{{ (value_json.%s / 1000) | round(4) }}" % field)


def _power_and_energy(uid: str) -> dict[str, dict[str, Any]]:
    """What the site and every module report alike."""
    return {
        "power": _sensor(uid + "power", "Electric power", "power_w", "W", "power", precision=1),
        "heat": _sensor(uid + "heat", "Heat to water", "heat_w", "W", "power", precision=0),
        "energy_electric": _energy(uid + "energy_electric", "Electricity used",
                                   "energy_electric_wh"),
        "energy_heat": _energy(uid + "energy_heat", "Heat delivered", "energy_heat_wh"),
    }


def site_discovery(site: str, target_min_c: float, target_max_c: float) -> tuple[str, bytes]:
    """(topic, payload) of the site: its tank as a water heater, its mode, totals, demand."""
    base = f"{ROOT}/{site}/site"
    ident = device_id(site)
    uid = ident + "_"
    components = {
        "tank": {
            "p": "water_heater", "unique_id": uid + "tank", "name": "Tank",
            "temperature_unit": "C", "precision": 0.5,
            "min_temp": target_min_c, "max_temp": target_max_c,
            "current_temperature_topic": f"{base}/state",
            "current_temperature_template": "{{ value_json.loop_c }}",
            "temperature_state_topic": f"{base}/state",
            "temperature_state_template": "{{ value_json.target_c }}",
            "temperature_command_topic": f"{base}/target/set",
            "modes": list(TANK_MODES),
            "mode_state_topic": f"{base}/state",
            "mode_state_template": "{{ 'off' if value_json.mode == 'off' else 'electric' }}",
            "mode_command_topic": f"{base}/mode/set",
            "mode_command_template": "{{ 'off' if value == 'off' else 'auto' }}",
            "power_command_topic": f"{base}/mode/set",
            "power_command_template": "{{ 'auto' if value == 'ON' else 'off' }}"},
        "mode": {"p": "select", "unique_id": uid + "mode", "name": "Mode",
                 "options": list(SITE_MODES), "command_topic": f"{base}/mode/set",
                 "value_template": "{{ value_json.mode }}"},
        **_power_and_energy(uid),
        "efficiency": _sensor(
            uid + "efficiency", "Recovery efficiency", "", "%", None, precision=1,
            template="{{ (100 * value_json.heat_w / value_json.power_w) | round(1) "
                     "if value_json.power_w and value_json.heat_w is not none else None }}"),
        "demand": _sensor(uid + "demand", "Heat demand", "demand_w", "W", "power",
                          precision=0),
        "demand_source": _sensor(uid + "demand_source", "Demand source", "demand_source",
                                 None, None, state_class=None),
        "loop": _sensor(uid + "loop", "Tank/loop temperature", "loop_c", "°C", "temperature",
                        precision=1),
    }
    device = {"ids": [ident], "name": f"Hearth {site}", "mf": "Hearth", "mdl": "site",
              "sw": __version__}
    return _device_config(ident, device, components, f"{base}/state", f"{base}/status")


def leader_discovery(site: str, module: str) -> tuple[str, bytes]:
    """(topic, payload) of one module, as its leader reports it on `leader/state`."""
    base = f"{ROOT}/{site}/{module}/{LEADER}"
    ident = device_id(site, module)
    uid = ident + "_"
    components = {
        **_power_and_energy(uid),
        "budget": _sensor(uid + "budget", "Heat budget", "budget_w", "W", "power",
                          precision=0),
        "water_in": _sensor(uid + "water_in", "Water in", "water_in_c", "°C", "temperature",
                            precision=1),
        "water_out": _sensor(uid + "water_out", "Water out", "water_out_c", "°C",
                             "temperature", precision=1),
        "flow": _sensor(uid + "flow", "Water flow", "flow_l_per_min", "L/min",
                        "volume_flow_rate", precision=1),
        "oil": _sensor(uid + "oil", "Oil", "oil_c", "°C", "temperature", precision=1),
        "efficiency": _sensor(
            uid + "efficiency", "Recovery efficiency", "efficiency", "%", None, precision=1,
            template="{{ (value_json.efficiency * 100) | round(1) "
                     "if value_json.efficiency is not none else None }}"),
        "interlock": {"p": "binary_sensor", "unique_id": uid + "interlock",
                      "name": "Module interlock", "device_class": "problem",
                      "value_template": "{{ 'ON' if value_json.interlock.active else 'OFF' }}"},
        "boards_usable": _sensor(uid + "boards_usable", "Boards heating", "boards_usable",
                                 None, None),
        "boards_offline": _sensor(
            uid + "boards_offline", "Boards offline", "", None, None,
            template="{{ value_json.boards | length - value_json.boards_online }}"),
        **{f"boards_{mode.value.lower()}": _sensor(
            f"{uid}boards_{mode.value.lower()}", f"Boards {mode.value}", "", None, None,
            template="{{ value_json.boards_by_mode.%s | default(0) }}" % mode.value)
           for mode in Mode},
    }
    device = {"ids": [ident], "name": f"Hearth {site} {module}", "mf": "Hearth",
              "mdl": "module", "sw": __version__, "via_device": device_id(site)}
    return _device_config(ident, device, components, f"{base}/state", f"{base}/status")


def board_discovery(site: str, module: str, board: str) -> tuple[str, bytes]:
    """(topic, payload) of one board, as the board reports it on its own `state`: diagnostic
    and disabled by default."""
    topics = BoardTopics(site, module, board)
    ident = device_id(site, module, board)
    uid = ident + "_"
    components = {
        "mode": {"p": "sensor", "unique_id": uid + "mode", "name": "Mode",
                 "device_class": "enum", "options": [mode.value for mode in Mode],
                 "value_template": "{{ value_json.mode }}"},
        "power": _sensor(uid + "power", "Electric power", "power_w", "W", "power", precision=2),
        "soc": _sensor(uid + "soc", "SoC", "soc_c", "°C", "temperature", precision=1),
        "oil": _sensor(uid + "oil", "Oil", "oil_c", "°C", "temperature", precision=1),
        "update": {"p": "update", "unique_id": uid + "update", "name": "Software",
                   "device_class": "firmware", "state_topic": f"{topics.base}/update",
                   "value_template": UPDATE_TEMPLATE},
    }
    for component in components.values():
        component.update(entity_category="diagnostic", enabled_by_default=False)
    device = {"ids": [ident], "name": f"Hearth {site} {module} {board}", "mf": "Hearth",
              "mdl": "board", "via_device": device_id(site, module)}
    return _device_config(ident, device, components, topics.state, topics.status)


def _device_config(ident: str, device: dict, components: dict, state_topic: str,
                   status_topic: str) -> tuple[str, bytes]:
    """One device discovery: the device, its components, their shared topics."""
    payload = {
        "dev": device,
        "o": dict(ORIGIN),
        "cmps": components,
        "state_topic": state_topic,
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }
    return discovery_topic(ident), encoded(payload)
