"""Deadline scheduling on a monotonic clock: period k starts at start + k * period, never drifting."""

import math


class LoopTimer:
    def __init__(self, period_s: float, start_s: float):
        self.period_s = period_s
        self._start_s = start_s
        self._index = 0
        self.overruns = 0

    @property
    def next_deadline_s(self) -> float:
        return self._start_s + self._index * self.period_s

    def advance(self, now_s: float) -> float:
        """Move to the next period after one iteration finished at `now_s`; return its start.

        An iteration that ran past one or more deadlines counts as an overrun and the missed
        periods are skipped, so the loop stays on its grid instead of catching up in a burst.
        """
        self._index += 1
        if now_s > self.next_deadline_s:
            missed = math.floor((now_s - self.next_deadline_s) / self.period_s) + 1
            self.overruns += 1
            self._index += missed
        return self.next_deadline_s
