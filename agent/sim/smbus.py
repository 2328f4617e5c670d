"""An SMBus look-alike that routes transfers to emulated chips by address (the sim's I2C seam).

It has the smbus2.SMBus methods the drivers use, with the same argument order, and the same
byte order: a word transfer carries the register's first (most significant) byte in its low
half. An address with no chip behind it fails as a real adapter reports a missing ACK.
"""

import errno
import os
from typing import Mapping

from agent.sim.chips import EmulatedChip


class EmulatedSMBus:
    """One I2C bus with the given chips on it; each instance is independent of every other."""

    def __init__(self, chips: Mapping[int, EmulatedChip]):
        self.chips = dict(chips)
        self.closed = False
        self.transfers = 0

    def _chip(self, i2c_addr: int) -> EmulatedChip:
        self.transfers += 1
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        chip = self.chips.get(i2c_addr)
        if chip is None:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        chip.begin_transaction()
        return chip

    @staticmethod
    def _swap(word: int) -> int:
        return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        chip = self._chip(i2c_addr)
        chip.pointer = register
        word = chip.read_register(register)
        return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)

    def write_word_data(self, i2c_addr: int, register: int, value: int,
                        force: bool | None = None) -> None:
        chip = self._chip(i2c_addr)
        chip.pointer = register
        chip.write_register(register, self._swap(value))

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """The register's first byte, as the chip sends it; the read's side effects still happen."""
        chip = self._chip(i2c_addr)
        chip.pointer = register
        return chip.read_register(register) >> 8

    def write_byte_data(self, i2c_addr: int, register: int, value: int,
                        force: bool | None = None) -> None:
        """These chips latch a register only on its second data byte, so one byte just moves
        the register pointer."""
        self._chip(i2c_addr).pointer = register

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        chip = self._chip(i2c_addr)
        return chip.read_register(chip.pointer) >> 8

    def close(self) -> None:
        self.closed = True
