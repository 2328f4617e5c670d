"""Garbage on the console line (random bytes, 10 kB lines, bursts) never crashes the agent or
changes its state, and the console still answers afterwards."""

import itertools
import os
import random
import time

from hypothesis import example, given, settings, strategies as st

from agent.config import load_config
from agent.console.commands import CommandProcessor
from agent.console.session import LineDiscipline, Session
from agent.sim.clock import SimClock
from agent.sim.harness import SimulatedAgent
from test_console_support import Board, Line, open_pty


def board_state(agent, processor) -> tuple:
    """Everything a console command could change."""
    now = agent.clock()
    return (agent.setpoints.current_w(now), agent.setpoints.status, dict(agent.supervisor.latched),
            agent.supervisor.interlock_reason, agent.supervisor.shutdown.started,
            processor.request.source, processor.override_until, processor.tune,
            processor.calibration, type(agent.controller).__name__, len(agent.events.events),
            agent.supervisor.mode)


def test_random_bytes_change_nothing(sim_dir):
    simulated = SimulatedAgent(sim_dir, SimClock())
    simulated.run_for(15)
    agent = simulated.agent
    processor = CommandProcessor(agent, load_config(simulated.config_path), board_id="b07",
                                 run_command=simulated.poweroff_commands.append)
    output = bytearray()
    ticks = itertools.count()

    def fresh_session() -> Session:
        return Session(processor, "serial", output.extend, clock=lambda: float(next(ticks)))

    before = board_state(agent, processor)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=512), max_size=20))
    @example([b"\x00\x1b"])  # an ESC used to swallow the Ctrl-C after it
    def feed_garbage(chunks):
        session = fresh_session()
        for chunk in chunks:
            session.feed(chunk)
        assert board_state(agent, processor) == before
        # The line is still usable once the technician presses Ctrl-C and types a command.
        del output[:]
        session.feed(b"\x03status\r")
        assert b"board b07  mode NORMAL" in output

    feed_garbage()
    assert simulated.poweroff_commands == []


def test_noise_inside_a_command_line_drops_the_whole_line():
    discipline = LineDiscipline(echo=False)
    _, events = discipline.feed(b"mode s\xffafe\rmode\x00 safe\nstatus\r")
    assert events == [("noise", 1), ("noise", 1), ("line", "status")]


def test_ten_kilobyte_lines_and_bursts_on_a_live_board(sim_dir):
    master, slave, path = open_pty()
    board = Board(sim_dir, path).start()
    line = Line(master)
    try:
        line.read_until()
        before = board_state(board.agent, board.service.processor)
        generator = random.Random(7)
        for _ in range(3):
            line.send(bytes(generator.getrandbits(8) for _ in range(10_000)) + b"\r")
            line.send(b"A" * 10_000 + b"\r\n")
            line.send(b"\r" * 500)
            line.send(b"bogus command\r" * 200)
            line.drain()
        report_time = board.agent.last_report.time
        time.sleep(0.5)
        assert board.alive and board.agent.last_report.time > report_time, "the loop stopped"
        time.sleep(4.5)   # let the rate limit refill
        line.drain()
        assert board_state(board.agent, board.service.processor)[:-2] == before[:-2]
        line.send("\x03")
        line.read_until()
        assert "board b07  mode NORMAL" in line.command("status")
    finally:
        board.stop()
        os.close(master)
        os.close(slave)
    assert board.loop_error is None
