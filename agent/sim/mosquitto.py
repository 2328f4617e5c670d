"""A Mosquitto process of our own: the broker a real site runs, started by the simulator, the
benchmarks and the tests on a free loopback port, and stopped and started again on that port
for a broker outage."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import BrokerProcessError

SBIN_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
"""Where Debian and a source build put it; /usr/sbin is not on every user's PATH."""
LOOPBACK = "127.0.0.1"


def find_mosquitto() -> str:
    """The mosquitto executable, or an error that says how to install it."""
    found = shutil.which("mosquitto") or next(
        (path for path in SBIN_PATHS if os.access(path, os.X_OK)), None)
    if found is None:
        raise BrokerProcessError(
            "mosquitto is not installed (not on PATH, nor in /usr/sbin): the simulator runs "
            "the broker a site runs, Mosquitto, on this machine. Install it with "
            "`sudo apt install mosquitto` or `scripts/setup-dev --demo`.")
    return found


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def loopback_config(port: int, directory: Path, log_path: Path, persistence: bool) -> str:
    """Anonymous, on loopback only. With persistence, retained messages and sessions survive a
    stop and a start, as on a site's broker (which runs with persistence on)."""
    lines = [f"listener {port} {LOOPBACK}", "allow_anonymous true",
             f"persistence {'true' if persistence else 'false'}"]
    if persistence:
        lines.append(f"persistence_location {directory}/")
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to the mosquitto user, who cannot write here
    lines += [f"log_dest file {log_path}", "log_type error", "log_type warning",
              "log_type notice"]
    return "\n".join(lines) + "\n"


class Mosquitto:
    """One mosquitto process running `config_path`, listening on `host`:`port`.

    stop() is SIGTERM, so a broker with persistence writes its database as a real shutdown
    does; start() again serves the same port, and clients reconnect as they do in the field.
    """

    def __init__(self, config_path: Path, port: int, log_path: Path, host: str = LOOPBACK,
                 verbose: bool = False):
        self.executable = find_mosquitto()
        self.config_path = config_path
        self.port = port
        self.host = host
        self.log_path = log_path
        self.verbose = verbose
        self.process: subprocess.Popen | None = None

    @classmethod
    def on_loopback(cls, directory: Path, persistence: bool = True,
                    log_path: Path | None = None) -> "Mosquitto":
        """A broker of our own on a free loopback port, its config and database in
        `directory`, its log in `log_path` (default directory/mosquitto.log); not started."""
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_path = log_path or directory / "mosquitto.log"
        config_path = directory / "mosquitto.conf"
        config_path.write_text(loopback_config(port, directory, log_path, persistence))
        return cls(config_path, port, log_path)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> "Mosquitto":
        """Start it and return once it accepts connections."""
        command = [self.executable, "-c", str(self.config_path)] + (["-v"] if self.verbose
                                                                     else [])
        with self.log_path.open("ab") as output:  # what it says before its own log opens
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerProcessError(
                    f"mosquitto exited with status {self.process.returncode} at start "
                    f"(config {self.config_path}): {self._log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerProcessError(
            f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s:g} s "
            f"(config {self.config_path}): {self._log_tail()}")

    def stop(self) -> None:
        """Stop it and wait until it has written its database; harmless when stopped."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cpu_s(self) -> float:
        """User and system CPU seconds of the running process (for the benchmarks)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return "no log written"
        return text[-2000:] or "its log is empty"

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
