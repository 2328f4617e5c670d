"""What every sensor driver looks like to the rest of the agent."""

from typing import Any, Callable, ClassVar

from agent.drivers.i2c import open_bus
from agent.readings import Reading
from agent.schema import Field
from agent.seam import Hardware, SMBusLike


class DriverContext:
    """What a driver needs to find its device: the seam, plus one shared handle per I2C bus."""

    def __init__(self, hardware: Hardware):
        self.hardware = hardware
        self._buses: dict[int, SMBusLike] = {}
        self._shared: dict[str, object] = {}

    def i2c(self, bus_number: int) -> SMBusLike:
        if bus_number not in self._buses:
            self._buses[bus_number] = open_bus(self.hardware.i2c_bus, bus_number)
        return self._buses[bus_number]

    def shared(self, key: str, make: Callable[["DriverContext"], Any]) -> Any:
        """One object per board that several drivers use (e.g. the 1-wire bus scheduler)."""
        if key not in self._shared:
            self._shared[key] = make(self)
        return self._shared[key]

    def close(self) -> None:
        for bus in self._buses.values():
            bus.close()
        self._buses.clear()


class Sensor:
    """A configured sensor. `read()` never raises for device trouble: it returns readings whose
    validity says what went wrong, so one bad sensor cannot stall or crash the loop."""

    kind: ClassVar[str]
    doc: ClassVar[str]
    SCHEMA: ClassVar[dict[str, Field]]
    QUANTITIES: ClassVar[dict[str, str]]
    """What a sensor role may take from it (agent.config_schema.SENSOR_ROLES): quantity -> the
    suffix its reading adds to the sensor's name ("" for the name itself)."""

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def from_config(cls, settings: dict[str, Any], context: DriverContext) -> "Sensor":
        """Build from a validated [[sensor]] table (name and kind removed, defaults filled)."""
        raise NotImplementedError

    def read(self) -> list[Reading]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the driver holds (GPIO lines); buses are closed by the context."""
