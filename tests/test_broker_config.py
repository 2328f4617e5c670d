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
broker = "localhost"
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
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mosquitto:
    """A mosquitto process running a generated config unchanged. It is included from a runner
    file standing in for the distribution's mosquitto.conf: it names the persistence
    directory, as Debian's does, and adds `user root` when the tests run as root (otherwise
    Mosquitto drops to the mosquitto user, who cannot enter pytest's 0700 temp
    directories)."""

    def __init__(self, config: Path, port: int, work: Path):
        self.port = port
        work.mkdir(parents=True, exist_ok=True)
        (work / "db").mkdir(exist_ok=True)
        self.runner = work / "runner.conf"
        self.runner.write_text(("user root\n" if os.geteuid() == 0 else "")
                               + f"persistence_location {work / 'db'}/\n"
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
                 tls_ca: Path | None = None, tls_client: Path | None = None,
                 clean_session: bool = True, will: tuple[str, str] | None = None):
        self.port = port
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                clean_session=clean_session, protocol=mqtt.MQTTv311)
        if will is not None:
            self.paho.will_set(*will, qos=1, retain=True)
        if login is not None:
            self.paho.username_pw_set(login["username"], login["password"])
        if tls_ca is not None:   # tls_client: a directory with client.crt and client.key
            self.paho.tls_set(ca_certs=str(tls_ca),
                              certfile=str(tls_client / "client.crt") if tls_client else None,
                              keyfile=str(tls_client / "client.key") if tls_client else None)
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
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--broker-etc", str(out / "broker")]) == 0
    return out, port, Mosquitto(out / "broker/mosquitto.conf", port, tmp_path / "run").start()


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


def foreign_client_certificate(directory: Path, username: str) -> Path:
    """A client certificate for `username` from a CA the site does not know."""
    directory.mkdir()
    def run(*arguments):
        subprocess.run(["openssl", *arguments], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.crt"), "-days", "1",
        "-subj", "/CN=someone else")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
        str(directory / "client.key"), "-out", str(directory / "client.csr"), "-subj",
        f"/CN={username}")
    run("x509", "-req", "-in", str(directory / "client.csr"), "-CA", str(directory / "ca.crt"),
        "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-out",
        str(directory / "client.crt"), "-days", "1")
    return directory


def refused(client: Client) -> bool:
    """A refused TLS handshake (no or an unknown client certificate) or CONNACK."""
    try:
        reason = client.connect("localhost", timeout=3)
    except (ssl.SSLError, OSError, queue.Empty):
        client.close()
        return True
    if not reason.is_failure:
        client.close()
    return reason.is_failure


def test_tls_needs_a_client_certificate_of_the_site_ca_and_the_password(tmp_path):
    """Both factors: the certificate (signed by the site CA, one per account, its key never
    leaves the box) and the account's password. The server certificate names the broker's
    host; a client checks it against the site CA."""
    port = free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(INVENTORY.format(port=port))
    out = tmp_path / "out"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out), "--tls",
                   "--broker-etc", str(out / "broker")]) == 0
    config = (out / "broker/mosquitto.conf").read_text()
    assert "require_certificate true" in config and "certfile" in config
    broker = Mosquitto(out / "broker/mosquitto.conf", port, tmp_path / "run").start()
    ca, own, other = out / "ca/ca.crt", out / "clients/m1.b01", out / "clients/m1.b02"
    account = login(out, "m1.b01")
    try:
        right = Client(port, account, tls_ca=ca, tls_client=own)
        assert not right.connect("localhost").is_failure   # the certificate names localhost
        right.close()
        assert refused(Client(port, account, tls_ca=ca))                  # no certificate
        assert refused(Client(port, dict(account, password="guess"), tls_ca=ca,
                              tls_client=own))                             # wrong password
        assert refused(Client(port, account, tls_ca=ca, tls_client=foreign_client_certificate(
            tmp_path / "foreign", "m1.b01")))                              # not the site's CA
        # Another account's certificate with this account's password logs in as this account:
        # Mosquitto 2.0 checks the password or takes the account from the certificate
        # (use_identity_as_username, which then ignores the password), never both, so the
        # password names the account and the certificate proves an enrolled box.
        borrowed = Client(port, account, tls_ca=ca, tls_client=other)
        assert not borrowed.connect("localhost").is_failure
        borrowed.close()
        with pytest.raises(ssl.SSLCertVerificationError):   # a broker the site CA did not sign
            Client(port, account, tls_ca=foreign_client_certificate(tmp_path / "stranger",
                                                                     "x") / "ca.crt",
                   tls_client=own).connect("localhost")
        plain = Client(port, account)
        with pytest.raises((queue.Empty, OSError)):
            plain.connect(timeout=2)
        plain.close()
    finally:
        broker.stop()
    text = subprocess.run(["openssl", "x509", "-in", own / "client.crt", "-noout", "-subject"],
                          capture_output=True, text=True, check=True).stdout
    assert "CN=m1.b01" in text.replace(" ", "")
    section = tomllib.loads((own / "mqtt.toml").read_text())["mqtt"]
    assert section == {"brokers": [f"localhost:{port}"], "username": "m1.b01",
                       "password_file": "/etc/hearth/mqtt/m1.b01/credentials.toml",
                       "ca_file": "/etc/hearth/mqtt/m1.b01/ca.crt",
                       "cert_file": "/etc/hearth/mqtt/m1.b01/client.crt",
                       "key_file": "/etc/hearth/mqtt/m1.b01/client.key"}


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
    assert (out / "broker/passwd").stat().st_mode & 0o777 == 0o600
    assert (out / "broker/mosquitto.conf").stat().st_mode & 0o777 == 0o600   # bridge secret
    assert hearth(command + ["--rotate", "m1.b02"]) == 0
    changed = {path for path in files if path.read_bytes() != before[path]}
    assert changed == {out / "credentials/m1.b02.toml", out / "clients/m1.b02/credentials.toml",
                       out / "broker/passwd"}
    passwd = dict(line.split(":", 1) for line in
                  (out / "broker/passwd").read_text().splitlines())
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



TWO_MODULES = """
site = "maple-school"
broker = "localhost:{port}"
standby = "127.0.0.1:{standby_port}"
bind_address = "127.0.0.1"
operators = ["homeassistant"]

[[module]]
name = "m1"

[[module]]
name = "m-2"

[[board]]
module = "m1"
name = "b01"

[[board]]
module = "m-2"
name = "b01"

[[leader]]
module = "m1"
board = "b01"

[[leader]]
module = "m-2"
board = "b01"
"""
HA = "homeassistant/device"


@pytest.fixture
def whole_site(tmp_path):
    """TWO_MODULES generated (the standby's files in their own etc) and both brokers started:
    (out, connect) where connect(user, standby=False) logs an account in to one of them."""
    port, standby_port = free_port(), free_port()
    inventory = tmp_path / "site.toml"
    inventory.write_text(TWO_MODULES.format(port=port, standby_port=standby_port))
    out = tmp_path / "out"
    assert hearth(["broker-config", "--inventory", str(inventory), "--out", str(out),
                   "--broker-etc", str(out / "broker"), "--standby-etc",
                   str(out / "standby")]) == 0
    primary = Mosquitto(out / "broker/mosquitto.conf", port, tmp_path / "primary").start()
    standby = Mosquitto(out / "standby/mosquitto.conf", standby_port, tmp_path / "standby").start()
    clients: list[Client] = []

    def connect(user: str, standby_broker: bool = False, **options) -> Client:
        client = Client(standby_port if standby_broker else port, login(out, user), **options)
        assert not client.connect().is_failure, f"{user} could not log in"
        clients.append(client)
        return client

    yield out, connect, primary, standby
    for client in clients:
        client.close()
    standby.stop()
    primary.stop()


def test_one_broker_carries_every_module_the_site_role_and_home_assistant(whole_site):
    """Issue 14: one broker per module made a two-module site two islands."""
    _, connect, _, _ = whole_site
    home_assistant = connect("operator.homeassistant")
    assert home_assistant.subscribe("hearth/#")
    site_role = connect("site")
    site_role.publish(f"{ROOT}/m1/leader/budget", "m1 budget")
    site_role.publish(f"{ROOT}/m-2/leader/budget", "m-2 budget")
    connect("leader.m-2").publish(f"{ROOT}/m-2/leader/setpoint/b01", "m-2 setpoint")
    connect("leader.m1").publish(f"{ROOT}/m-2/leader/setpoint/b01", "forbidden")
    connect("m-2.b01").publish(f"{ROOT}/m-2/b01/state", "m-2 state")
    got = home_assistant.received(until="m-2 state")
    assert set(got) == {(f"{ROOT}/m1/leader/budget", "m1 budget"),
                        (f"{ROOT}/m-2/leader/budget", "m-2 budget"),
                        (f"{ROOT}/m-2/leader/setpoint/b01", "m-2 setpoint"),
                        (f"{ROOT}/m-2/b01/state", "m-2 state")}


def test_every_role_lists_the_site_broker_then_the_standby(whole_site):
    out, _, primary, standby = whole_site
    for user in ("m1.b01", "m-2.b01", "leader.m1", "leader.m-2", "site", "operator",
                 "operator.homeassistant"):
        section = tomllib.loads((out / "clients" / user / "mqtt.toml").read_text())["mqtt"]
        assert section["brokers"] == [f"localhost:{primary.port}",
                                      f"127.0.0.1:{standby.port}"], user
        assert section["username"] == user and "host" not in section
        assert tomllib.loads((out / "clients" / user / "credentials.toml").read_text()) == \
            {"mqtt": login(out, user)}
    assert not (out / "clients/standby").exists()   # the bridge's account is no role's


def test_home_assistant_discovery_status_and_site_commands(whole_site):
    _, connect, _, _ = whole_site
    watcher = connect("operator")
    assert watcher.subscribe("homeassistant/#") and watcher.subscribe(f"{ROOT}/site/#")
    site_role, leader, other_leader, board = (connect("site"), connect("leader.m1"),
                                              connect("leader.m-2"), connect("m1.b01"))
    for listener in (site_role, leader, board):
        listener.subscribe("homeassistant/status")
    home_assistant = connect("operator.homeassistant")
    steps = [  # (client, topic, allowed)
        (site_role, f"{HA}/hearth_maple_school/config", True),
        (site_role, f"{HA}/hearth_maple_school_m1/config", False),
        (leader, f"{HA}/hearth_maple_school_m1/config", True),
        (leader, f"{HA}/hearth_maple_school_m1_b01/config", True),
        (leader, f"{HA}/hearth_maple_school_m_2/config", False),     # another module's
        (leader, f"{HA}/hearth_maple_school_m_2_b01/config", False),
        (leader, f"{HA}/hearth_maple_school/config", False),
        (other_leader, f"{HA}/hearth_maple_school_m_2_b01/config", True),
        (board, f"{HA}/hearth_maple_school_m1_b01/config", False),
        (leader, "homeassistant/status", False),
        (board, "homeassistant/status", False),
        (home_assistant, f"{HA}/hearth_maple_school/config", False),
        (home_assistant, f"{ROOT}/site/target/set", True),
        (home_assistant, f"{ROOT}/site/mode/set", True),
        (leader, f"{ROOT}/site/mode/set", False),
        (board, f"{ROOT}/site/mode/set", False),
    ]
    for number, (client, topic, _) in enumerate(steps):
        client.publish(topic, f"step {number}", retain=True)
    home_assistant.publish("homeassistant/status", "online")
    got = watcher.received(until="online")
    expected = {(topic, f"step {n}") for n, (_, topic, allowed) in enumerate(steps) if allowed}
    assert set(got) == expected | {("homeassistant/status", "online")}
    # Home Assistant's birth reaches the site and the leaders, who re-send discovery on it;
    # a board has no business with it.
    assert ("homeassistant/status", "online") in site_role.received(until="online")
    assert ("homeassistant/status", "online") in leader.received(until="online")
    assert ("homeassistant/status", "online") not in board.drain(QUIET_S)


def test_the_standby_and_the_site_broker_form_one_site(whole_site):
    """Clients that failed over at different moments: some on the standby, some still on the
    site broker. Every message crosses once, both ways, retained ones included."""
    _, connect, _, _ = whole_site
    on_primary = connect("operator")
    on_standby = connect("operator.homeassistant", standby_broker=True)
    for watcher in (on_primary, on_standby):
        assert watcher.subscribe("hearth/#") and watcher.subscribe("homeassistant/#")
    deadline = time.monotonic() + 15   # the standby's bridge connects in its own time
    while True:
        connect("site").publish(f"{ROOT}/site/status", "probe")
        with contextlib.suppress(AssertionError):
            on_standby.received(until="probe", timeout=0.5)
            break
        assert time.monotonic() < deadline, "the standby's bridge never connected"
    on_primary.drain(QUIET_S)
    connect("leader.m1", standby_broker=True).publish(f"{ROOT}/m1/leader/interlock", "interlock",
                                                      retain=True)
    connect("m1.b01").publish(f"{ROOT}/m1/b01/state", "from the primary")
    connect("site", standby_broker=True, client_id="x").publish(
        f"{HA}/hearth_maple_school/config", "discovery", retain=True)
    expected = {(f"{ROOT}/m1/leader/interlock", "interlock"),
                (f"{ROOT}/m1/b01/state", "from the primary"),
                (f"{HA}/hearth_maple_school/config", "discovery")}
    for watcher in (on_primary, on_standby):
        got = watcher.received(until="discovery") + watcher.drain(QUIET_S)
        assert sorted(got) == sorted(expected), got    # each exactly once: no loop
    late = connect("m1.b01")   # a board connecting to the site broker later hears the interlock
    late.subscribe(f"{ROOT}/m1/leader/interlock")
    assert late.received(until="interlock") == [(f"{ROOT}/m1/leader/interlock", "interlock")]


def test_retained_messages_survive_a_restart_of_the_broker(whole_site):
    """persistence true: a board starting while its leader is down still hears the interlock."""
    _, connect, primary, standby = whole_site
    standby.stop()
    connect("leader.m1").publish(f"{ROOT}/m1/leader/interlock", "interlock", retain=True)
    primary.stop()
    primary.start()
    board = connect("m1.b01")
    board.subscribe(f"{ROOT}/m1/leader/interlock")
    assert board.received(until="interlock") == [(f"{ROOT}/m1/leader/interlock", "interlock")]


@pytest.mark.parametrize("edit, message", [
    (('[[leader]]\nmodule = "m1"\nboard = "b01"', '[[leader]]\nmodule = "m1"\nboard = "b01"\n'
      'host = "hearth-m1.local"'),
     'leader[1].host = "hearth-m1.local": expected no host in a [[leader]]'),
    (('standby = "127.0.0.1:{standby_port}"', 'standby = "localhost:{port}"'),
     'standby = "localhost:1883": expected another broker than `broker`'),
    (('broker = "localhost:{port}"', 'broker = "localhost:99999"'),
     'broker = "localhost:99999": expected a host name or address'),
    (('broker = "localhost:{port}"\n', ''), "broker is missing: expected a string like"),
    (('operators = ["homeassistant"]', 'operators = ["homeassistant"]\n\n[[module]]\n'
      'name = "m"\n\n[[board]]\nmodule = "m"\nname = "2_b01"\n\n[[leader]]\nmodule = "m"\n'
      'board = "2_b01"'),
     "hearth_maple_school_m_2_b01"),
])
def test_site_inventory_errors(tmp_path, capsys, edit, message):
    inventory = tmp_path / "site.toml"
    inventory.write_text(TWO_MODULES.replace(*edit, 1).format(port=1883, standby_port=1884))
    status = hearth(["broker-config", "--inventory", str(inventory), "--out",
                     str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2 and message in error and str(inventory) in error, error
