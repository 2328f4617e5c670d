"""The site simulator's board farms (agent/sim/board_farm.py): boards stepped in a worker
process are the same boards as in the simulation's own process, and a worker that fails says
so instead of hanging the run."""

import time

import pytest

from agent.mqtt.network_loop import NetworkLoop
from agent.sim.board_farm import BoardSpec, FarmSettings, LocalFarm, WorkerFarm
from agent.sim.clock import SimClock

WATER = {"m1": (40.0, 0.5)}


@pytest.fixture
def broker(mosquitto):
    return mosquitto()


def farms(broker, sim_dir, seed=7):
    settings = FarmSettings("127.0.0.1", broker.port, clock_start_s=1000.0,
                            wall_epoch=time.time(), water_c=40.0)
    clock = SimClock(1000.0)
    network = NetworkLoop(threaded=False)
    local = LocalFarm([BoardSpec(sim_dir / "local", "m1", "b01", seed)], settings, clock, network)
    worker = WorkerFarm([BoardSpec(sim_dir / "worker", "m1", "b02", seed)], settings,
                        network.wait)
    return clock, network, local, worker


def test_a_board_in_a_worker_steps_exactly_like_one_in_this_process(broker, sim_dir):
    clock, network, local, worker = farms(broker, sim_dir)
    try:
        for _ in range(60):
            worker.begin_step(1.0, WATER)
            clock.advance(1.0)
            local.begin_step(1.0, WATER)
            network.settle()
            here = local.end_step()[0]["m1/b01"]
            there = worker.end_step()[0]["m1/b02"]
        assert here.mode == there.mode == "NORMAL"
        assert here == there  # same seed, same water, same clock: the same physics and agent
        assert worker.connected() and local.connected()
    finally:
        local.close()
        worker.close()
        network.close()


def test_steps_queued_ahead_with_a_fault_answer_in_order_and_match_this_process(broker,
                                                                              sim_dir):
    """The site queues each period's inputs two periods ahead; a worker answers every step in
    order, a question asked meanwhile after them, and a fault carried by a step lands in the
    same period as in this process."""
    clock, network, local, worker = farms(broker, sim_dir)
    fault_at = {20: (("m1/b01", "i2c_nack:oil", True), ("m1/b02", "i2c_nack:oil", True))}
    try:
        worker.begin_step(1.0, WATER)
        for step in range(1, 41):
            faults = fault_at.get(step + 1, ())
            worker.begin_step(1.0, WATER, faults)  # period step + 1, before period step ends
            if step == 10:
                assert worker.connected()  # answered after the two steps queued before it
            clock.advance(1.0)
            local.begin_step(1.0, WATER, fault_at.get(step, ()))
            network.settle()
            here = local.end_step()[0]["m1/b01"]
            there = worker.end_step()[0]["m1/b02"]
            assert here == there, f"period {step}"
        assert here.mode == "SAFE"  # the oil sensor stopped answering at period 20
    finally:
        local.close()  # the worker still holds period 41: closing takes its answer first
        worker.close()
        network.close()


def test_a_worker_that_dies_is_reported_and_closing_mid_step_does_not_hang(broker, sim_dir):
    clock, network, local, worker = farms(broker, sim_dir)
    try:
        worker.begin_step(1.0, WATER)
        assert worker.end_step()[0]
        worker.begin_step(1.0, WATER)
        worker.close()  # a run that ended early, with a step in flight
        assert worker.process.returncode == 0

        clock, network2, local2, dying = farms(broker, sim_dir / "again")
        dying.process.kill()
        dying.begin_step(1.0, WATER)
        with pytest.raises(RuntimeError, match="board worker .* exited"):
            dying.end_step()
        dying.close()
        local2.close()
        network2.close()
    finally:
        local.close()
        network.close()
