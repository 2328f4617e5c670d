"""Home Assistant discovery as Home Assistant reads it (issue 14, Build item 2): the site, its
modules and their boards as devices whose retained messages, read off a real Mosquitto with a
plain MQTT client, pass Home Assistant's documented device-discovery rules (tests/ha_rules.py),
are the same bytes after a restart, and come again when Home Assistant says `online`."""

import json
import threading
import time
import uuid
from pathlib import Path

import jinja2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import ha_rules
from agent.ha_announce import DiscoveryAnnouncer
from agent.ha_discovery import (HA_STATUS_TOPIC, board_discovery, leader_discovery,
                                site_discovery)
from agent.leader.role import LeaderRole, LeaderSettings, ModuleReadings, module_topics
from agent.mqtt.link import Link, LinkSettings, Message
from agent.mqtt.outbox import Outbox
from agent.mqtt.topics import BoardTopics
from agent.persist import StateStore

SITE = "school-7"


def all_messages() -> dict[str, bytes]:
    return dict([site_discovery(SITE, 20.0, 75.0), leader_discovery(SITE, "m1"),
                 leader_discovery(SITE, "m-2"), board_discovery(SITE, "m1", "b01"),
                 board_discovery(SITE, "m-2", "b-02")])


def components(topic_and_payload) -> dict:
    return ha_rules.expanded(json.loads(topic_and_payload[1]))["components"]


@pytest.mark.parametrize("topic", sorted(all_messages()))
def test_every_device_follows_home_assistants_rules(topic):
    assert ha_rules.problems(topic, all_messages()[topic]) == []


def test_the_devices_hang_together():
    assert ha_rules.problems_across(all_messages()) == []
    assert sorted(all_messages()) == [
        "homeassistant/device/hearth_school_7/config",
        "homeassistant/device/hearth_school_7_m1/config",
        "homeassistant/device/hearth_school_7_m1_b01/config",
        "homeassistant/device/hearth_school_7_m_2/config",
        "homeassistant/device/hearth_school_7_m_2_b_02/config"]


def test_payloads_are_plain_and_the_same_bytes_every_time():
    topic, payload = leader_discovery(SITE, "m1")
    assert leader_discovery(SITE, "m1") == (topic, payload)
    data = json.loads(payload)
    assert not {"v", "boot", "seq", "ts", "hist"} & set(data)
    assert list(data) == sorted(data)


def test_the_tank_is_a_water_heater_on_the_sites_topics():
    tank = components(site_discovery(SITE, 20.0, 75.0))["tank"]
    base = f"hearth/v1/{SITE}/site"
    assert tank["platform"] == "water_heater"
    assert tank["temperature_command_topic"] == f"{base}/target/set"
    assert tank["current_temperature_topic"] == tank["temperature_state_topic"] == f"{base}/state"
    assert "loop_c" in tank["current_temperature_template"]
    assert "target_c" in tank["temperature_state_template"]
    assert (tank["min_temp"], tank["max_temp"]) == (20.0, 75.0)
    # on/off through the site's mode: off is off, any other mode is on; on sends auto
    assert tank["mode_command_topic"] == tank["power_command_topic"] == f"{base}/mode/set"
    assert set(tank["modes"]) == {"off", "electric"}


def render(template: str, **variables) -> str:
    """Home Assistant renders these with Jinja (the same engine, without HA's extras)."""
    return jinja2.Environment().from_string(template).render(**variables).strip()


@pytest.mark.parametrize("site_mode,tank_mode", [("off", "off"), ("auto", "electric"),
                                                 ("comfort", "electric"), ("eco", "electric")])
def test_the_tanks_mode_follows_the_sites(site_mode, tank_mode):
    tank = components(site_discovery(SITE, 20.0, 75.0))["tank"]
    assert render(tank["mode_state_template"], value_json={"mode": site_mode}) == tank_mode


@pytest.mark.parametrize("key,value,sent", [("mode_command_template", "off", "off"),
                                            ("mode_command_template", "electric", "auto"),
                                            ("power_command_template", "ON", "auto"),
                                            ("power_command_template", "OFF", "off")])
def test_turning_the_tank_on_or_off_sends_a_site_mode(key, value, sent):
    tank = components(site_discovery(SITE, 20.0, 75.0))["tank"]
    assert render(tank[key], value=value) == sent


def test_the_sites_mode_is_a_select_of_its_four_modes():
    mode = components(site_discovery(SITE, 20.0, 75.0))["mode"]
    assert mode["platform"] == "select"
    assert mode["options"] == ["auto", "comfort", "eco", "off"]
    assert mode["command_topic"] == f"hearth/v1/{SITE}/site/mode/set"


def test_energy_sensors_are_for_the_energy_dashboard_on_site_and_modules():
    for message in (site_discovery(SITE, 20.0, 75.0), leader_discovery(SITE, "m1")):
        energy = {key: c for key, c in components(message).items()
                  if c.get("device_class") == "energy"}
        assert set(energy) == {"energy_electric", "energy_heat"}
        for component in energy.values():
            assert (component["state_class"], component["unit_of_measurement"]) == (
                "total_increasing", "kWh")
            assert render(component["value_template"],
                          value_json={"energy_electric_wh": 1234.5,
                                      "energy_heat_wh": 1234.5}) == "1.2345"


def test_boards_are_diagnostic_disabled_and_hang_under_their_module():
    topic, payload = board_discovery(SITE, "m1", "b01")
    data = ha_rules.expanded(json.loads(payload))
    assert data["device"]["via_device"] == "hearth_school_7_m1"
    assert data["state_topic"] == BoardTopics(SITE, "m1", "b01").state
    assert data["availability_topic"] == BoardTopics(SITE, "m1", "b01").status
    assert set(data["components"]) == {"mode", "power", "soc", "oil", "update"}
    for component in data["components"].values():
        assert component["entity_category"] == "diagnostic"
        assert component["enabled_by_default"] is False


def test_modules_count_their_boards_by_mode():
    module = components(leader_discovery(SITE, "m1"))
    state = {"boards_by_mode": {"NORMAL": 3, "SAFE": 1}, "boards_online": 4,
             "boards": {"a": {}, "b": {}, "c": {}, "d": {}, "e": {}}}
    assert render(module["boards_normal"]["value_template"], value_json=state) == "3"
    assert render(module["boards_fault"]["value_template"], value_json=state) == "0"
    assert render(module["boards_offline"]["value_template"], value_json=state) == "1"


# --- the checker itself catches what Home Assistant would refuse

def broken(change) -> bytes:
    data = json.loads(leader_discovery(SITE, "m1")[1])
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize("change,expected", [
    (lambda d: d.update(v=1, boot="x", seq=3, ts=1.0), "unknown top-level keys"),
    (lambda d: d.pop("o"), "origin"),
    (lambda d: d.pop("dev"), "device"),
    (lambda d: d["dev"].update(colour="red"), "device: unknown keys"),
    (lambda d: d["cmps"]["power"].pop("p"), "platform"),
    (lambda d: d["cmps"]["power"].pop("unique_id"), "unique_id"),
    (lambda d: d.pop("availability_topic"), "no availability"),
    (lambda d: d.pop("state_topic"), "sensor needs state_topic"),
    (lambda d: d["cmps"]["power"].update(unit_of_measurement="°C"), "does not fit"),
    (lambda d: d["cmps"]["energy_heat"].update(state_class="measurement"), "Energy dashboard"),
    (lambda d: d["cmps"]["energy_heat"].update(unit_of_measurement="MJ"), "Energy dashboard"),
    (lambda d: d["cmps"]["power"].update(entity_category="config"), "entity_category"),
    (lambda d: d["cmps"]["power"].update(entity_category="hidden"), "entity_category"),
    (lambda d: d["cmps"]["interlock"].update(device_class="alarm"), "device_class"),
])
def test_the_checker_refuses_what_home_assistant_refuses(change, expected):
    found = ha_rules.problems("homeassistant/device/hearth_school_7_m1/config", broken(change))
    assert any(expected in problem for problem in found), found


def test_the_checker_knows_the_water_heaters_modes_and_the_topic_rule():
    topic, payload = site_discovery(SITE, 20.0, 75.0)
    data = json.loads(payload)
    data["cmps"]["tank"]["modes"] = ["off", "on"]
    assert any("modes" in p for p in ha_rules.problems(topic, json.dumps(data).encode()))
    assert ha_rules.problems("homeassistant/device/a b/config", payload)
    orphan = dict([board_discovery(SITE, "m9", "b01")])
    assert "no discovered device" in ha_rules.problems_across(orphan)[0]


# --- the announcer: held, re-sent when Home Assistant comes online

class AssertingLink:
    def __init__(self):
        self.asserted: list[tuple[str, bytes]] = []
        self.handlers = {}

    def assert_retained(self, topic, payload):
        self.asserted.append((topic, payload))

    def subscribe(self, pattern, handler):
        self.handlers[pattern] = handler


def test_the_announcer_sends_each_device_once_and_all_again_when_ha_is_online():
    link = AssertingLink()
    announcer = DiscoveryAnnouncer(link).start()
    for message in (leader_discovery(SITE, "m1"), board_discovery(SITE, "m1", "b01"),
                    leader_discovery(SITE, "m1")):
        announcer.announce(*message)
    assert len(link.asserted) == 2
    link.handlers[HA_STATUS_TOPIC](Message(HA_STATUS_TOPIC, b"offline"))
    link.handlers[HA_STATUS_TOPIC](Message(HA_STATUS_TOPIC, b"\xff"))
    assert len(link.asserted) == 2
    link.handlers[HA_STATUS_TOPIC](Message(HA_STATUS_TOPIC, b"online"))
    assert link.asserted[2:] == link.asserted[:2]


# --- off the wire: a real Mosquitto, the leader and the site's discovery, a plain client

class Watcher:
    """A plain paho client on homeassistant/#, as Home Assistant subscribes."""

    def __init__(self, port: int):
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("homeassistant/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), message.retain))

    def discovery(self, since: int = 0) -> dict[str, bytes]:
        with self.lock:
            return {topic: payload for topic, payload, _ in self.messages[since:]
                    if topic.endswith("/config")}

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """The leader of m1 (LeaderRole on a Link, as `hearth leader` runs it) and the site's
    discovery (a Link and a DiscoveryAnnouncer, as `hearth site` sends it), polled in a thread."""

    def __init__(self, port: int, directory: Path):
        def link(name: str, status: str) -> Link:
            return Link(LinkSettings("127.0.0.1", port), client_id=f"hearth-{name}",
                        outbox=Outbox(directory / f"{name}-outbox"), boot=str(uuid.uuid4()),
                        status_topic=status)

        self.leader_link = link("leader", module_topics(SITE, "m1")["status"])
        self.role = LeaderRole(SITE, "m1", self.leader_link, time.monotonic,
                               LeaderSettings(period_s=0.5), lambda: ModuleReadings(),
                               StateStore(directory / "state"),
                               discovery=DiscoveryAnnouncer(self.leader_link))
        self.role.start()
        self.leader_link.start()
        self.site_link = link("site", f"hearth/v1/{SITE}/site/status")
        DiscoveryAnnouncer(self.site_link).start().announce(
            *site_discovery(SITE, 20.0, 75.0))
        self.site_link.start()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.role.run, args=(self.stop.is_set,)),
                        threading.Thread(target=self._poll_site)]
        for thread in self.threads:
            thread.start()

    def _poll_site(self) -> None:
        while not self.stop.is_set():
            self.site_link.poll(timeout_s=0.05)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.role.close()
        self.leader_link.close()
        self.site_link.close()


EXPECTED = {"homeassistant/device/hearth_school_7/config",
            "homeassistant/device/hearth_school_7_m1/config",
            "homeassistant/device/hearth_school_7_m1_b01/config"}


def test_discovery_off_the_wire_passes_the_rules_survives_a_restart_and_answers_ha(
        mosquitto, tmp_path):
    broker = mosquitto()
    board = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hearth-school-7-m1-b01")
    board.connect("127.0.0.1", broker.port)
    board.loop_start()
    board.publish(BoardTopics(SITE, "m1", "b01").status, b"online", qos=1,
                  retain=True).wait_for_publish(5)
    running = Running(broker.port, tmp_path)
    watcher = None
    try:
        first = Watcher(broker.port)
        wait_for(lambda: set(first.discovery()) >= EXPECTED, 15, "the three devices")
        seen = first.discovery()
        first.close()
        assert set(seen) == EXPECTED
        assert [p for topic, raw in seen.items() for p in ha_rules.problems(topic, raw)] == []
        assert ha_rules.problems_across(seen) == []

        running.close()  # both roles stop and start again
        running = Running(broker.port, tmp_path)
        watcher = Watcher(broker.port)
        wait_for(lambda: set(watcher.discovery()) >= EXPECTED, 15, "retained discovery")
        wait_for(lambda: running.role.snapshot, 10, "the restarted leader's first period")
        time.sleep(0.5)  # what the restarted roles sent has arrived
        assert watcher.discovery() == seen  # the same bytes: nothing for HA to redo

        before = watcher.count()
        ha = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="homeassistant")
        ha.connect("127.0.0.1", broker.port)
        ha.loop_start()
        ha.publish(HA_STATUS_TOPIC, b"online", qos=1).wait_for_publish(5)
        wait_for(lambda: set(watcher.discovery(before)) >= EXPECTED, 10,
                 "discovery again after homeassistant/status online")
        assert watcher.discovery(before) == seen
        ha.loop_stop()
        ha.disconnect()
    finally:
        running.close()
        if watcher is not None:
            watcher.close()
        board.loop_stop()
        board.disconnect()
