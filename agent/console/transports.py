"""How commands reach the processor: a serial port, a local Unix socket, and the agent's loop.

Each transport runs on its own daemon thread and only ever blocks that thread; anything that
touches the agent is handed to the loop through the LoopMailbox. The socket speaks one JSON
object per line both ways (request {"line": "status --json", "confirmed": false}, reply
{"result": {...}, "json": bool, "prompt": str}), so `hearth ctl` and `hearth console` never
parse human text. Every request line gets exactly one answer line; agent.console.wire decodes
it first and refuses what it cannot represent.
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
from agent.console.spec import Result, shown
from agent.console.wire import MAX_REQUEST, RequestRefused, decode_request
from agent.errors import HearthError

DEFAULT_SERIAL = "/dev/serial0"
DEFAULT_BAUD = 115200
DEFAULT_SOCKET = Path("/run/hearth/console.sock")
SOCKET_MODE = 0o660
"""Owner and group (hearth) only; /run/hearth itself is 0750 (RuntimeDirectoryMode=)."""
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


class _Client:
    """One connection to the socket; `idle_since` is None while a request of it runs."""

    def __init__(self, connection: socket.socket, now: float):
        self.connection = connection
        self.idle_since: float | None = now
        self.dropped = False


class SocketServer:
    """The agent's local socket: `hearth ctl` and `hearth console` talk to the agent here.

    At most MAX_CLIENTS connections are served. When a new one arrives and all places are
    taken, the client idle longest (waiting for its next request, however long that has
    been) is told why and dropped to make room, so a technician always gets in; only when
    every client is in the middle of a request is the newcomer asked to try again.
    """

    def __init__(self, processor: CommandProcessor, path: Path = DEFAULT_SOCKET,
                 on_problem: Callable[[str], None] = lambda message: None,
                 clock: Callable[[], float] = time.monotonic):
        self.processor = processor
        self.path = Path(path)
        self.on_problem = on_problem
        self.clock = clock
        self.refused_requests = 0
        """Requests refused before reaching the processor (see agent.console.wire)."""
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
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
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            _shut(client.connection)
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
            client = self._admit(connection)
            if client is None:
                connection.settimeout(1.0)
                try:
                    _send(connection, _refusal(f"the console is busy ({MAX_CLIENTS} clients, "
                                               "all running a command); try again in a few "
                                               "seconds"))
                except OSError:
                    pass  # the newcomer left already; nothing to tell
                connection.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="console client").start()

    def _admit(self, connection: socket.socket) -> _Client | None:
        """A place for the new connection, made by dropping the longest-idle client when
        full; None when every client is busy."""
        now = self.clock()
        with self._lock:
            if len(self._clients) >= MAX_CLIENTS:
                idle = [client for client in self._clients if client.idle_since is not None]
                if not idle:
                    return None
                oldest = min(idle, key=lambda client: client.idle_since)
                self._clients.remove(oldest)
                oldest.dropped = True
                # Ends its thread's wait for a request; that thread says why and closes.
                _shut(oldest.connection, socket.SHUT_RD)
            client = _Client(connection, now)
            self._clients.append(client)
        return client

    def _serve(self, client: _Client) -> None:
        connection = client.connection
        rate = RateLimit(20.0, 40, time.monotonic)
        try:
            connection.settimeout(IDLE_S)
            stream = connection.makefile("rb")
            while not self._stop.is_set():
                raw = stream.readline(MAX_REQUEST + 1)
                if client.dropped:
                    _send(connection, _refusal(
                        f"dropped: idle for {self.clock() - client.idle_since:.0f} s while "
                        f"the console was full ({MAX_CLIENTS} clients) and someone else "
                        "connected; reconnect when you have a request"))
                    return
                if not raw:
                    return
                if len(raw) > MAX_REQUEST:
                    self._count_refused()
                    _send(connection, _refusal(f"request longer than {MAX_REQUEST} bytes; "
                                               "the connection is closed"))
                    return
                if not raw.endswith(b"\n"):
                    self._count_refused()
                    _send(connection, _refusal("the request ended without a newline; end "
                                               "each JSON request with one"))
                    return
                if not rate.allow():
                    _send(connection, _refusal("too many requests; slow down"))
                    continue
                client.idle_since = None
                answer = self._answer_guarded(raw)
                client.idle_since = self.clock()
                _send(connection, answer)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            connection.close()

    def _answer_guarded(self, raw: bytes) -> dict[str, Any]:
        try:
            return self.answer(raw)
        except Exception as error:  # one bad request must not end the connection unanswered
            self.on_problem(f"console socket: a request failed: {type(error).__name__}: "
                            f"{shown(str(error))}")
            return _refusal(f"the request could not be handled ({type(error).__name__}); "
                            "nothing was done; see the journal")

    def answer(self, raw: bytes) -> dict[str, Any]:
        """The reply to one request line: decoded by agent.console.wire, then executed."""
        try:
            request = decode_request(raw)
        except RequestRefused as error:
            self._count_refused()
            return _refusal(str(error))
        processor = self.processor
        if request.prompt:
            return {"prompt": processor.prompt()}
        if request.line is not None:
            result, as_json = processor.execute_line(request.line, request.source,
                                                     request.confirmed)
        else:
            result, as_json = processor.execute(request.command, request.args, request.source,
                                                request.confirmed), True
        return {"result": result.as_dict(), "json": as_json, "prompt": processor.prompt()}

    def _count_refused(self) -> None:
        with self._lock:
            self.refused_requests += 1


def _refusal(reason: str) -> dict[str, Any]:
    return {"result": Result(False, "", reason=reason).as_dict(), "json": False}


def _send(connection: socket.socket, payload: dict[str, Any]) -> None:
    connection.sendall(json.dumps(payload, default=str).encode() + b"\n")


def _shut(connection: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    try:
        connection.shutdown(how)
    except OSError:
        pass  # already closed by its own thread


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

    From `start()` to `close()` it is one of the agent's inputs: at the start of every period,
    in the loop's thread, queued console work and the processor's poll run, and a console
    failure is an event, never a dead loop.
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
        self.agent.add_input(self, self._serve_loop)
        for transport in list(self.transports):
            try:
                transport.start()
            except (OSError, HearthError) as error:
                self._problem(f"console transport {getattr(transport, 'path', '')} not "
                              f"started: {error}; the agent runs on without it")
                self.transports.remove(transport)

    def _serve_loop(self) -> None:
        try:
            self.mailbox.service()
            self.processor.poll()
        except Exception as error:  # the console must never stop the control loop
            self._loop_failures += 1
            if self._loop_failures == 1:
                self._problem(f"console work failed in the loop: {type(error).__name__}: "
                              f"{error}")

    def close(self) -> None:
        self.agent.remove(self)
        for transport in self.transports:
            transport.stop()
        self.processor.close()

    def _problem(self, message: str) -> None:
        self.agent.record("console:problem", None, message)
