"""A clock the simulator moves by hand, so hours of heating run in seconds."""


class SimClock:
    """Monotonic seconds; call it like time.monotonic. Only `advance` moves it."""

    def __init__(self, start_s: float = 1000.0):
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"a monotonic clock cannot go back ({dt_s} s)")
        self.now_s += dt_s
