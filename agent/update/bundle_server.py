"""The site box's HTTP server for update bundles: what each board's RAUC streams its install from.

Why its own small server and not `python -m http.server`: RAUC's streaming client (libcurl,
behind an NBD device) reads the bundle in pieces with `Range: bytes=a-b` requests and checks
that every answer is the same file, so the server must answer ranges exactly (206 with a
`Content-Range`, 416 for a range past the end), give a strong `ETag` that changes only with
the content, and honour `If-Range`. It serves only the files it was given, under their own
names, and nothing else of the disk: each file is opened once at the start and read with
pread, so a file replaced or truncated on disk while boards stream it cannot mix two bundles
in one install. Requests come from the site LAN, so they are read as hostile: one range per
request (several are answered with the whole file, which RFC 9110 allows), numbers of any
length parsed without trusting them, a socket that stalls is dropped after `timeout_s`.
"""

import dataclasses
import hashlib
import http.server
import logging
import os
import re
import threading
import urllib.parse
from pathlib import Path

CHUNK_BYTES = 256 * 1024
RANGE_PATTERN = re.compile(r"bytes=(\d*)-(\d*)")
DEFAULT_TIMEOUT_S = 30.0
MAX_OFFSET_DIGITS = 19
"""Offsets with more digits are past the end of any file (2^63 has 19)."""


@dataclasses.dataclass(frozen=True)
class ServedFile:
    """One file as served: its open descriptor, size and strong ETag (the sha256 of its
    content, so a board and the rollout can name the same bundle by it)."""

    name: str
    fd: int
    size: int
    sha256: str

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


def open_served(path: Path) -> ServedFile:
    """`path` opened for serving; OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hashlib.sha256()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(CHUNK_BYTES * 4, size - offset), offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        return ServedFile(path.name, fd, offset, digest.hexdigest())
    except BaseException:
        os.close(fd)
        raise


class RangeNotSatisfiable(ValueError):
    """The range asked for starts past the end of the file (answered 416)."""


def _offset(digits: str) -> int:
    """A byte offset as sent; one longer than any file can be is read as "beyond the end"
    without asking int() to parse thousands of digits."""
    return int(digits) if len(digits) <= MAX_OFFSET_DIGITS else 10 ** MAX_OFFSET_DIGITS


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range `header` asks of a file of `size` bytes as (first, last) inclusive, or
    None to send the whole file (no header, one we do not read, several ranges);
    RangeNotSatisfiable when it starts past the end."""
    if header is None:
        return None
    match = RANGE_PATTERN.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # the last N bytes
        suffix = _offset(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size - 1
    first = _offset(first_text)
    if first >= size:
        raise RangeNotSatisfiable(header)
    last = _offset(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the served files; the server object carries them (no globals)."""

    server: "_HttpServer"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:
        self.server.log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        served = self.server.files.get(urllib.parse.unquote(path.lstrip("/")))
        if served is None or path != "/" + urllib.parse.quote(served.name):
            self._plain(404, "no such bundle here\n")
            return
        if_range = self.headers.get("If-Range")
        try:
            wanted = byte_range(self.headers.get("Range"), served.size)
        except RangeNotSatisfiable:
            if if_range is None or if_range.strip() == served.etag:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{served.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            wanted = None
        if if_range is not None and if_range.strip() != served.etag:
            wanted = None  # the client holds another file: it gets this one whole
        first, last = wanted if wanted is not None else (0, served.size - 1)
        self.send_response(206 if wanted is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", served.etag)
        self.send_header("Content-Length", str(last - first + 1))
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{served.size}")
        self.end_headers()
        if body:
            self._send(served, first, last)

    def _send(self, served: ServedFile, first: int, last: int) -> None:
        offset = first
        while offset <= last:
            chunk = os.pread(served.fd, min(CHUNK_BYTES, last - offset + 1), offset)
            if not chunk:  # the file shrank under us: end the connection short
                self.close_connection = True
                return
            self.wfile.write(chunk)
            offset += len(chunk)
        self.server.count(served.name, last - first + 1)

    def _plain(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], files: dict[str, ServedFile],
                 timeout_s: float, log: logging.Logger):
        self.files = files
        self.timeout_s = timeout_s
        self.log = log
        self.bytes_sent: dict[str, int] = {name: 0 for name in files}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def count(self, name: str, sent: int) -> None:
        with self._lock:
            self.bytes_sent[name] += sent

    def sent(self, name: str) -> int:
        with self._lock:
            return self.bytes_sent[name]


class BundleServer:
    """Serves `paths` (each under its own file name) on `address` until closed."""

    def __init__(self, paths: list[Path], address: tuple[str, int],
                 timeout_s: float = DEFAULT_TIMEOUT_S, log: logging.Logger | None = None):
        self.log = log or logging.getLogger("hearth.update")
        files: dict[str, ServedFile] = {}
        try:
            for path in paths:
                if path.name in files:
                    raise ValueError(f"two bundles are named {path.name}; serve one of them")
                files[path.name] = open_served(path)
            self._server = _HttpServer(address, files, timeout_s, self.log)
        except BaseException:
            for served in files.values():
                os.close(served.fd)
            raise
        self.files = files
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="bundle-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def bytes_sent(self, name: str) -> int:
        """Body bytes of `name` sent so far (whole answers and ranges)."""
        return self._server.sent(name)

    def url(self, host: str, name: str) -> str:
        """The address a board fetches `name` from, `host` being how boards reach this box."""
        return f"http://{host}:{self.port}/{urllib.parse.quote(name)}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        for served in self.files.values():
            os.close(served.fd)

    def __enter__(self) -> "BundleServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
