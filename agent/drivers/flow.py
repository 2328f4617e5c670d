"""A pulse-output water flow meter counted on a GPIO edge through gpiozero.

Flow is pulse frequency over a sliding window divided by the meter's K factor. "No pulses in
the window" is a valid zero flow; a counter that is not running (the pin could not be opened,
or it has not been counting for a whole window yet) is unknown, never zero.
"""

import collections

from agent.drivers.base import DriverContext, Sensor
from agent.readings import Reading, missing, ok
from agent.schema import Field

UNIT = "L/min"


class FlowMeter(Sensor):
    kind = "flow"
    doc = "pulse-output flow meter (hall-effect turbine) counted on a GPIO rising edge"
    SCHEMA = {
        "pin": Field(int, "BCM GPIO number of the meter's pulse output", min=0, max=27),
        "pulses_per_litre": Field(float, "the meter's K factor", min=1.0, max=100000.0),
        "window_s": Field(float, "pulses are counted over this sliding window",
                          default=5.0, min=0.5, max=60.0),
    }

    def __init__(self, name: str, context: DriverContext, pin: int,
                 pulses_per_litre: float, window_s: float = 5.0):
        super().__init__(name)
        self.pulses_per_litre = pulses_per_litre
        self.window_s = window_s
        self._clock = context.hardware.clock
        self._edges: collections.deque[float] = collections.deque()
        self._started_at = self._clock()
        self._device = None
        self._open_error = ""
        try:
            from gpiozero import InputDevice

            self._device = InputDevice(pin, pull_up=True,
                                       pin_factory=context.hardware.pin_factory)
            # Count at the pin, falling edges only: the rising edge of every pulse then costs
            # no callback, and no active/inactive event objects are kept for a counter.
            self._device.pin.edges = "falling"
            self._device.pin.when_changed = self._count
        except Exception as error:  # gpiozero raises many kinds; all mean "not counting"
            if self._device is not None:
                self._device.close()
                self._device = None
            self._open_error = f"GPIO{pin} could not be opened: {error}"

    @classmethod
    def from_config(cls, settings: dict, context: DriverContext) -> "FlowMeter":
        return cls(settings["name"], context, settings["pin"], settings["pulses_per_litre"],
                   settings["window_s"])

    def _count(self, ticks: object, state: bool) -> None:
        """Called by gpiozero on each pulse: the open-collector output pulls the pulled-up line low."""
        self._edges.append(self._clock())

    def read(self) -> list[Reading]:
        now = self._clock()
        if self._device is None:
            return [missing(self.name, UNIT, now, self._open_error)]
        if now - self._started_at < self.window_s:
            return [missing(self.name, UNIT, now, "counting for less than one window")]
        while self._edges and self._edges[0] <= now - self.window_s:
            self._edges.popleft()
        litres_per_s = len(self._edges) / self.window_s / self.pulses_per_litre
        return [ok(self.name, litres_per_s * 60.0, UNIT, now)]

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
