"""Hands console work to the control loop's thread, so commands never race the loop.

Transports run on their own threads; anything that reads or changes the agent is posted here
and run by the loop between two periods (`service()`), where the agent is never half-way
through a tick. The loop does not wait for anyone: it runs what is queued and goes on.
"""

import queue
import threading
from typing import Any, Callable

from agent.errors import HearthError

WAIT_S = 3.0
"""How long a command waits for the loop; 30 control periods at the default 100 ms."""


class LoopUnavailable(HearthError, TimeoutError):
    """The control loop did not run a posted command in time (hung, stopped or shutting down)."""


class _Job:
    def __init__(self, action: Callable[[], Any]):
        self.action = action
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class LoopMailbox:
    """Commands posted from any thread, run in the loop thread by `service()`."""

    def __init__(self, wait_s: float = WAIT_S, max_jobs_per_period: int = 8):
        self.wait_s = wait_s
        self.max_jobs_per_period = max_jobs_per_period
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()

    def call(self, action: Callable[[], Any]) -> Any:
        """Run `action` in the loop thread and return its value (or raise its exception)."""
        job = _Job(action)
        self._jobs.put(job)
        if not job.done.wait(self.wait_s):
            # The loop may still pick it up later; make that a no-op.
            job.action = lambda: None
            raise LoopUnavailable(
                f"the control loop did not take the command within {self.wait_s:g} s; the "
                "agent may be hung or stopping: check `journalctl -u hearth-agent`")
        if job.error is not None:
            raise job.error
        return job.value

    def service(self) -> None:
        """Run queued jobs (at most max_jobs_per_period, so a flood cannot stretch a period)."""
        for _ in range(self.max_jobs_per_period):
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                job.value = job.action()
            except Exception as error:  # handed back to the caller's thread, never the loop
                job.error = error
            job.done.set()
