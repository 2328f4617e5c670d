"""A pulse-output water flow meter counted on a GPIO edge through gpiozero.

Flow is pulse frequency over a sliding window divided by the meter's K factor. "No pulses in
the window" is a valid zero flow; a counter that is not running (the pin could not be opened,
or it has not been counting for a whole window yet) is unknown, never zero. Pulses faster than
the meter's rated maximum flow are not water: a turbine is not linear beyond its rating, and
usually they are interference on the line, so such a window is invalid.
"""

import collections

from agent.drivers.base import DriverContext, Sensor
from agent.readings import Reading, invalid, missing, ok
from agent.schema import Field

UNIT = "L/min"


class FlowMeter(Sensor):
    kind = "flow"
    doc = "pulse-output flow meter (hall-effect turbine) counted on a GPIO rising edge"
    QUANTITIES = {"flow": ""}
    SCHEMA = {
        "pin": Field(int, "BCM GPIO number of the meter's pulse output", min=0, max=27),
        "pulses_per_litre": Field(float, "the meter's K factor", min=1.0, max=100000.0),
        "window_s": Field(float, "pulses are counted over this sliding window",
                          default=5.0, min=0.5, max=60.0),
        "max_flow_l_per_min": Field(float, "the meter's rated maximum flow; faster pulses are "
                                    "rejected as noise (default: a YF-S201's 30 L/min)",
                                    default=30.0, min=0.1, max=10000.0),
    }

    def __init__(self, name: str, context: DriverContext, pin: int,
                 pulses_per_litre: float, window_s: float = 5.0,
                 max_flow_l_per_min: float = 30.0):
        super().__init__(name)
        self.pin = pin
        self.pulses_per_litre = pulses_per_litre
        self.window_s = window_s
        self.max_flow_l_per_min = max_flow_l_per_min
        self._max_pulses = max_flow_l_per_min / 60.0 * pulses_per_litre * window_s
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
                   settings["window_s"], settings["max_flow_l_per_min"])

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
        pulses = len(self._edges)
        l_per_min = pulses / self.window_s / self.pulses_per_litre * 60.0
        if pulses > self._max_pulses:
            return [invalid(self.name, UNIT, now,
                            f"GPIO{self.pin}: {pulses / self.window_s:.0f} pulses/s is "
                            f"{l_per_min:.1f} L/min, beyond the meter's "
                            f"{self.max_flow_l_per_min:g} L/min rating: interference on the "
                            "pulse line? Check its wiring, pulses_per_litre and "
                            "max_flow_l_per_min")]
        return [ok(self.name, l_per_min, UNIT, now)]

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
