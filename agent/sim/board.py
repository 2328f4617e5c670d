"""A simulated oil carrier board: the plant model wired to a fake sysfs tree, an emulated
I2C bus with the board's four chips, and gpiozero MockFactory pins, exactly where the real
board's devices sit (hardware/boards/oil-carrier.toml). The agent gets `board.hardware` and
cannot tell it from a Pi; the board reads back what the agent writes.
"""

import dataclasses
import functools
import random
import shutil
from pathlib import Path

import time

from gpiozero.pins.mock import MockFactory, MockPin

from agent.seam import Hardware
from agent.sim import chips
from agent.sim.clock import SimClock
from agent.sim.params import BoardParams
from agent.sim.plant import BoardPlant
from agent.sim.smbus import EmulatedSMBus
from agent.sim.sysfs import (
    DS18B20_POWER_ON_SCRATCHPAD, FakeSysfs, KernelFile, cpu_stat_text, ds18b20_scratchpad,
    w1_millidegrees, w1_slave_text)
from agent.drivers.ds18b20 import CONVERSION_S

WORKLOAD_CGROUP = "hearth.slice/hearth-workload.slice"
HEATFILL_CGROUP = "hearth.slice/hearth-heatfill.slice"
I2C_BUS = 1
INA219_ADDRESS = 0x40
TMP117_ADDRESS = 0x48
ADS1115_ADDRESS = 0x49
FLOW_GPIO = 17
SHUNT_OHMS = 0.1
PRESSURE_SENSOR_V_PER_BAR = 0.4   # 0.5-4.5 V over 0-10 bar
PRESSURE_SENSOR_V_AT_ZERO = 0.5


@dataclasses.dataclass
class SensorFaults:
    """Faults the simulated hardware can show, switched on and off by tests and scenarios."""

    w1_absent: set[str] = dataclasses.field(default_factory=set)
    w1_crc_error: set[str] = dataclasses.field(default_factory=set)
    w1_power_on: set[str] = dataclasses.field(default_factory=set)
    stuck: dict[str, float] = dataclasses.field(default_factory=dict)
    """Sensor name -> the value it keeps showing whatever the plant does."""
    soc_zone_absent: bool = False
    """The thermal zone's temp file is gone (a kernel without the thermal driver)."""
    flow_meter_dead: bool = False
    """The meter's pulses stop while water still flows (a seized turbine, a broken wire)."""


_EVENTS_TEXT = {False: "populated 1\nfrozen 0\n", True: "populated 1\nfrozen 1\n"}


@functools.lru_cache(maxsize=1024)
def _parse_cpu_max(text: str, cores: int) -> float | None:
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    return min(float(cores), int(quota) / int(period or 100000))


class _GroupFiles:
    """The files of one cgroup that the simulated kernel reads or writes."""

    def __init__(self, directory: Path):
        self.cpu_max = directory / "cpu.max"
        self.freeze = directory / "cgroup.freeze"
        self.events = directory / "cgroup.events"
        self.stat = directory / "cpu.stat"
        self.cpu_max_file = KernelFile(self.cpu_max)
        self.freeze_file = KernelFile(self.freeze)
        self.events_file = KernelFile(self.events)
        self.stat_file = KernelFile(self.stat)


class _W1Device:
    """A DS18B20's directory as w1_therm shows it: present with its two files, or gone."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.slave = KernelFile(directory / "w1_slave")
        self.temperature = KernelFile(directory / "temperature")
        self.present = directory.is_dir()

    def show(self, scratchpad: bytes, crc_ok: bool) -> None:
        if not self.present:
            self.directory.mkdir(exist_ok=True)
            self.present = True
        self.slave.write(w1_slave_text(scratchpad, crc_ok))
        self.temperature.write(f"{w1_millidegrees(scratchpad)}\n")

    def remove(self) -> None:
        if self.present:
            self.slave.unlink()
            self.temperature.unlink()
            shutil.rmtree(self.directory, ignore_errors=True)
            self.present = False


class _UnrecordedPin(MockPin):
    """A MockPin that keeps no list of its past states: the flow meter's pin changes state
    thousands of times an hour, and nothing asks for its history."""

    def _change_state(self, value):
        if self._state == value:
            return False
        self._state = value
        self._last_change = time.monotonic()
        return True


class SimulatedBoard:
    def __init__(self, root: Path, clock: SimClock, params: BoardParams = BoardParams(),
                 seed: int = 0, serial: str | None = None):
        self.clock = clock
        self.params = params
        self.plant = BoardPlant(params)
        self.faults = SensorFaults()
        self._rng = random.Random(seed)
        self.serial = serial or f"10000000{self._rng.getrandbits(32):08x}"
        self.w1_ids = {name: f"28-{self._rng.getrandbits(48):012x}"
                       for name in ("water_in", "water_out")}
        self.sysfs = FakeSysfs(root, params.operating_points_mhz, params.cores, self.serial,
                               (WORKLOAD_CGROUP, HEATFILL_CGROUP))
        (self.sysfs.cgroup(HEATFILL_CGROUP) / "cgroup.freeze").write_text("1\n")
        self._w1_devices = {name: _W1Device(self.sysfs.add_w1_device(device_id))
                            for name, device_id in self.w1_ids.items()}
        self.ina219 = chips.INA219(SHUNT_OHMS, clock)
        self.tmp117 = chips.TMP117(clock)
        self.ads1115 = chips.ADS1115()
        self.smbus = EmulatedSMBus({INA219_ADDRESS: self.ina219, TMP117_ADDRESS: self.tmp117,
                                    ADS1115_ADDRESS: self.ads1115})
        self.pin_factory = MockFactory()
        self._flow_pin = self.pin_factory.pin(FLOW_GPIO, pin_class=_UnrecordedPin)
        self._pulse_phase = 0.0
        self._workload_usage_usec = 0.0
        self._workload_periods = 0.0
        self._workload_throttled_periods = 0.0
        self._heatfill_usage_usec = 0.0
        self._conversion_started_at: float | None = None
        self._scaling_max_freq = KernelFile(self.sysfs.scaling_max_freq)
        self._cap_khz: int | None = None
        self._cap_mhz = params.operating_points_mhz[-1]
        self._scaling_cur_freq = KernelFile(self.sysfs.scaling_cur_freq)
        self._thermal_temp = KernelFile(self.sysfs.thermal_temp)
        self._throttled = KernelFile(self.sysfs.throttled)
        self._under_voltage_alarm = KernelFile(self.sysfs.under_voltage_alarm)
        self._w1_bulk = KernelFile(self.sysfs.w1_bulk)
        self.workload_files = _GroupFiles(self.sysfs.cgroup(WORKLOAD_CGROUP))
        self.heatfill_files = _GroupFiles(self.sysfs.cgroup(HEATFILL_CGROUP))
        self.hardware = Hardware(root=root, i2c_bus=self._open_i2c,
                                 pin_factory=self.pin_factory, clock=clock)
        self._publish_sensors()

    def _open_i2c(self, bus_number: int) -> EmulatedSMBus:
        if bus_number != I2C_BUS:
            raise FileNotFoundError(f"/dev/i2c-{bus_number}: no such I2C bus on this board")
        return self.smbus

    def current_value(self, sensor: str) -> float:
        """What a sensor would show now (a stuck-value fault freezes this)."""
        return {"soc": self.plant.soc_c, "oil": self.plant.oil_c,
                "board_power": self.plant.current_a(),
                "water_in": self.plant.water_inlet_c,
                "water_out": self.plant.water_outlet_c()}[sensor]

    def sensor_config(self) -> str:
        """The per-board [[sensor]] tables a site config needs: this board's 1-wire ROM ids."""
        return "".join(f'\n[[sensor]]\nname = "{name}"\nid = "{device_id}"\n'
                       for name, device_id in self.w1_ids.items())

    def step(self, dt_s: float) -> None:
        """Advance the physics by dt_s (the caller moves the clock) and refresh every sensor."""
        self._read_actuators()
        self.plant.step(dt_s)
        self._account_workload(dt_s)
        self._emit_flow_pulses(dt_s)
        self._publish_sensors()

    def _read_actuators(self) -> None:
        cores = self.params.cores
        cap_khz = int(self._scaling_max_freq.read_text())
        if cap_khz != self._cap_khz:
            points = self.params.operating_points_mhz
            self._cap_mhz = max([p for p in points if p * 1000 <= cap_khz] or [points[0]])
            self._cap_khz = cap_khz
        self.plant.cap_mhz = self._cap_mhz
        demand = self.plant.demand
        workload, heatfill = self.workload_files, self.heatfill_files
        demand.workload_quota_cpus = _parse_cpu_max(workload.cpu_max_file.read_text(), cores)
        demand.workload_frozen = workload.freeze_file.read_text().strip() == "1"
        demand.heatfill_quota_cpus = _parse_cpu_max(heatfill.cpu_max_file.read_text(), cores)
        demand.heatfill_frozen = heatfill.freeze_file.read_text().strip() == "1"
        demand.heatfill_running = True
        workload.events_file.write(_EVENTS_TEXT[demand.workload_frozen])
        heatfill.events_file.write(_EVENTS_TEXT[demand.heatfill_frozen])

    def _account_workload(self, dt_s: float) -> None:
        """Advance the groups' cpu.stat counters as the kernel's CFS bandwidth control does."""
        periods = dt_s / 0.1
        self._workload_usage_usec += self.plant.workload_cores() * dt_s * 1e6
        self._workload_periods += periods
        if self.plant.workload_throttled():
            self._workload_throttled_periods += periods
        self._heatfill_usage_usec += self.plant.heatfill_cores() * dt_s * 1e6
        self.workload_files.stat_file.write(
            cpu_stat_text(int(self._workload_usage_usec), int(self._workload_periods),
                          int(self._workload_throttled_periods)))
        self.heatfill_files.stat_file.write(
            cpu_stat_text(int(self._heatfill_usage_usec), int(self._workload_periods), 0))

    def _emit_flow_pulses(self, dt_s: float) -> None:
        if self.faults.flow_meter_dead:
            return
        litres = self.plant.water_flow_l_per_min / 60.0 * dt_s
        self._pulse_phase += litres * self.params.flow_meter_pulses_per_litre
        while self._pulse_phase >= 1.0:
            self._pulse_phase -= 1.0
            self._flow_pin.drive_low()
            self._flow_pin.drive_high()

    def _value(self, sensor: str, actual: float) -> float:
        return self.faults.stuck.get(sensor, actual)

    def _publish_sensors(self) -> None:
        plant = self.plant
        if self.faults.soc_zone_absent:
            self._thermal_temp.unlink()
        else:
            self._thermal_temp.write(f"{round(self._value('soc', plant.soc_c) * 1000)}\n")
        effective_mhz = plant.effective_mhz()
        self._scaling_cur_freq.write(f"{effective_mhz * 1000}\n")
        soc_c = plant.soc_c
        flags = (int(plant.under_voltage) | int(effective_mhz < plant.cap_mhz) << 1
                 | int(soc_c >= self.params.firmware_hard_limit_c) << 2
                 | int(soc_c >= self.params.firmware_soft_limit_c) << 3)
        self._throttled.write(f"{flags | flags << 16:x}\n")
        self._under_voltage_alarm.write(f"{int(plant.under_voltage)}\n")
        if "board_power" not in self.faults.stuck:  # a stuck INA keeps its last measurement
            self.ina219.set_bus_voltage(plant.bus_voltage_v())
            self.ina219.set_current(plant.current_a())
        self.tmp117.set_temperature(self._value("oil", plant.oil_c))
        bar = self._value("water_pressure",
                          self.params.water_pressure_bar if plant.water_flow_l_per_min else 0.2)
        self.ads1115.set_input_voltage(0, PRESSURE_SENSOR_V_AT_ZERO
                                       + PRESSURE_SENSOR_V_PER_BAR * bar)
        self._run_w1_bulk_conversion()

    def _run_w1_bulk_conversion(self) -> None:
        """Emulate therm_bulk_read: 'trigger' starts a conversion, results land 750 ms later."""
        now = self.clock()
        if self._w1_bulk.read_text().strip() == "trigger":
            self._conversion_started_at = now
            self._w1_bulk.write("-1\n")
        started = self._conversion_started_at
        if started is None or now - started < CONVERSION_S:
            return
        self._conversion_started_at = None
        self._w1_bulk.write("1\n")
        temperatures = {"water_in": self.plant.water_inlet_c,
                        "water_out": self.plant.water_outlet_c()}
        for name, device in self._w1_devices.items():
            if name in self.faults.w1_absent:
                device.remove()
                continue
            scratchpad = (DS18B20_POWER_ON_SCRATCHPAD if name in self.faults.w1_power_on
                          else ds18b20_scratchpad(self._value(name, temperatures[name])))
            device.show(scratchpad, crc_ok=name not in self.faults.w1_crc_error)
