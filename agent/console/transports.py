"""How commands reach the processor: a serial port, a local Unix socket, and the agent's loop.

Each transport runs on its own daemon thread and only ever blocks that thread; anything that
touches the agent is handed to the loop through the LoopMailbox. The socket speaks one JSON
object per line both ways (request {"line": "status --json", "confirmed": false}, reply
{"result": {...}, "json": bool, "prompt": str}), so `hearth ctl` and `hearth console` never
parse human text.
"""

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.console.commands import CommandProcessor
from agent.console.loop import LoopMailbox
from agent.console.session import RateLimit, Session
from agent.console.spec import LOCAL_SOURCES, Result
from agent.errors import HearthError
from agent.safety.events import Event

DEFAULT_SERIAL = "/dev/serial0"
DEFAULT_BAUD = 115200
DEFAULT_SOCKET = Path("/run/hearth/console.sock")
SOCKET_MODE = 0o660
"""Owner and group (hearth) only; /run/hearth itself is 0750 (RuntimeDirectoryMode=)."""
MAX_REQUEST = 4096
MAX_CLIENTS = 4
IDLE_S = 120.0
REOPEN_S = 2.0
CLIENT_TIMEOUT_S = 30.0


class AgentNotRunning(HearthError, ConnectionError):
    """Nothing answers on the agent's console socket."""


class SerialTransport:
    """The console on a serial port (pyserial), 8N1; reopened if the device goes away."""

    def __init__(self, executor, device: str = DEFAULT_SERIAL, baud: int = DEFAULT_BAUD,
                 on_problem: Callable[[str], None] = lambda message: None,
                 source: str = "serial"):
        self.executor = executor
        self.device = device
        self.baud = baud
        self.on_problem = on_problem
        self.source = source
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"console {device}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2.0)

    def _run(self) -> None:
        import serial

        reported = ""
        while not self._stop.is_set():
            try:
                port = serial.Serial(self.device, self.baud, bytesize=serial.EIGHTBITS,
                                     parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE,
                                     timeout=0.2, write_timeout=2.0)
            except (serial.SerialException, OSError, ValueError) as error:
                message = (f"serial console {self.device} could not be opened ({error}); "
                           f"retrying every {REOPEN_S:g} s")
                if message != reported:
                    self.on_problem(message)
                    reported = message
                self._stop.wait(REOPEN_S)
                continue
            reported = ""
            try:
                self._serve(port)
            except (serial.SerialException, OSError) as error:
                self.on_problem(f"serial console {self.device} failed ({error}); reopening")
                self._stop.wait(REOPEN_S)
            finally:
                port.close()

    def _serve(self, port) -> None:
        import serial

        def write(data: bytes) -> None:
            try:
                port.write(data)
            except serial.SerialTimeoutException:
                pass  # nobody reads the line (no cable, flow stopped): drop output, not the loop

        session = Session(self.executor, self.source, write)
        session.start()
        while not self._stop.is_set():
            data = port.read(max(1, port.in_waiting))
            if data:
                try:
                    session.feed(data)
                except Exception as error:  # a console bug must not end the console
                    self.on_problem(f"serial console: {type(error).__name__}: {error}")


class SocketServer:
    """The agent's local socket: `hearth ctl` and `hearth console` talk to the agent here."""

    def __init__(self, processor: CommandProcessor, path: Path = DEFAULT_SOCKET,
                 on_problem: Callable[[str], None] = lambda message: None):
        self.processor = processor
        self.path = Path(path)
        self.on_problem = on_problem
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._clients = threading.Semaphore(MAX_CLIENTS)
        self.thread = threading.Thread(target=self._accept, name=f"console {path}",
                                       daemon=True)

    def start(self) -> None:
        """Bind (replacing a stale socket file a crashed agent left) and serve."""
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, SOCKET_MODE)
        listener.listen(MAX_CLIENTS)
        listener.settimeout(0.5)
        self._listener = listener
        self.thread.start()

    def _remove_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise HearthError(f"{self.path} exists and is not a socket; remove it or choose "
                              "another --console-socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except ConnectionRefusedError:
            self.path.unlink()
            return
        finally:
            probe.close()
        raise HearthError(f"another agent already answers on {self.path}; stop it first")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as error:
                self.on_problem(f"console socket {self.path}: {error}")
                self._stop.wait(REOPEN_S)
                continue
            if not self._clients.acquire(blocking=False):
                _send(connection, {"result": Result(False, "", reason=(
                    f"the console is busy ({MAX_CLIENTS} clients); try again")).as_dict()})
                connection.close()
                continue
            threading.Thread(target=self._serve, args=(connection,), daemon=True,
                             name="console client").start()

    def _serve(self, connection: socket.socket) -> None:
        rate = RateLimit(20.0, 40, time.monotonic)
        try:
            connection.settimeout(IDLE_S)
            stream = connection.makefile("rb")
            while not self._stop.is_set():
                raw = stream.readline(MAX_REQUEST + 1)
                if not raw:
                    return
                if len(raw) > MAX_REQUEST or not raw.endswith(b"\n"):
                    _send(connection, _refusal(f"request longer than {MAX_REQUEST} bytes"))
                    return
                if not rate.allow():
                    _send(connection, _refusal("too many requests; slow down"))
                    continue
                _send(connection, self.answer(raw))
        except (OSError, ValueError):
            return
        finally:
            connection.close()
            self._clients.release()

    def answer(self, raw: bytes) -> dict[str, Any]:
        try:
            request = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _refusal("the request is not a JSON object on one line")
        if not isinstance(request, dict):
            return _refusal("the request is not a JSON object on one line")
        source = request.get("source", "socket")
        if source not in LOCAL_SOURCES:
            return _refusal(f"source {source!r} is not a local source")
        confirmed = request.get("confirmed") is True
        processor = self.processor
        if "line" in request and isinstance(request["line"], str):
            result, as_json = processor.execute_line(request["line"], source, confirmed)
        elif isinstance(request.get("command"), str):
            result, as_json = processor.execute(request["command"], request.get("args") or {},
                                                source, confirmed), True
        elif request.get("prompt") is True:
            return {"prompt": processor.prompt()}
        else:
            return _refusal('expected {"line": ...}, {"command": ..., "args": ...} or '
                            '{"prompt": true}')
        return {"result": result.as_dict(), "json": as_json, "prompt": processor.prompt()}


def _refusal(reason: str) -> dict[str, Any]:
    return {"result": Result(False, "", reason=reason).as_dict(), "json": False}


def _send(connection: socket.socket, payload: dict[str, Any]) -> None:
    connection.sendall(json.dumps(payload, default=str).encode() + b"\n")


class SocketClient:
    """One request per connection to the agent's console socket."""

    def __init__(self, path: Path = DEFAULT_SOCKET, timeout_s: float = CLIENT_TIMEOUT_S):
        self.path = Path(path)
        self.timeout_s = timeout_s

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout_s)
        try:
            try:
                connection.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as error:
                raise AgentNotRunning(
                    f"the agent is not running: nothing answers on {self.path} "
                    f"({error.strerror}); start it with `systemctl start hearth-agent`, "
                    "`journalctl -u hearth-agent` says why it stopped") from None
            except PermissionError:
                raise AgentNotRunning(
                    f"no permission to use {self.path}: run as a member of group hearth "
                    "(or with sudo)") from None
            connection.sendall(json.dumps(payload).encode() + b"\n")
            reply = connection.makefile("rb").readline()
        except socket.timeout:
            raise AgentNotRunning(f"the agent did not answer on {self.path} within "
                                  f"{self.timeout_s:g} s; it may be hung: "
                                  "`journalctl -u hearth-agent`") from None
        finally:
            connection.close()
        if not reply:
            raise AgentNotRunning(f"the agent closed {self.path} without answering; it may be "
                                  "stopping: `systemctl status hearth-agent`")
        return json.loads(reply)


class RemoteExecutor:
    """`hearth console`'s executor: the agent behind its socket, or, while the agent is down,
    the commands that work without it (and a prompt that says so)."""

    def __init__(self, client: SocketClient, fallback: CommandProcessor):
        self.client = client
        self.fallback = fallback

    def execute_line(self, line: str, source: str,
                     confirmed: bool = False) -> tuple[Result, bool]:
        try:
            reply = self.client.request({"line": line, "confirmed": confirmed,
                                         "source": source})
        except AgentNotRunning as error:
            result, as_json = self.fallback.execute_line(line, source, confirmed)
            if not result.ok and "agent is not running" in result.reason:
                result = Result(False, result.command, reason=str(error))
            return result, as_json
        return Result.from_dict(reply.get("result") or {}), bool(reply.get("json"))

    def prompt(self) -> str:
        try:
            return str(self.client.request({"prompt": True}).get("prompt", "hearth> "))
        except (AgentNotRunning, ValueError):
            return self.fallback.prompt()


class ConsoleService:
    """The console inside the agent process: one processor, the loop mailbox, the transports.

    `loop_hook(should_stop)` wraps the loop's should_stop callable, which BoardAgent.run and
    SimulatedAgent.run_realtime call once per period in the loop's thread: queued console work
    and the processor's poll run there, and a console failure is an event, never a dead loop.
    """

    def __init__(self, agent, config, *, socket_path: Path | None = None,
                 serial_device: str | None = None, baud: int = DEFAULT_BAUD,
                 state_dir: Path | None = None, board_id: str | None = None):
        self.agent = agent
        self.mailbox = LoopMailbox()
        self.processor = CommandProcessor(agent, config, run_in_loop=self.mailbox.call,
                                          state_dir=state_dir, board_id=board_id)
        self.transports: list = []
        if socket_path is not None:
            self.transports.append(SocketServer(self.processor, socket_path, self._problem))
        if serial_device is not None:
            self.transports.append(SerialTransport(self.processor, serial_device, baud,
                                                   self._problem))
        self._loop_failures = 0

    def start(self) -> None:
        for transport in list(self.transports):
            try:
                transport.start()
            except (OSError, HearthError) as error:
                self._problem(f"console transport {getattr(transport, 'path', '')} not "
                              f"started: {error}; the agent runs on without it")
                self.transports.remove(transport)

    def loop_hook(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        def hooked() -> bool:
            try:
                self.mailbox.service()
                self.processor.poll()
            except Exception as error:  # the console must never stop the control loop
                self._loop_failures += 1
                if self._loop_failures == 1:
                    self._problem(f"console work failed in the loop: {type(error).__name__}: "
                                  f"{error}")
            return should_stop()
        return hooked

    def close(self) -> None:
        for transport in self.transports:
            transport.stop()
        self.processor.close()

    def _problem(self, message: str) -> None:
        agent = self.agent
        agent.events.record(Event(agent.clock(), "console:problem", None, message,
                                  agent.supervisor.mode.value, "warning"))
