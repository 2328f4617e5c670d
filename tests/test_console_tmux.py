"""A technician's session as it really happens: picocom in tmux on one end of a serial line,
the agent (pyserial) on the other; keys typed with send-keys, the screen read with
capture-pane. picocom and tmux come from scripts/setup-dev's Debian packages."""

import os
import subprocess
import threading
import time
import uuid

import pytest

from test_console_support import Board, bridge, open_pty


class Tmux:
    def __init__(self, command: str):
        self.socket = f"hearth-test-{uuid.uuid4().hex[:12]}"
        self.run("new-session", "-d", "-x", "160", "-y", "50", command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "0", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "0", "-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "0", "-S", "-200")

    def wait_for(self, text: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def session(sim_dir):
    board_master, board_slave, board_path = open_pty()
    laptop_master, laptop_slave, laptop_path = open_pty()
    stop = threading.Event()
    cable = bridge(board_master, laptop_master, stop)
    board = Board(sim_dir, board_path).start()
    tmux = Tmux(f"picocom -b 115200 -q {laptop_path}")
    try:
        yield board, tmux
    finally:
        tmux.kill()
        board.stop()
        stop.set()
        cable.join(timeout=2)
        for fd in (board_master, board_slave, laptop_master, laptop_slave):
            os.close(fd)
    assert board.loop_error is None


def test_technician_session_in_picocom(session):
    board, tmux = session
    tmux.keys("Enter")
    tmux.wait_for("hearth b07 NORMAL>")
    tmux.type("status")
    tmux.wait_for("setpoint 3.00 W from fallback")

    tmux.run("send-keys", "-t", "0", "-l", "faultz")
    tmux.keys("BSpace")
    tmux.type("s")
    tmux.wait_for("no faults")

    tmux.type("setpoint 4.5 for 10")
    tmux.wait_for("setpoint 4.5 W (local) for 10 min")
    assert board.agent.setpoints.current_w(board.agent.clock()) == 4.5

    tmux.type("shutdown")
    tmux.wait_for("Type yes to go ahead")
    tmux.type("no")
    tmux.wait_for("cancelled: nothing was changed")
    assert not board.agent.supervisor.shutdown.started

    tmux.type("events 2 --json")
    tmux.wait_for('{"ok": true, "command": "events"')

    tmux.type("mode safe")
    tmux.wait_for("SAFE requested")
    time.sleep(0.5)
    tmux.keys("Enter")
    tmux.wait_for("hearth b07 SAFE>")
    tmux.type("mode auto")
    tmux.wait_for("automatic: the leader's setpoint")
    assert board.agent.setpoints.current_w(board.agent.clock()) == 3.0
