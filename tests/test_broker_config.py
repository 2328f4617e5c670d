"""`hearth broker-config` against a real Mosquitto running the generated configuration: no
anonymous or wrong-password logins, a board confined to its own topics (publish and subscribe),
the leader, site and operator roles, the TLS listener, idempotent re-runs, inventory errors.

Mosquitto drops an unauthorised PUBLISH silently (the client even gets its PUBACK), so
non-delivery is proven with an operator subscriber: every forbidden message is followed by an
authorised one from the same client, and the subscriber must see only the authorised ones. The
authorised messages arriving is what lets each test fail.
"""

import contextlib
import os
import queue
import socket
import ssl
import subprocess
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main as hearth
from agent.deploy.broker_config import check_mosquitto_hash

ROOT = "hearth/v1/maple-school"
QUIET_S = 0.5
"""How long a subscriber waits to be sure nothing more arrives after the last expected message
(each forbidden publish precedes an allowed one, so this is only a margin)."""

INVENTORY = """
site = "maple-school"
port = {port}
bind_address = "127.0.0.1"
operators = ["homeassistant"]

[[module]]
name = "m1"

[[board]]
module = "m1"
name = "b01"

[[board]]
module = "m1"
name = "b02"

[[leader]]
module = "m1"
board = "b01"
host = "localhost"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mosquitto:
    """A mosquitto process running a generated config unchanged. It is included from a runner
    file that only adds `user root` when the tests run as root: otherwise Mosquitto drops to
    the mosquitto user, who cannot enter pytest's 0700 temp directories."""

    def __init__(self, config: Path, port: int, work: Path):
        self.port = port
        work.mkdir(parents=True, exist_ok=True)
        self.runner = work / "runner.conf"
        self.runner.write_text(("user root\n" if os.geteuid() == 0 else "")
                               + f"include_dir {config.parent}\n")
        self.log = work / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["mosquitto", "-v", "-c", str(self.runner)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM, so a broker with persistence writes its database as a real shutdown does."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class Client:
    """A paho client with its callbacks turned into queues, so a test can wait for a CONNACK,
    a SUBACK or a message with a timeout instead of sleeping."""

    def __init__(self, port: int, login: dict | None = None, *, client_id: str = "",
                 tls_ca: Path | None = None, clean_session: bool = True,
                 will: tuple[str, str] | None = None):
        self.port = port
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                clean_session=clean_session, protocol=mqtt.MQTTv311)
        if will is not None:
            self.paho.will_set(*will, qos=1, retain=True)
        if login is not None:
            self.paho.username_pw_set(login["username"], login["password"])
        if tls_ca is not None:
            self.paho.tls_set(ca_certs=str(tls_ca))
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.paho.on_disconnect = lambda c, u, flags, reason, p: self.disconnects.put(reason)
        self.paho.on_connect = lambda c, u, flags, reason, p: self.connacks.put(reason)
        self.paho.on_subscribe = lambda c, u, mid, reasons, p: self.subacks.put(reasons)
        self.paho.on_message = lambda c, u, message: self.messages.put(
            (message.topic, message.payload.decode()))

    def connect(self, host: str = "127.0.0.1", timeout: float = 5.0):
        """The CONNACK's reason code. The loop is stopped on refusal, so paho does not retry."""
        self.paho.connect(host, self.port, keepalive=10)
        self.paho.loop_start()
        reason = self.connacks.get(timeout=timeout)
        if reason.is_failure:
            self.close()
        return reason

    def subscribe(self, topic: str, qos: int = 1) -> bool:
        """True if the SUBACK grants it. Mosquitto's acl_file grants every subscription and
        filters on delivery, so only the operator's own subscriptions are checked with this."""
        self.paho.subscribe(topic, qos)
        (reason,) = self.subacks.get(timeout=5)
        return not reason.is_failure

    def publish(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
        self.paho.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=5)

    def received(self, until: str, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Everything that arrives up to and including the payload `until`, then QUIET_S more."""
        got, deadline = [], time.monotonic() + timeout
        while not any(payload == until for _, payload in got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{until!r} never arrived; got {got}")
            with contextlib.suppress(queue.Empty):
                got.append(self.messages.get(timeout=remaining))
        return got + self.drain(QUIET_S)

    def drain(self, quiet_s: float) -> list[tuple[str, str]]:
        got = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.messages.get(timeout=quiet_s))
        return got

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def login(out: Path, user: str) -> dict:
    return tomllib.loads((out / "credentials" / f"{user}.toml").read_text())["mqtt"]


def generated_site(tmp_path) -> tuple[Path, int, Mosquitto]:
    """INVENTORY's configuration generated (broker-etc pointing at it) and a Mosquitto started
    on it: the output directory, the port and the running broker."""
    port = free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=port))
    out = tmp_path / "out"
    leader_dir = out / "leaders/m1"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--broker-etc", str(leader_dir)]) == 0
    return out, port, Mosquitto(leader_dir / "mosquitto.conf", port, tmp_path / "run").start()


@pytest.fixture
def site(tmp_path):
    """Inventory, generated configuration and a running broker; `connect` logs in an account."""
    out, port, broker = generated_site(tmp_path)
    clients: list[Client] = []

    def connect(user: str | None, **options) -> Client:
        client = Client(port, login(out, user) if user else None, **options)
        assert not client.connect().is_failure, f"{user} could not log in"
        clients.append(client)
        return client

    yield out, port, connect
    for client in clients:
        client.close()
    broker.stop()


def test_anonymous_and_wrong_password_are_refused_a_right_password_is_not(site):
    out, port, connect = site
    assert Client(port).connect() in ("Not authorized", "Bad user name or password")
    wrong = dict(login(out, "m1.b01"), password="guess")
    assert Client(port, wrong).connect() in ("Not authorized", "Bad user name or password")
    unknown = {"username": "m2.b01", "password": login(out, "m1.b01")["password"]}
    assert Client(port, unknown).connect().is_failure
    connect("m1.b01")   # the control: the generated password is accepted


def test_a_board_publishes_its_own_topics_and_nothing_else(site):
    out, _, connect = site
    operator = connect("operator")
    assert operator.subscribe("hearth/#") and operator.subscribe("homeassistant/#")
    board = connect("m1.b01")
    allowed = [f"{ROOT}/m1/b01/{kind}" for kind in ("status", "state", "event", "reply")]
    forbidden = [f"{ROOT}/m1/b02/state", f"{ROOT}/m1/b02/event", f"{ROOT}/m1/b02/status",
                 f"{ROOT}/m1/b02/cmd/setpoint", f"{ROOT}/m1/b01/cmd/mode",
                 f"{ROOT}/m1/leader/setpoint/b01", f"{ROOT}/m1/leader/setpoint/b02",
                 f"{ROOT}/m1/leader/interlock", f"{ROOT}/m1/leader/status",
                 f"{ROOT}/m1/leader/budget", f"{ROOT}/site/demand", f"{ROOT}/site/status",
                 f"{ROOT}/m2/b01/state", "homeassistant/device/x/config"]
    for number, topic in enumerate(forbidden):
        board.publish(topic, f"forbidden {number}")
        board.publish(allowed[number % len(allowed)], f"allowed {number}")
    got = operator.received(until=f"allowed {len(forbidden) - 1}")
    assert got == [(allowed[n % len(allowed)], f"allowed {n}") for n in range(len(forbidden))]


def test_no_account_can_take_over_another_accounts_client_id(site):
    """Issue 13 item 7. Mosquitto closes a connection when another one logs in with its client
    id, and the closed one's Last Will fires. Each generated account is bound to one client id
    (its username), so another account's login with the leader's or a board's client id lands
    on a client id of its own: the victims stay connected and no retained `offline` appears."""
    _, _, connect = site
    watcher = connect("operator")
    assert watcher.subscribe(f"{ROOT}/m1/+/status")
    victims = {}
    for user, client_id, status in (
            ("leader.m1", "hearth-maple-school-m1-leader", f"{ROOT}/m1/leader/status"),
            ("m1.b01", "hearth-maple-school-m1-b01", f"{ROOT}/m1/b01/status")):
        victims[user] = connect(user, client_id=client_id, will=(status, "offline"))
        victims[user].publish(status, "online", retain=True)
    for attacker in ("m1.b02", "site"):
        for client_id in ("hearth-maple-school-m1-leader", "leader.m1",
                          "hearth-maple-school-m1-b01", "m1.b01"):
            connect(attacker, client_id=client_id).close()
    assert "offline" not in [payload for _, payload in watcher.drain(QUIET_S)]
    for user, victim in victims.items():
        assert victim.disconnects.empty(), f"{user} was disconnected"
    victims["leader.m1"].publish(f"{ROOT}/m1/leader/status", "leader still here")
    victims["m1.b01"].publish(f"{ROOT}/m1/b01/status", "board still here")
    assert {payload for _, payload in watcher.received(until="board still here")} == {
        "leader still here", "board still here"}


def test_a_board_reads_its_commands_setpoint_and_interlock_and_not_another_boards(site):
    """Mosquitto's acl_file grants every SUBSCRIBE and checks read access per delivered
    message (eclipse-mosquitto/mosquitto#2208, #2296), so refusal shows as non-delivery."""
    _, _, connect = site
    board = connect("m1.b01")
    for topic in (f"{ROOT}/m1/b02/cmd/#", f"{ROOT}/m1/b02/state",
                  f"{ROOT}/m1/leader/setpoint/b02", f"{ROOT}/m1/leader/setpoint/+",
                  f"{ROOT}/m1/b01/cmd/#", f"{ROOT}/m1/leader/setpoint/b01",
                  f"{ROOT}/m1/leader/interlock",
                  "#"):  # however the broker answers, delivery is checked message by message
        board.subscribe(topic)
    operator, leader = connect("operator"), connect("leader.m1")
    operator.publish(f"{ROOT}/m1/b02/cmd/mode", "to b02")
    leader.publish(f"{ROOT}/m1/leader/setpoint/b02", "b02 setpoint")
    connect("m1.b02").publish(f"{ROOT}/m1/b02/state", "b02 state")
    operator.publish(f"{ROOT}/m1/b01/cmd/mode", "to b01")
    leader.publish(f"{ROOT}/m1/leader/setpoint/b01", "b01 setpoint")
    leader.publish(f"{ROOT}/m1/leader/interlock", "interlock")
    own = {(f"{ROOT}/m1/b01/cmd/mode", "to b01"),
           (f"{ROOT}/m1/leader/setpoint/b01", "b01 setpoint"),
           (f"{ROOT}/m1/leader/interlock", "interlock")}
    got = board.received(until="interlock")
    assert set(got) == own   # overlapping subscriptions may deliver a message twice


def test_leader_site_and_operator_write_what_their_role_owns_only(site):
    _, _, connect = site
    watcher = connect("operator.homeassistant")   # an operator account of its own, so that
    assert watcher.subscribe("hearth/#")          # `operator` below does not take it over
    leader, site_role, operator = connect("leader.m1"), connect("site"), connect("operator")
    steps = [  # (client, topic, allowed)
        (leader, f"{ROOT}/m1/leader/setpoint/b02", True),
        (leader, f"{ROOT}/m1/leader/interlock", True),
        (leader, f"{ROOT}/m1/b02/cmd/identify", True),
        (leader, f"{ROOT}/m1/b02/cmd/setpoint", True),
        (leader, f"{ROOT}/m1/b02/cmd/reset", False),      # operator-only commands
        (leader, f"{ROOT}/m1/b02/cmd/mode", False),
        (leader, f"{ROOT}/m1/b02/state", False),          # cannot speak for a board
        (leader, f"{ROOT}/m1/leader/budget", False),      # the site sets budgets
        (leader, f"{ROOT}/m2/leader/setpoint/b01", False),
        (site_role, f"{ROOT}/m1/leader/budget", True),
        (site_role, f"{ROOT}/site/state", True),
        (site_role, f"{ROOT}/m1/leader/setpoint/b01", False),
        (site_role, f"{ROOT}/m1/b01/cmd/mode", False),
        (operator, f"{ROOT}/m1/b01/cmd/reset", True),
        (operator, f"{ROOT}/site/demand", True),
        (operator, f"{ROOT}/m1/b01/state", False),
        (operator, f"{ROOT}/m1/leader/setpoint/b01", False),
    ]
    for number, (client, topic, _) in enumerate(steps):
        client.publish(topic, f"step {number}")
    site_role.publish(f"{ROOT}/site/status", "end")
    got = watcher.received(until="end")
    expected = {(topic, f"step {n}") for n, (_, topic, allowed) in enumerate(steps) if allowed}
    assert set(got) - {(f"{ROOT}/site/status", "end")} == expected


def test_site_target_set_is_written_by_operator_and_site_and_read_by_the_site_role(site):
    """Home Assistant's `number` (on the operator account) sets the site target; the site
    role reads it. A leader or a board must not be able to change the building's target."""
    _, _, connect = site
    target = f"{ROOT}/site/target/set"
    site_role = connect("site")
    site_role.subscribe(target)
    board_snoop = connect("m1.b01", client_id="m1.b01-snoop")
    board_snoop.subscribe(f"{ROOT}/site/#")
    leader, board, operator = connect("leader.m1"), connect("m1.b02"), connect("operator")
    leader.publish(target, "50.0")
    board.publish(target, "51.0")
    operator.publish(target, "52.0")
    site_role.publish(target, "53.0")
    assert site_role.received(until="53.0") == [(target, "52.0"), (target, "53.0")]
    assert board_snoop.drain(QUIET_S) == []


def test_tls_listener_with_the_generated_ca(tmp_path):
    port = free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=port))
    out = tmp_path / "out"
    leader_dir = out / "leaders/m1"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out), "--tls",
                   "--broker-etc", str(leader_dir)]) == 0
    assert "certfile" in (leader_dir / "mosquitto.conf").read_text()
    broker = Mosquitto(leader_dir / "mosquitto.conf", port, tmp_path / "run").start()
    try:
        secure = Client(port, login(out, "m1.b01"), tls_ca=out / "ca/ca.crt")
        assert not secure.connect("localhost").is_failure   # certificate names host localhost
        secure.close()
        stranger = tmp_path / "other-ca"
        stranger.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                        str(stranger / "ca.key"), "-out", str(stranger / "ca.crt"), "-days", "1",
                        "-subj", "/CN=someone else"], check=True, capture_output=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            Client(port, login(out, "m1.b01"), tls_ca=stranger / "ca.crt").connect("localhost")
        plain = Client(port, login(out, "m1.b01"))
        with pytest.raises((queue.Empty, OSError)):
            plain.connect(timeout=2)
        plain.close()
    finally:
        broker.stop()


def test_rerun_rewrites_identical_files_and_rotate_renews_only_whom_it_names(tmp_path):
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=1883))
    out = tmp_path / "out"
    command = ["broker-config", "--inventory", str(inventory), "--out", str(out),
               "--bridge", "central.example.net:8883"]
    assert hearth(command) == 0
    files = sorted(path for path in out.rglob("*") if path.is_file())
    before = {path: path.read_bytes() for path in files}
    assert hearth(command) == 0
    assert {path: path.read_bytes() for path in files} == before
    assert (out / "leaders/m1/passwd").stat().st_mode & 0o777 == 0o600
    assert (out / "leaders/m1/mosquitto.conf").stat().st_mode & 0o777 == 0o600   # bridge secret
    assert hearth(command + ["--rotate", "m1.b02"]) == 0
    changed = {path for path in files if path.read_bytes() != before[path]}
    assert changed == {out / "credentials/m1.b02.toml", out / "leaders/m1/passwd"}
    passwd = dict(line.split(":", 1) for line in
                  (out / "leaders/m1/passwd").read_text().splitlines())
    assert check_mosquitto_hash(login(out, "m1.b02")["password"], passwd["m1.b02"])
    assert check_mosquitto_hash(login(out, "m1.b01")["password"], passwd["m1.b01"])


@pytest.mark.parametrize("edit, message", [
    (('name = "b02"', 'name = "leader"'),
     'board[2].name = "leader": expected a name other than \'leader\''),
    (('name = "m1"', 'name = "site"'),
     'module[1].name = "site": expected a name other than \'site\''),
    (('name = "b02"', 'name = "b02"\nslots = 3'),
     "board[2].slots = 3: expected a key of a [[board]]"),
    (('port = 1883', 'port = 70000'), "port = 70000: expected an integer from 1 to 65535"),
    (('port = 1883', 'port = "1883"'), 'port = "1883": expected an integer from 1 to 65535'),
    (('["homeassistant"]', '["Alice"]'), 'operators[1] = "Alice": expected a string like'),
    (('["homeassistant"]', '["ha", "ha"]'),
     'operators[2] = "ha": expected a name no other operator'),
    (('site = "maple-school"', 'site = "Maple School"'), 'site = "Maple School"'),
    (('site = "maple-school"', 'site = "maple-school'), "expected valid TOML"),
    (('name = "b02"', 'name = "b01"'),
     'board[2].name = "b01": expected a name no other [[board]] of module m1 has'),
])
def test_inventory_errors_name_file_entry_key_and_value(tmp_path, capsys, edit, message):
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=1883).replace(*edit, 1))
    status = hearth(["broker-config", "--inventory", str(inventory), "--out",
                     str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2 and message in error and str(inventory) in error, error
    assert not (tmp_path / "out").exists()


def test_option_errors_are_explained(tmp_path, capsys):
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=1883))
    base = ["broker-config", "--inventory", str(inventory), "--out", str(tmp_path / "out")]
    assert hearth(base + ["--bridge", "central.example.net"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert hearth(base + ["--rotate", "nobody"]) == 2
    assert "--rotate nobody: no such MQTT user" in capsys.readouterr().err
    assert hearth(base + ["--inventory", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: expected a readable TOML file" in capsys.readouterr().err

