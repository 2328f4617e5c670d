"""Shared pieces of the console tests: a simulated board serving its console on a real pty,
and the technician's end of the line. (No tests here; the test_console_* modules import it.)"""

import os
import re
import select
import threading
import time
from pathlib import Path

from agent.config import load_config
from agent.console.transports import ConsoleService
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent

PROMPT = re.compile(rb"hearth \S+ \S+> $")


class Board:
    """A SimulatedAgent running in real time on its own thread (as `hearth agent --sim` does),
    with its console on `serial_device` and a socket under its directory."""

    def __init__(self, directory: Path, serial_device: str | None, warm_up_s: float = 15.0,
                 **service_kwargs):
        self.simulated = SimulatedAgent(directory, SimClock())
        self.agent = self.simulated.agent
        self.simulated.run_for(warm_up_s)   # past STARTING, in simulated time
        self.socket_path = directory / "console.sock"
        self.service = ConsoleService(self.agent, load_config(self.simulated.config_path),
                                      socket_path=self.socket_path,
                                      serial_device=serial_device, board_id="b07",
                                      **service_kwargs)
        self.service.processor.run_command = self.simulated.poweroff_commands.append
        self._stop = threading.Event()
        self.loop_error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name="agent loop")

    def _loop(self) -> None:
        try:
            self.simulated.run_realtime(time.monotonic, time.sleep, self._stop.is_set)
        except BaseException as error:  # reported by the test, which fails on it
            self.loop_error = error

    def start(self) -> "Board":
        self.service.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.service.close()
        self.agent.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.loop_error is None


class Line:
    """The technician's end of a pty pair: write keystrokes, read until the next prompt."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, data: bytes | str) -> None:
        os.write(self.fd, data.encode() if isinstance(data, str) else data)

    def read_until(self, pattern: re.Pattern = PROMPT, timeout_s: float = 30.0) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    data += os.read(self.fd, 65536)
                except OSError:
                    break
                if pattern.search(data):
                    return data
        raise AssertionError(f"no {pattern.pattern!r} within {timeout_s} s; got {data[-2000:]!r}")

    def command(self, line: str, timeout_s: float = 10.0) -> str:
        """Type a line and Enter; what the board answered (echo removed), as text."""
        self.send(line + "\r")
        reply = self.read_until(timeout_s=timeout_s).decode("utf-8", "replace")
        echo = line + "\r\n"
        assert reply.startswith(echo), f"no echo of {line!r}: {reply[:200]!r}"
        return PROMPT.sub(b"", reply[len(echo):].encode()).decode().replace("\r\n", "\n")

    def drain(self) -> bytes:
        data = b""
        while select.select([self.fd], [], [], 0.2)[0]:
            data += os.read(self.fd, 65536)
        return data


def open_pty() -> tuple[int, int, str]:
    """A pty pair in raw mode: (master fd, slave fd, slave path)."""
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def bridge(fd_a: int, fd_b: int, stop: threading.Event) -> threading.Thread:
    """A null-modem cable between two pty masters, so two programs can each open a slave."""

    def copy() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([fd_a, fd_b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                os.write(fd_b if fd == fd_a else fd_a, data)

    thread = threading.Thread(target=copy, daemon=True, name="null modem")
    thread.start()
    return thread
