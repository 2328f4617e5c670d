"""The hardware seam: every way the agent reaches hardware, passed in (DESIGN.md section 2).

On a Pi the defaults are the real thing; the simulator passes a temp sysfs tree, an
emulated SMBus and gpiozero's MockFactory. Nothing above this seam knows which it got.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Protocol


class SMBusLike(Protocol):
    """The part of smbus2.SMBus the drivers use."""

    def read_word_data(self, i2c_addr: int, register: int) -> int: ...
    def write_word_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...
    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def read_byte(self, i2c_addr: int) -> int: ...
    def close(self) -> None: ...


def real_i2c_bus(bus_number: int) -> SMBusLike:
    """Open /dev/i2c-N; imported lazily so the package imports on machines without smbus2."""
    import smbus2

    return smbus2.SMBus(bus_number)


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Handles to a board's hardware and clock.

    root: where sysfs and procfs live ('/' on a Pi, a temp tree in the simulator).
    i2c_bus: opens an I2C bus by number.
    pin_factory: a gpiozero pin factory; None means gpiozero's default (lgpio on a Pi).
    clock: monotonic seconds; readings and deadlines use it, never time.monotonic directly.
    """

    root: Path = Path("/")
    i2c_bus: Callable[[int], SMBusLike] = real_i2c_bus
    pin_factory: Any = None
    clock: Callable[[], float] = time.monotonic

    def path(self, absolute: str) -> Path:
        """Map an absolute sysfs/procfs path such as '/sys/class/thermal' under root."""
        return self.root / absolute.lstrip("/")
