"""A site deployed as docs/deployment.md says, end to end (issue 14): `hearth broker-config` for
two modules of three boards with a standby broker, both Mosquittos running the generated
configuration with TLS and accounts, and every role its own OS process with its own
credentials, as systemd starts them: the site, two leaders and six simulated boards.

What an operator and a homeowner would check: budgets reach both modules and every board;
Home Assistant's discovery, read off the wire, passes Home Assistant's rules; the site broker
killed, every role carries on through the standby (interlocks and discovery published again,
boards heating on their leader's setpoints); the site restarted, its energy totals are not lower
and its target is kept; each role's /metrics passes promtool.
"""

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import ha_rules
from test_broker_config import Mosquitto, free_port, login

SITE = "maple-school"
ROOT = f"hearth/v1/{SITE}"
MODULES = ("m1", "m-2")
BOARDS = ("b01", "b02", "b03")
HEATING_MODES = ("NORMAL", "LIMITED")
DEMAND_W = 24.0
"""Site demand in watts: about two thirds of the six simulated boards' capacity, so every board
gets a share."""

INVENTORY = f"""
site = "{SITE}"
broker = "localhost:{{port}}"
standby = "localhost:{{standby_port}}"
bind_address = "127.0.0.1"
tls = true
operators = ["homeassistant"]
""" + "".join(f'\n[[module]]\nname = "{module}"\n' for module in MODULES) + "".join(
    f'\n[[board]]\nmodule = "{module}"\nname = "{board}"\n'
    for module in MODULES for board in BOARDS) + "".join(
    f'\n[[leader]]\nmodule = "{module}"\nboard = "b01"\n' for module in MODULES)

BOARD_BASE = ('board_type = "oil-carrier"\n'
              '[[sensor]]\nname = "water_in"\nid = "28-0316a2795eff"\n'
              '[[sensor]]\nname = "water_out"\nid = "28-0316a27f1c2a"\n')
"""What a leader's or the site's board has in hearth.toml besides its role (the DS18B20 ids
its board type asks for; nothing on this machine reads them)."""


def role_mqtt(out: Path, account: str) -> str:
    """The [mqtt] section broker-config wrote for `account`, pointing at its files where the
    test keeps them instead of /etc/hearth/mqtt/<account>/."""
    text = (out / "clients" / account / "mqtt.toml").read_text()
    return text.replace(f"/etc/hearth/mqtt/{account}", str(out / "clients" / account))


class Wire:
    """Home Assistant's view: the operator account on one broker, TLS with its client
    certificate, recording every message with the time it arrived."""

    def __init__(self, out: Path, port: int, name: str):
        account = "operator.homeassistant"
        self.messages: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str, bytes, bool]] = []
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=account,
                                protocol=mqtt.MQTTv311)
        credentials = login(out, account)
        self.paho.username_pw_set(credentials["username"], credentials["password"])
        files = out / "clients" / account
        self.paho.tls_set(ca_certs=str(files / "ca.crt"), certfile=str(files / "client.crt"),
                          keyfile=str(files / "client.key"))
        self.paho.on_message = lambda c, u, m: self.messages.put(
            (time.monotonic(), m.topic, bytes(m.payload), bool(m.retain)))
        self.paho.on_connect = lambda c, u, flags, reason, p: c.subscribe(
            [(f"{ROOT}/#", 1), ("homeassistant/#", 1)])
        self.paho.connect("localhost", port, keepalive=10)
        self.paho.loop_start()
        self.name = name

    def publish(self, topic: str, payload: str | bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def pump(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.seen.append(self.messages.get_nowait())

    def wait_for(self, what: str, condition, timeout_s: float, step=None):
        """Wait until condition() is truthy (pumping messages), and return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} within {timeout_s:g} s; last topics "
                                     f"{[t for _, t, _, _ in self.seen[-10:]]}")
            if step is not None:
                step()
            time.sleep(0.1)

    def latest(self, topic: str, since_s: float = 0.0) -> dict | None:
        for at_s, seen_topic, payload, _ in reversed(self.seen):
            if seen_topic == topic and at_s >= since_s:
                return json.loads(payload)
        return None

    def arrivals(self, topic: str, since_s: float = 0.0) -> list[bytes]:
        return [payload for at_s, seen_topic, payload, _ in self.seen
                if seen_topic == topic and at_s >= since_s]

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class Roles:
    """The site's processes, each started as its unit starts it (`hearth <role> --config`),
    with its output kept in a log file for the failure message."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *arguments: str) -> None:
        log = (self.directory / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "agent", *arguments], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.directory)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, self.log(name)

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited: {self.log(name)}"

    def close(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)


@pytest.fixture
def deployed(tmp_path):
    port, standby_port = free_port(), free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=port, standby_port=standby_port))
    out = tmp_path / "out"
    generated = subprocess.run(
        [sys.executable, "-m", "agent", "broker-config", "--inventory", str(inventory),
         "--out", str(out), "--broker-etc", str(out / "broker"), "--standby-etc",
         str(out / "standby")], capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr
    primary = Mosquitto(out / "broker/mosquitto.conf", port, tmp_path / "primary").start()
    standby = Mosquitto(out / "standby/mosquitto.conf", standby_port,
                        tmp_path / "standby").start()
    roles = Roles(tmp_path)
    configs = tmp_path / "configs"
    configs.mkdir()
    metrics_ports = {}
    for module in MODULES:
        metrics_ports[module] = free_port()
        leader = configs / f"leader-{module}.toml"
        leader.write_text(BOARD_BASE + f'[identity]\nsite = "{SITE}"\nmodule = "{module}"\n'
                          f'board = "b01"\n' + role_mqtt(out, f"leader.{module}")
                          + f"[leader]\nperiod_s = 1.0\nmetrics_port = {metrics_ports[module]}\n")
        for board in BOARDS:
            account = f"{module}.{board}"
            config = configs / f"{account}.toml"
            config.write_text(f'[identity]\nsite = "{SITE}"\nmodule = "{module}"\n'
                              f'board = "{board}"\n' + role_mqtt(out, account))
    metrics_ports["site"] = free_port()
    (configs / "site.toml").write_text(
        BOARD_BASE + f'[identity]\nsite = "{SITE}"\nmodule = "m1"\nboard = "b01"\n'
        + role_mqtt(out, "site")
        + f"[site]\nperiod_s = 1.0\ntarget_c = 55.0\nmetrics_port = {metrics_ports['site']}\n")
    wire = Wire(out, standby_port, "Home Assistant on the standby")
    try:
        yield {"out": out, "roles": roles, "configs": configs, "primary": primary,
               "standby": standby, "wire": wire, "metrics": metrics_ports, "tmp": tmp_path}
    finally:
        wire.close()
        roles.close()
        standby.stop()
        with contextlib.suppress(Exception):
            primary.stop()


class Demand:
    """The building asks for DEMAND_W on site/demand, as a building management system would,
    again every 10 s (the site forgets a request after its demand_timeout_s)."""

    def __init__(self, wire: Wire):
        self.wire = wire
        self.seq = 0
        self.sent_s = -float("inf")

    def keep(self) -> None:
        if time.monotonic() - self.sent_s >= 10.0:
            self.seq += 1
            self.wire.publish(f"{ROOT}/site/demand", json.dumps(
                {"v": 1, "boot": "building", "seq": self.seq, "ts": time.time(),
                 "demand_w": DEMAND_W}))
            self.sent_s = time.monotonic()


def start_site(deployed) -> None:
    deployed["roles"].start("site", "site", "--config", str(deployed["configs"] / "site.toml"),
                            "--state-dir", str(deployed["tmp"] / "state-site"))


def heating(wire: Wire, since_s: float = 0.0) -> dict[str, bool]:
    """Each board: its newest state since `since_s` says it heats on its leader's setpoint."""
    found = {}
    for module in MODULES:
        for board in BOARDS:
            state = wire.latest(f"{ROOT}/{module}/{board}/state", since_s)
            found[f"{module}/{board}"] = bool(
                state and state["mode"] in HEATING_MODES and state["setpoint_source"] == "leader"
                and state["setpoint_w"] > 0 and (state.get("power_w") or 0) > 0)
    return found


def discovery(wire: Wire, since_s: float = 0.0) -> dict[str, bytes]:
    found = {}
    for at_s, topic, payload, _ in wire.seen:
        if topic.startswith("homeassistant/device/") and at_s >= since_s and payload:
            found[topic] = payload
    return found


def promtool_check(port: int) -> None:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read()
    checked = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip(), (
        url, checked.stdout.decode(), checked.stderr.decode())


def test_a_deployed_site_works_end_to_end_and_through_the_loss_of_its_broker(deployed):
    roles, configs, wire = deployed["roles"], deployed["configs"], deployed["wire"]
    start_site(deployed)
    for module in MODULES:
        roles.start(f"leader-{module}", "leader", "--config",
                    str(configs / f"leader-{module}.toml"),
                    "--state-dir", str(deployed["tmp"] / f"state-leader-{module}"))
        for board in BOARDS:
            roles.start(f"{module}.{board}", "agent", "--sim", "--quiet", "--console-socket",
                        "", "--config", str(configs / f"{module}.{board}.toml"))
    demand = Demand(wire)

    def step() -> None:
        roles.check_alive()
        demand.keep()

    wire.wait_for("the site's state", lambda: wire.latest(f"{ROOT}/site/state"), 60,
                  step=roles.check_alive)
    # Budgets reach both modules, and every board of both heats on its leader's setpoint.
    wire.wait_for("a budget for each module", lambda: all(
        (wire.latest(f"{ROOT}/{module}/leader/budget") or {}).get("budget_w", 0) > 0
        for module in MODULES), 60, step=step)
    wire.wait_for("every board heating", lambda: all(heating(wire).values()), 60,
                  step=step)

    # Home Assistant's discovery, as it arrives on the wire, follows Home Assistant's rules:
    # the site, both modules and their boards.
    configs_seen = wire.wait_for("discovery of the site, 2 modules and 6 boards",
                                 lambda: len(discovery(wire)) >= 9 and discovery(wire), 30)
    assert ha_rules.problems_across(configs_seen) == []
    for topic, payload in configs_seen.items():
        assert ha_rules.problems(topic, payload) == [], topic

    for port in deployed["metrics"].values():
        promtool_check(port)

    # The site broker dies: every role moves to the standby and says again what it holds.
    interlock = f"{ROOT}/m1/leader/interlock"
    deployed["primary"].process.send_signal(signal.SIGKILL)
    deployed["primary"].process.wait(timeout=10)
    killed_s = time.monotonic()
    wire.wait_for("every board heating again through the standby",
                  lambda: all(heating(wire, killed_s + 1.0).values()), 30,
                  step=step)
    for module in MODULES:
        wire.wait_for(f"{module}'s interlock published again",
                      lambda module=module: wire.arrivals(
                          f"{ROOT}/{module}/leader/interlock", killed_s), 30)
        wire.wait_for(f"{module}'s budget through the standby", lambda module=module: (
            wire.latest(f"{ROOT}/{module}/leader/budget", killed_s) or {}).get("budget_w"), 30)
    again = wire.wait_for("every discovery message again", lambda: set(discovery(
        wire, killed_s)) >= set(configs_seen) and discovery(wire, killed_s), 30)
    assert {topic: again[topic] for topic in configs_seen} == configs_seen  # byte for byte
    assert wire.latest(interlock, killed_s) is not None

    # The site restarts: its energy totals are never lower, the target it was given is kept.
    wire.publish(f"{ROOT}/site/target/set", "60")
    wire.wait_for("target 60", lambda: (wire.latest(f"{ROOT}/site/state") or {}).get(
        "target_c") == 60.0, 20)
    # The site publishes the totals it has saved (at most a save period old), so that what it
    # said before a crash is never more than what it finds after one.
    before = wire.wait_for("site electricity above zero", lambda: [
        state for state in [wire.latest(f"{ROOT}/site/state")]
        if state["energy_electric_wh"] > 0], 90, step=step)[0]
    roles.stop("site")
    restarted_s = time.monotonic()
    start_site(deployed)
    after = wire.wait_for("site/state after the restart", lambda: wire.latest(
        f"{ROOT}/site/state", restarted_s), 30, step=step)
    assert after["target_c"] == 60.0
    for key in ("energy_electric_wh", "energy_heat_wh"):
        assert after[key] >= before[key], (key, before[key], after[key])
    later = wire.wait_for("site totals moving on", lambda: [
        state for state in [wire.latest(f"{ROOT}/site/state", restarted_s + 5)] if state], 30)
    assert later[0]["energy_electric_wh"] >= after["energy_electric_wh"]
    roles.check_alive()
