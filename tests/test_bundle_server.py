"""The site box's bundle server (agent/update/bundle_server.py) as RAUC's streaming client
meets it: whole files and single ranges with the right status, Content-Range, Content-Length
and a strong ETag, HEAD, If-Range, only the files it was given, and hostile requests answered
without harm. curl (libcurl is RAUC's HTTP client) fetches ranges from it as well."""

import hashlib
import http.client
import os
import socket
import subprocess
import time

import pytest

from agent.update.bundle_server import BundleServer, RangeNotSatisfiable, byte_range

CONTENT = bytes(range(256)) * 40 + b"tail"  # 10244 bytes


@pytest.fixture
def server(tmp_path):
    bundle = tmp_path / "hearth-1.2.0.raucb"
    bundle.write_bytes(CONTENT)
    (tmp_path / "secret.txt").write_text("not served\n")
    with BundleServer([bundle], ("127.0.0.1", 0), timeout_s=1.0) as served:
        yield served


def request(server, method="GET", path="/hearth-1.2.0.raucb", headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, body


def sent_after_a_while(server, name: str, expected: int) -> bool:
    """The server's thread counts what it wrote after the write: the client may read first."""
    deadline = time.monotonic() + 5
    while server.bytes_sent(name) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.bytes_sent(name) == expected


def test_the_whole_file_with_a_strong_etag_of_its_content(server):
    response, body = request(server)
    assert response.status == 200 and body == CONTENT
    assert response.getheader("Content-Length") == str(len(CONTENT))
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("ETag") == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
    assert server.url("10.0.0.2", "hearth-1.2.0.raucb") == (
        f"http://10.0.0.2:{server.port}/hearth-1.2.0.raucb")


@pytest.mark.parametrize("header, first, last", [
    ("bytes=0-99", 0, 99), ("bytes=100-", 100, len(CONTENT) - 1),
    ("bytes=-10", len(CONTENT) - 10, len(CONTENT) - 1),
    ("bytes=10000-999999999", 10000, len(CONTENT) - 1),
    ("bytes=-999999", 0, len(CONTENT) - 1), ("bytes=5-5", 5, 5)])
def test_a_range_is_answered_206_with_exactly_its_bytes(server, header, first, last):
    response, body = request(server, headers={"Range": header})
    assert response.status == 206
    assert body == CONTENT[first:last + 1]
    assert response.getheader("Content-Range") == f"bytes {first}-{last}/{len(CONTENT)}"
    assert response.getheader("Content-Length") == str(last - first + 1)


@pytest.mark.parametrize("header", ["bytes=10244-", "bytes=99999-100000", "bytes=-0",
                                    "bytes=" + "9" * 5000 + "-"])
def test_a_range_past_the_end_is_416_with_the_size(server, header):
    response, body = request(server, headers={"Range": header})
    assert response.status == 416 and body == b""
    assert response.getheader("Content-Range") == f"bytes */{len(CONTENT)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=-",
                                    "bytes=abc-", "bytes=" + "1" * 5000 + "-" + "2" * 5000])
def test_a_range_it_does_not_read_gets_the_whole_file(server, header):
    response, body = request(server, headers={"Range": header})
    assert response.status in (200, 416)  # a huge first offset is past the end
    if response.status == 200:
        assert body == CONTENT


def test_head_says_what_get_would_send_without_the_body(server):
    response, body = request(server, "HEAD", headers={"Range": "bytes=0-9"})
    assert response.status == 206 and body == b""
    assert response.getheader("Content-Length") == "10"
    assert response.getheader("Content-Range") == f"bytes 0-9/{len(CONTENT)}"


def test_if_range_with_another_etag_sends_the_whole_new_file(server):
    etag = request(server, "HEAD")[0].getheader("ETag")
    same, body = request(server, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status == 206 and body == CONTENT[:10]
    other, body = request(server, headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert other.status == 200 and body == CONTENT


@pytest.mark.parametrize("path", ["/secret.txt", "/../secret.txt", "/%2e%2e/secret.txt",
                                  "/", "/hearth-1.2.0.raucb/",
                                  "/./hearth-1.2.0.raucb", "/HEARTH-1.2.0.RAUCB",
                                  "/hearth-1.2.0.raucb%00"])
def test_only_the_files_it_was_given_under_their_own_names(server, path):
    response, body = request(server, path=path)
    assert response.status == 404 and CONTENT[:50] not in body


def test_a_query_string_is_ignored(server):
    response, body = request(server, path="/hearth-1.2.0.raucb?x=1")
    assert response.status == 200 and body == CONTENT


def test_other_methods_are_refused(server):
    response, _ = request(server, "POST")
    assert response.status == 501
    response, _ = request(server, "DELETE")
    assert response.status == 501


def test_a_file_replaced_on_disk_is_still_served_as_it_was(tmp_path):
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(CONTENT)
    with BundleServer([bundle], ("127.0.0.1", 0)) as server:
        replacement = tmp_path / "new"
        replacement.write_bytes(b"x" * 10)
        os.replace(replacement, bundle)
        response, body = request(server, path="/b.raucb", headers={"Range": "bytes=100-199"})
        assert body == CONTENT[100:200]
        assert sent_after_a_while(server, "b.raucb", 100)


def test_a_stalled_client_is_dropped_and_others_are_served(server):
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /hearth-1.2.0.raucb HTTP/1.1\r\nHost: x\r\n")  # never ends
    response, body = request(server)
    assert response.status == 200 and body == CONTENT
    stalled.settimeout(5)
    started = time.monotonic()
    assert stalled.recv(100) == b""  # closed by the server after its timeout
    assert time.monotonic() - started < 4
    stalled.close()


def test_garbage_on_the_wire_gets_an_error_and_the_server_goes_on(server):
    for garbage in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET " + b"A" * 70000 + b" HTTP/1.1\r\n\r\n",
                    b"GET /hearth-1.2.0.raucb HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(garbage)
            answer = b""
            while chunk := raw.recv(65536):  # the server answers with an error and closes
                answer += chunk
            assert b" 400 " in answer or b" 414 " in answer or b" 431 " in answer or (
                b"Error code: 400" in answer)  # an HTTP/0.9-style line gets a bare page
            assert CONTENT[:50] not in answer
    response, body = request(server, headers={"Range": "bytes=1-2"})
    assert response.status == 206 and body == CONTENT[1:3]


def test_two_bundles_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "x.raucb").write_bytes(b"1")
    with pytest.raises(ValueError, match="two bundles are named x.raucb"):
        BundleServer([tmp_path / "a/x.raucb", tmp_path / "b/x.raucb"], ("127.0.0.1", 0))


def test_byte_range_reads_one_range_and_refuses_past_the_end():
    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-4", 10) == (2, 4)
    assert byte_range(" bytes=8- ", 10) == (8, 9)
    with pytest.raises(RangeNotSatisfiable):
        byte_range("bytes=10-", 10)


def test_curl_fetches_ranges_and_the_whole_file(server, tmp_path):
    """libcurl is what RAUC streams with; curl is its command line."""
    url = server.url("127.0.0.1", "hearth-1.2.0.raucb")
    part = subprocess.run(["curl", "-sSf", "--range", "1000-1999", url], capture_output=True,
                          timeout=30, check=True).stdout
    assert part == CONTENT[1000:2000]
    out = tmp_path / "whole"
    subprocess.run(["curl", "-sSf", "-o", str(out), url], timeout=30, check=True)
    assert out.read_bytes() == CONTENT
    resumed = tmp_path / "resumed"
    resumed.write_bytes(CONTENT[:4000])
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(resumed), url], timeout=30,
                   check=True)
    assert resumed.read_bytes() == CONTENT


def test_rauc_fetches_a_signed_bundle_from_it_and_verifies_it(tmp_path):
    """RAUC 1.8 itself, with a board's settings (`hearth bundle check`'s system.conf), takes
    a bundle signed with `hearth bundle keygen`'s keys from the server by URL."""
    from agent import cli
    from agent.update import rauc_system
    from agent.update.bundle import sign, write_content
    assert cli.main(["bundle", "keygen", "--out", str(tmp_path / "keys"), "--site", "s"]) == 0
    boot, root = write_content(tmp_path / "content", "1.2.0")
    boot.write_bytes(os.urandom(65536))
    root.write_bytes(os.urandom(65536))
    bundle = sign(tmp_path / "content", tmp_path / "keys/signing/signing.crt",
                  tmp_path / "keys/signing/signing.key", tmp_path / "hearth-1.2.0.raucb")
    conf = tmp_path / "system.conf"
    conf.write_text(rauc_system.system_conf(rauc_system.partuuid_devices("4e639091"),
                                            keyring=str(tmp_path / "keys/ca/ca.crt"),
                                            status_file=str(tmp_path / "status.raucs")))
    with BundleServer([bundle], ("127.0.0.1", 0)) as server:
        result = subprocess.run(["rauc", f"--conf={conf}", "info", "--output-format=json",
                                 server.url("127.0.0.1", bundle.name)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Verified inline signature by 'CN = Hearth s update signing'" in result.stderr
        assert sent_after_a_while(server, bundle.name, bundle.stat().st_size)
    assert '"version":"1.2.0"' in result.stdout
