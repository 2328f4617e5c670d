"""Shared I2C plumbing for the chip drivers: register byte order, retries and a failure backoff.

The INA219/INA226, TMP117 and ADS1115 send the most significant byte of a register first,
while an SMBus word transfer puts the first byte in the low half of the word, so every word is
swapped on its way in and out. A chip that does not answer (EREMOTEIO: no acknowledge), holds
the bus (ETIMEDOUT) or garbles a transfer (EIO) gets a bounded number of retries and is then
left alone for a while, so one bad device costs the control loop a known, small number of
bus transactions and never stalls it.
"""

import errno
import logging
import os
from typing import Any, Callable

from agent.errors import DeviceFailedError, HardwareError
from agent.seam import SMBusLike

log = logging.getLogger(__name__)

# Errors a real bus produces for a chip that is briefly unhappy; anything else (a closed file
# descriptor, a missing /dev/i2c-N) will not get better by asking again at once.
TRANSIENT_ERRNOS = frozenset({errno.EREMOTEIO, errno.ETIMEDOUT, errno.EIO, errno.EAGAIN})


def swap_word(word: int) -> int:
    """Swap the two bytes of a 16-bit word (SMBus little-endian <-> chip big-endian)."""
    return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)


def signed16(word: int) -> int:
    """A 16-bit register read as two's complement."""
    return word - 0x10000 if word & 0x8000 else word


def open_bus(open_i2c_bus: Callable[[int], SMBusLike], bus_number: int) -> SMBusLike:
    """Open /dev/i2c-N through the seam's factory. A bus that is not there (I2C not enabled,
    or the wrong number in the config) or not ours to open is a message for the operator with
    what to change, not a traceback."""
    try:
        return open_i2c_bus(bus_number)
    except FileNotFoundError as error:
        device = error.filename or f"/dev/i2c-{bus_number}"
        raise HardwareError(
            f"I2C bus {bus_number}: {device} does not exist, so the sensors on it cannot be "
            "read. Enable I2C: dtparam=i2c_arm=on in config.txt (/boot/firmware/config.txt), "
            "or raspi-config > Interface Options > I2C, then reboot; or, if the sensors are "
            f"wired to another bus, fix `bus = {bus_number}` in their [[sensor]] tables of "
            "the board definition or the site config.") from None
    except PermissionError as error:
        device = error.filename or f"/dev/i2c-{bus_number}"
        raise HardwareError(
            f"I2C bus {bus_number}: no permission to open {device}; run as a member of group "
            "i2c (hearth-agent.service has SupplementaryGroups=i2c) or with sudo.") from None


def _describe(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, f"errno {error.errno}")
    return f"{name}: {error.strerror or os.strerror(error.errno or 0)}"


class I2CDevice:
    """One chip at one address on a shared bus, with bounded retries and a re-probe backoff.

    After `retries` extra attempts fail, or a driver reports the chip as wrong
    (`mark_failed`), every call raises at once, without touching the bus, until `reprobe_s`
    have passed on the injected clock; the next call then tries the chip again.
    """

    def __init__(self, bus: SMBusLike, address: int, label: str, clock: Callable[[], float],
                 retries: int = 2, reprobe_s: float = 5.0):
        self.bus = bus
        self.address = address
        self.label = label
        self.clock = clock
        self.retries = retries
        self.reprobe_s = reprobe_s
        self.failed_at: float | None = None
        self.failure: HardwareError | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def read_word(self, register: int) -> int:
        if self.failure is None:  # _transfer's short path, inline: the loop's hottest call
            try:
                word = self.bus.read_word_data(self.address, register)
            except OSError as error:
                word = self._retry(self.bus.read_word_data, (register,), error)
        else:
            word = self._transfer(self.bus.read_word_data, register)
        return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)

    def write_word(self, register: int, value: int) -> None:
        self._transfer(self.bus.write_word_data, register, swap_word(value))

    def mark_failed(self, error: HardwareError) -> None:
        """Stop talking to the chip until the backoff has passed; `error` says why."""
        if self.failure is None:
            log.warning("%s", error)
        self.failed_at = self.clock()
        self.failure = error

    def _transfer(self, operation: Callable[..., Any], *args: int) -> Any:
        if self.failure is None:  # the usual case, kept short: a healthy chip answers at once
            try:
                return operation(self.address, *args)
            except OSError as error:
                return self._retry(operation, args, error)
        if self.failed_at is not None:
            wait_s = self.failed_at + self.reprobe_s - self.clock()
            if wait_s > 0:
                raise type(self.failure)(f"{self.failure} (next probe in {wait_s:.1f} s)")
        return self._retry(operation, args, None)

    def _retry(self, operation: Callable[..., Any], args: tuple[int, ...],
               first_error: OSError | None) -> Any:
        """The attempts left after `first_error` (None: no attempt made yet)."""
        last_error = first_error
        attempts = self.retries + 1
        if first_error is not None:
            attempts = self.retries if first_error.errno in TRANSIENT_ERRNOS else 0
        for _ in range(attempts):
            try:
                result = operation(self.address, *args)
            except OSError as error:
                last_error = error
                if error.errno not in TRANSIENT_ERRNOS:
                    break
            else:
                if self.failure is not None:
                    log.info("%s answers again", self.label)
                    self.failure = None
                    self.failed_at = None
                return result
        assert last_error is not None
        failure = DeviceFailedError(
            f"{self.label}: no good answer ({_describe(last_error)}); left alone for "
            f"{self.reprobe_s:g} s, then probed again. Check its wiring, supply and address.")
        self.mark_failed(failure)
        raise failure from last_error
