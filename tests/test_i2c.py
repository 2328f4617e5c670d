"""The shared I2C layer: byte order over SMBus words, bounded retries and the failure backoff,
exercised against emulated chips on an emulated bus."""

import errno

import pytest

from agent.drivers.i2c import I2CDevice, signed16, swap_word
from agent.errors import DeviceFailedError
from agent.sim.chips import TMP117
from agent.sim.smbus import EmulatedSMBus


class Clock:
    """Simulated monotonic time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_device(clock: Clock) -> tuple[I2CDevice, TMP117, EmulatedSMBus]:
    chip = TMP117(clock)
    bus = EmulatedSMBus({0x48: chip})
    return I2CDevice(bus, 0x48, "tmp117 'oil' at 0x48 on I2C bus 1", clock), chip, bus


@pytest.mark.parametrize("word, swapped", [(0x0117, 0x1701), (0x1234, 0x3412), (0xFF80, 0x80FF),
                                           (0x0000, 0x0000)])
def test_swap_word_exchanges_the_two_bytes(word, swapped):
    assert swap_word(word) == swapped
    assert swap_word(swapped) == word


@pytest.mark.parametrize("word, value", [(0x0000, 0), (0x7FFF, 32767), (0x8000, -32768),
                                         (0xFF80, -128), (0xFFFF, -1)])
def test_signed16_is_twos_complement(word, value):
    assert signed16(word) == value


def test_emulated_bus_sends_the_chip_register_most_significant_byte_first():
    chip = TMP117(Clock())
    bus = EmulatedSMBus({0x48: chip})
    # The TMP117 ID register is 0x0117: 0x01 goes first on the wire, so it lands in the low byte.
    assert bus.read_word_data(0x48, 0x0F) == 0x1701
    assert bus.read_byte_data(0x48, 0x0F) == 0x01
    bus.write_word_data(0x48, 0x02, 0x0050)
    assert chip.high_limit == 0x5000


def test_absent_address_is_a_missing_acknowledge():
    bus = EmulatedSMBus({})
    with pytest.raises(OSError) as caught:
        bus.read_word_data(0x40, 0x00)
    assert caught.value.errno == errno.EREMOTEIO


def test_device_reads_big_endian_registers():
    device, _, _ = make_device(Clock())
    assert device.read_word(0x0F) == 0x0117


def test_a_transient_nack_is_retried_and_succeeds():
    device, chip, _ = make_device(Clock())
    chip.inject_nack(transactions=2)
    assert device.read_word(0x0F) == 0x0117
    assert chip.transactions == 3
    assert not device.failed


@pytest.mark.parametrize("inject, name", [("inject_nack", "EREMOTEIO"),
                                          ("inject_timeout", "ETIMEDOUT")])
def test_a_persistent_fault_fails_after_the_retry_budget(inject, name):
    device, chip, _ = make_device(Clock())
    getattr(chip, inject)()
    with pytest.raises(DeviceFailedError, match=name):
        device.read_word(0x0F)
    assert chip.transactions == 3          # one try and two retries, no more
    assert device.failed


def test_a_failed_device_is_left_alone_until_the_backoff_has_passed():
    clock = Clock()
    device, chip, _ = make_device(clock)
    chip.inject_nack()
    with pytest.raises(DeviceFailedError):
        device.read_word(0x0F)
    chip.clear_faults()
    clock.now_s += 4.9
    with pytest.raises(DeviceFailedError, match="next probe in 0.1 s"):
        device.read_word(0x0F)
    assert chip.transactions == 3          # the backoff cost no bus traffic
    clock.now_s += 0.1
    assert device.read_word(0x0F) == 0x0117
    assert not device.failed


def test_a_reprobe_that_fails_starts_a_new_backoff():
    clock = Clock()
    device, chip, _ = make_device(clock)
    chip.inject_timeout()
    with pytest.raises(DeviceFailedError):
        device.read_word(0x0F)
    clock.now_s += 5.0
    with pytest.raises(DeviceFailedError):
        device.read_word(0x0F)
    assert chip.transactions == 6
    clock.now_s += 1.0
    with pytest.raises(DeviceFailedError, match="next probe in 4.0 s"):
        device.read_word(0x0F)
    assert chip.transactions == 6


def test_an_error_that_retrying_cannot_fix_is_not_retried():
    device, _, bus = make_device(Clock())
    bus.close()                            # EBADF, as a closed smbus2 handle would give
    with pytest.raises(DeviceFailedError, match="EBADF"):
        device.write_word(0x02, 0x5000)
    assert bus.transfers == 1
