"""Many Links' network I/O on one thread with epoll: how the simulator and benchmarks run.

A board, a leader or a site in the field has one Link, served by paho's own loop thread
(agent.mqtt.link.ThreadedIo). That thread waits in select(), which cannot watch a file
descriptor above 1023, and each threaded client holds three (its socket and a wake-up socket
pair), so about 340 threaded Links fit in a process. A NetworkLoop runs any number of Links on
one thread, one descriptor each, and saves a thread per connection; a Link takes it as its `io`.
"""

import array
import fcntl
import logging
import select
import socket
import termios
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

READS_PER_WAKE = 256
"""Packets a NetworkLoop reads from one ready socket before it serves the others."""


class NetworkLoop:
    """The network I/O of many Links' paho clients on one thread, with epoll.

    The thread is its own (default), or the owner's: made with threaded=False, the loop runs
    only inside run_once(), wait() and settle(), which the site simulator calls between its
    steps, so a whole simulated site is one busy thread and does not pay for contention over
    the GIL.

    paho's external-loop interface: the socket callbacks tell us which sockets to watch;
    loop_read, loop_write and, once a second, loop_misc (keepalive) run on this thread only. A
    connection that fails or drops is retried after paho's backoff (reconnect_min_s doubling up
    to reconnect_max_s), reset by a successful connection. `client.reconnect()` connects with a
    blocking TCP connect, which is immediate on the loopback and LAN brokers this is for.

    Two gaps in paho's interface are closed here. A publish from another thread asks for a write
    through on_socket_register_write only when paho's `_registered_write` flag is clear, and
    this thread clears that flag after it has found the queue empty: a packet queued in between
    waits unsent until the next keepalive. So the Link tells the loop after every publish
    (`flush`), and the loop writes for it. And a keepalive that times out inside loop_misc
    closes the socket but returns success, so the loop checks for a closed socket itself.
    """

    MISC_PERIOD_S = 1.0

    def __init__(self, name: str = "mqtt-network", log: logging.Logger | None = None,
                 threaded: bool = True):
        self.log = log or logging.getLogger("hearth.mqtt")
        self._epoll = select.epoll()
        self._by_fd: dict[int, paho.Client] = {}
        self._clients: dict[paho.Client, list[float]] = {}
        """client -> [backoff s, min s, max s]"""
        self._retry_at: dict[paho.Client, float] = {}
        """client -> its next connect attempt (monotonic), for clients not connected"""
        self._lock = threading.Lock()
        self._flush_due: set[paho.Client] = set()
        self._wake_r, self._wake_w = _socketpair()
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._stopping = False
        self._next_misc_s = time.monotonic() + self.MISC_PERIOD_S
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def add(self, client: paho.Client, reconnect_min_s: float, reconnect_max_s: float) -> None:
        """Start connecting `client` (after connect_async) and keep it connected."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients[client] = [0.0, float(reconnect_min_s), float(reconnect_max_s)]
            self._retry_at[client] = time.monotonic()
        self._wake()

    def remove(self, client: paho.Client, timeout_s: float = 2.0) -> None:
        """Stop reconnecting `client`; wait until its DISCONNECT is written and the socket closed
        (the caller has called client.disconnect())."""
        with self._lock:
            self._clients.pop(client, None)
            self._retry_at.pop(client, None)
        self._wake()
        deadline = time.monotonic() + timeout_s
        while client.socket() is not None and time.monotonic() < deadline:
            self.wait(0.01)
        sock = client.socket()
        if sock is not None:  # never answered: close it here, the loop forgets the descriptor
            self._forget(sock)

    def flush(self, client: paho.Client) -> None:
        """Write what `client` has queued, from this loop's thread (any thread may call)."""
        with self._lock:
            wake = not self._flush_due and self._thread is not None
            self._flush_due.add(client)
        if wake:
            self._wake()

    def backoff(self, client: paho.Client, reconnect_min_s: float,
                reconnect_max_s: float) -> None:
        """Change `client`'s reconnect backoff from its next lost connection on."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is not None:
                retry[1], retry[2] = float(reconnect_min_s), float(reconnect_max_s)

    def connected(self, client: paho.Client) -> None:
        """Called by the Link on a successful connection: the backoff starts over."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is not None:
                retry[0] = 0.0

    def wait_for_publish(self, info: paho.MQTTMessageInfo, timeout_s: float) -> None:
        """Run or wait for the loop until `info`'s message is acknowledged, or timeout_s."""
        deadline = time.monotonic() + timeout_s
        while not info.is_published() and time.monotonic() < deadline:
            self.wait(0.01)

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho's socket callbacks (any thread) ------------------------------------------------

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._by_fd[sock.fileno()] = client
        try:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except (OSError, ValueError):
            self._epoll.modify(sock.fileno(), select.EPOLLIN)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._forget(sock)

    def _on_register_write(self, client, userdata, sock) -> None:
        try:
            self._epoll.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        except (OSError, ValueError):
            pass  # closed meanwhile: the reconnect writes what waits

    def _on_unregister_write(self, client, userdata, sock) -> None:
        try:
            self._epoll.modify(sock.fileno(), select.EPOLLIN)
        except (OSError, ValueError):
            pass

    def _forget(self, sock) -> None:
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return
        if fd < 0:
            return
        self._by_fd.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    # -- the loop thread -------------------------------------------------------------------

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Connect what is due, write what was flushed, and serve the sockets that are ready,
        waiting up to timeout_s for one; returns how many clients had something to do. Run by
        the loop's thread, or by the owner of a NetworkLoop made with threaded=False."""
        now = time.monotonic()
        with self._lock:
            due = [c for c, at in self._retry_at.items() if at <= now] if self._retry_at else []
            waits = list(self._retry_at.values())
        for client in due:
            self._connect(client)
        busy = self._write_flushed()
        if busy:
            timeout_s = 0.0
        timeout_s = max(0.0, min([now + timeout_s, self._next_misc_s, *waits])
                        - time.monotonic())
        try:
            events = self._epoll.poll(timeout_s)
        except InterruptedError:
            events = []
        for fd, mask in events:
            if fd == self._wake_r.fileno():
                try:
                    self._wake_r.recv(4096)
                except (BlockingIOError, OSError):
                    pass
                continue
            client = self._by_fd.get(fd)
            if client is None:
                continue
            busy += 1
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                rc = self._read(client)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mask & select.EPOLLOUT:
                rc = self._guarded(client.loop_write)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(client)
        if time.monotonic() >= self._next_misc_s:
            self._next_misc_s = time.monotonic() + self.MISC_PERIOD_S
            with self._lock:
                clients = list(self._clients)
            for client in clients:
                if client.socket() is not None:
                    self._guarded(client.loop_misc)
                if client.socket() is None:  # lost, and loop_misc may have said success
                    self._lost_unless_retrying(client)
        return busy + self._write_flushed()

    def wait(self, seconds: float) -> None:
        """Let time pass for the loop: sleep while its thread works, or run it meanwhile."""
        if self._thread is not None:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.run_once(left)

    def settle(self, max_rounds: int = 20) -> None:
        """threaded=False: move what is ready until nothing moves (clients write what they
        queued, read what the broker sent into their Links' inboxes). A bound on rounds, so a
        client that always has something cannot hold the owner."""
        for _ in range(max_rounds):
            if not self.run_once(0.0):
                return

    def _run(self) -> None:
        while not self._stopping:
            self.run_once(self.MISC_PERIOD_S)

    def _read(self, client: paho.Client) -> MQTTErrorCode:
        """Read what the socket holds. paho's loop_read reads one packet of QoS 0 traffic
        (it ignores its argument), so without this a leader hearing 64 boards would take 64
        rounds of the loop for one second's states."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(READS_PER_WAKE):
            rc = self._guarded(client.loop_read)
            sock = client.socket()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None or not _unread(sock):
                break
        return rc

    def _write_flushed(self) -> int:
        with self._lock:
            if not self._flush_due:
                return 0
            clients, self._flush_due = self._flush_due, set()
        for client in clients:
            if client.want_write() and client.socket() is not None:
                if self._guarded(client.loop_write) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost(client)
        return len(clients)

    def _guarded(self, call, *args) -> MQTTErrorCode:
        try:
            return call(*args)
        except Exception:
            self.log.exception("paho failed in the network loop; reconnecting that client")
            return MQTTErrorCode.MQTT_ERR_UNKNOWN

    def _connect(self, client: paho.Client) -> None:
        try:
            client.reconnect()
        except Exception as error:  # refused, unreachable, TLS: try again after the backoff
            self.log.debug("connect failed: %s", error)
            self._lost(client)
            return
        with self._lock:
            self._retry_at.pop(client, None)
        self._wake()

    def _lost(self, client: paho.Client) -> None:
        """Schedule the next attempt, unless the link was closed (then paho disconnected it)."""
        with self._lock:
            retry = self._clients.get(client)
            if retry is None:
                return
            retry[0] = retry[1] if retry[0] == 0 else min(retry[0] * 2, retry[2])
            self._retry_at[client] = time.monotonic() + retry[0]

    def _lost_unless_retrying(self, client: paho.Client) -> None:
        with self._lock:
            if client not in self._clients or client in self._retry_at:
                return
        self._lost(client)


def _unread(sock) -> bool:
    """Whether bytes wait in `sock` (or, for TLS, in its decrypted buffer)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except (OSError, ValueError):
        return False
    return count[0] > 0


def _socketpair() -> tuple[socket.socket, socket.socket]:
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    return reader, writer
