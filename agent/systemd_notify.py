"""sd_notify over the standard library: READY, STATUS and WATCHDOG datagrams to systemd.

systemd passes the socket in NOTIFY_SOCKET (a path, or '@name' for the abstract namespace);
without it (not under systemd, or in the simulator) every call does nothing.
"""

import socket


class Notifier:
    def __init__(self, socket_path: str | None):
        self.address = None
        if socket_path:
            self.address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self._socket: socket.socket | None = None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; False if there is no systemd to tell.

        Never blocks: the control loop must not wait on systemd. A full socket queue drops
        the message (a missed watchdog pet is caught by the next one)."""
        if self.address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        try:
            self._socket.sendto("\n".join(assignments).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
