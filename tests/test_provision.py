"""scripts/provision: identity files and table the agent resolves, mosquitto_passwd-compatible
credentials that a real Mosquitto accepts (and a wrong password it refuses), per-board ACLs,
TLS material that verifies against its CA, re-runs that keep passwords, inventory errors."""

import os
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from agent.deploy.broker_config import check_mosquitto_hash, mosquitto_hash
from agent.identity import Identity, resolve

REPO = Path(__file__).resolve().parent.parent

INVENTORY = """
site = "maple-school"
broker = "hearth-broker.local"
standby = "hearth-standby.local"

[[module]]
name = "m1"

[[module]]
name = "m2"

[[board]]
module = "m1"
name = "b01"
serial = "10000000a1b2c3d4"
slot = 1

[[board]]
module = "m1"
name = "b02"
slot = 2

[[board]]
module = "m2"
name = "b01"
serial = "10000000deadbeef"

[[leader]]
module = "m1"
board = "b01"

[[leader]]
module = "m2"
board = "b01"
"""


def provision(inventory: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([REPO / "scripts/provision", inventory, out, *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def inventory(tmp_path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(INVENTORY)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hash_format_is_what_mosquitto_passwd_writes(tmp_path):
    encoded = mosquitto_hash("s3cret", salt=bytes(range(12)))
    assert encoded.startswith("$7$101$AAECAwQFBgcICQoL$") and check_mosquitto_hash("s3cret", encoded)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", passwd, "alice", "s3cret"], check=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$")
    assert check_mosquitto_hash("s3cret", theirs) and not check_mosquitto_hash("other", theirs)


def test_identity_files_and_table_resolve_on_a_board(tmp_path, inventory):
    out = tmp_path / "out"
    assert provision(inventory, out).returncode == 0
    board = tmp_path / "board"
    (board / "etc/hearth").mkdir(parents=True)
    (board / "proc").mkdir()
    (board / "etc/hearth/identity-table.toml").write_bytes((out / "identity-table.toml").read_bytes())
    (board / "proc/cpuinfo").write_text("Serial\t\t: 10000000deadbeef\n")
    assert resolve(board).identity == Identity("maple-school", "m2", "b01")
    (board / "boot/firmware").mkdir(parents=True)
    (board / "boot/firmware/hearth-identity.toml").write_bytes(
        (out / "identities/m1/b02.toml").read_bytes())
    result = resolve(board)
    assert not result.ok and "CONFLICT" in result.message   # the file says m1/b02, serial m2/b01


def test_a_real_broker_accepts_the_credentials_and_refuses_a_wrong_password(tmp_path, inventory):
    out = tmp_path / "out"
    broker_dir = out / "broker"
    assert provision(inventory, out, "--broker-etc", str(broker_dir)).returncode == 0
    port = free_port()
    config = broker_dir / "mosquitto.conf"
    # Only the port changes, the persistence directory is named (as the distribution's
    # mosquitto.conf does) and, when the tests run as root, mosquitto is told to stay root:
    # otherwise it drops to the mosquitto user, who cannot enter pytest's 0700 temp directory.
    text = config.read_text().replace("listener 1883", f"listener {port} 127.0.0.1")
    config.write_text(text + f"persistence_location {tmp_path}/\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen(["mosquitto", "-c", config], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        login = tomllib.loads((out / "credentials/m1.b02.toml").read_text())["mqtt"]

        def publish(username, password):
            return subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", username,
                 "-P", password, "-t", "hearth/v1/maple-school/m1/b02/state", "-m", "{}"],
                capture_output=True, text=True, timeout=10)

        assert publish(login["username"], login["password"]).returncode == 0
        refused = publish(login["username"], login["password"] + "x")
        assert refused.returncode != 0 and "not authorised" in refused.stderr.lower()
        m2_login = tomllib.loads((out / "credentials/m2.b01.toml").read_text())["mqtt"]
        assert publish(m2_login["username"], m2_login["password"]).returncode == 0  # its own
        # account, on the one broker of the site; the ACL drops what it writes to m1's topics
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def test_acl_keeps_each_board_to_its_own_topics(tmp_path, inventory):
    out = tmp_path / "out"
    assert provision(inventory, out).returncode == 0
    acl = (out / "broker/acl").read_text()
    assert acl == (out / "standby/acl").read_text()
    assert ("user m1.b02\ntopic write hearth/v1/maple-school/m1/b02/status\n") in acl
    assert "topic read hearth/v1/maple-school/m1/leader/setpoint/b02\n" in acl
    assert "user m2.b01\ntopic write hearth/v1/maple-school/m2/b01/status\n" in acl
    assert "user leader.m1\ntopic read hearth/v1/maple-school/m1/#" in acl
    users = [line.split(":")[0] for line in (out / "broker/passwd").read_text().splitlines()]
    assert users == ["m1.b01", "m1.b02", "m2.b01", "updater.m1.b01", "updater.m1.b02",
                     "updater.m2.b01", "leader.m1", "leader.m2", "site", "operator", "uplink",
                     "standby"]
    assert (out / "standby/passwd").read_text() == (out / "broker/passwd").read_text()
    assert (out / "credentials/m1.b01.toml").stat().st_mode & 0o777 == 0o600


def test_rerunning_keeps_passwords(tmp_path, inventory):
    out = tmp_path / "out"
    assert provision(inventory, out).returncode == 0
    before = (out / "credentials/m1.b01.toml").read_text()
    assert provision(inventory, out).returncode == 0
    assert (out / "credentials/m1.b01.toml").read_text() == before


def test_tls_material_verifies_against_the_site_ca(tmp_path, inventory):
    inventory.write_text("tls = true\n" + inventory.read_text())
    out = tmp_path / "out"
    result = provision(inventory, out)
    assert result.returncode == 0, result.stderr
    for role, host in (("broker", "hearth-broker.local"), ("standby", "hearth-standby.local")):
        tls = out / role / "tls"
        check = subprocess.run(["openssl", "verify", "-CAfile", tls / "ca.crt",
                                tls / "server.crt"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        text = subprocess.run(["openssl", "x509", "-in", tls / "server.crt", "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert f"DNS:{host}" in text
        config = (out / role / "mosquitto.conf").read_text()
        assert "listener 8883" in config and "require_certificate true" in config
        assert "certfile /etc/mosquitto/hearth/tls/server.crt" in config
    client = out / "clients/m2.b01"
    check = subprocess.run(["openssl", "verify", "-CAfile", client / "ca.crt",
                            client / "client.crt"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "bridge_certfile /etc/mosquitto/hearth/tls/bridge.crt" in (
        out / "standby/mosquitto.conf").read_text()
    assert (out / "standby/tls/bridge.crt").read_bytes() == \
        (out / "clients/standby/client.crt").read_bytes()
    assert not (out / "broker/ca.key").exists() and (out / "ca/ca.key").exists()


@pytest.mark.parametrize("edit, message", [
    (('name = "b02"', 'name = "B 02"'), 'board[2].name = "B 02": expected a string like'),
    (('slot = 2', 'slot = 1'),
     "board[2].slot = 1: expected a slot no other board of module m1 has (maple-school/m1/b01"),
    (('standby = "hearth-standby.local"', 'standby = "no such host"'),
     'standby = "no such host": expected a string like \'hearth-standby.local\''),
    (('module = "m2"\nboard = "b01"', 'module = "m3"\nboard = "b01"'),
     'leader[2].module = "m3": expected one of the [[module]] names'),
])
def test_inventory_errors_name_the_entry_and_value(tmp_path, inventory, edit, message):
    inventory.write_text(inventory.read_text().replace(*edit, 1))
    result = provision(inventory, tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr, result.stderr
