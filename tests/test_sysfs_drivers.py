"""SoC thermal zone, firmware flags, flow meter, cpufreq and cgroup drivers against sysfs text."""

import pytest
from gpiozero.pins.mock import MockFactory

from agent.drivers.base import DriverContext
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.flow import FlowMeter
from agent.drivers.soc import SocTemperature, ThrottleFlags
from agent.errors import HardwareError
from agent.readings import Validity
from agent.seam import Hardware
from agent.sim.clock import SimClock


def write(root, absolute, text):
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def clock():
    return SimClock()


def context(root, clock, pin_factory=None):
    return DriverContext(Hardware(root=root, clock=clock, pin_factory=pin_factory))


def test_soc_temperature_in_millidegrees(tmp_path, clock):
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "48686\n")
    sensor = SocTemperature.from_config({"name": "soc", "zone": 0}, context(tmp_path, clock))
    [reading] = sensor.read()
    assert reading.ok and reading.value == pytest.approx(48.686) and reading.time == clock()


def test_soc_missing_zone_and_garbage(tmp_path, clock):
    sensor = SocTemperature.from_config({"name": "soc", "zone": 3}, context(tmp_path, clock))
    assert sensor.read()[0].validity is Validity.MISSING
    write(tmp_path, "/sys/class/thermal/thermal_zone3/temp", "\x00\x12garbage\n")
    [reading] = sensor.read()
    assert reading.validity is Validity.INVALID and reading.value is None


@pytest.mark.parametrize("text, valid", [("125000\n", True), ("125001\n", False),
                                         ("-40000\n", True), ("-40001\n", False),
                                         ("-273150\n", False), ("2147483647\n", False)])
def test_soc_temperature_a_pi_cannot_reach_is_invalid(tmp_path, clock, text, valid):
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", text)
    sensor = SocTemperature.from_config({"name": "soc", "zone": 0}, context(tmp_path, clock))
    [reading] = sensor.read()
    assert reading.ok is valid
    if not valid:
        assert reading.validity is Validity.INVALID and reading.value is None
        assert f"{int(text) / 1000:.3f} °C" in reading.reason
        assert "-40..125 °C" in reading.reason and "thermal_zone0" in reading.reason


def test_soc_zone_text_that_is_not_utf8_is_invalid_not_raised(tmp_path, clock):
    path = write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "")
    path.write_bytes(b"\xff48686\n")
    sensor = SocTemperature.from_config({"name": "soc", "zone": 0}, context(tmp_path, clock))
    [reading] = sensor.read()
    assert reading.validity is Validity.INVALID and "millidegrees" in reading.reason


def test_soc_zone_kept_open_follows_rewrites_removal_and_return(tmp_path, clock):
    path = write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "48686\n")
    sensor = SocTemperature.from_config({"name": "soc", "zone": 0}, context(tmp_path, clock))
    assert sensor.read()[0].value == pytest.approx(48.686)
    path.write_text("51000\n")  # rewritten in place, as the kernel regenerates it
    assert sensor.read()[0].value == pytest.approx(51.0)
    path.write_text("")  # removed as the simulated kernel removes a file: emptied, unlinked
    path.unlink()
    assert sensor.read()[0].validity is Validity.MISSING
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "47000\n")
    assert sensor.read()[0].value == pytest.approx(47.0)
    sensor.close()


def test_throttle_flags_decode_get_throttled_hex(tmp_path, clock):
    write(tmp_path, "/sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    sensor = ThrottleFlags.from_config({"name": "throttle"}, context(tmp_path, clock))
    readings = {r.sensor: r.value for r in sensor.read()}
    assert readings == {"throttle.under_voltage": 1.0, "throttle.freq_capped": 0.0,
                        "throttle.throttled": 1.0, "throttle.soft_temp_limit": 0.0,
                        "throttle.raw": float(0x50005)}


@pytest.mark.parametrize("text", ["-1\n", "1ffffffff\n", "\u0665\n", "\xff\n", "\n"])
def test_throttle_flags_that_are_not_a_32_bit_hex_word_are_invalid(tmp_path, clock, text):
    write(tmp_path, "/sys/devices/platform/soc/soc:firmware/get_throttled", text)
    sensor = ThrottleFlags.from_config({"name": "throttle"}, context(tmp_path, clock))
    readings = sensor.read()
    assert len(readings) == 5
    for reading in readings:
        assert reading.validity is Validity.INVALID and reading.value is None
        assert "get_throttled" in reading.reason and "32-bit" in reading.reason


def test_throttle_flags_missing_firmware_file(tmp_path, clock):
    sensor = ThrottleFlags.from_config({"name": "throttle"}, context(tmp_path, clock))
    assert {r.validity for r in sensor.read()} == {Validity.MISSING}


def pulse(pin, count):
    for _ in range(count):
        pin.drive_low()
        pin.drive_high()


def test_flow_counts_pulses_over_the_window(clock):
    factory = MockFactory()
    meter = FlowMeter.from_config(
        {"name": "water_flow", "pin": 17, "pulses_per_litre": 450.0, "window_s": 5.0,
         "max_flow_l_per_min": 30.0},
        context(None, clock, factory))
    pin = factory.pin(17)
    assert meter.read()[0].validity is Validity.MISSING, "unknown before one full window"
    for _ in range(50):  # 7.5 pulses/s = 1 L/min, for 5 s
        clock.advance(0.1)
        pulse(pin, 1 if _ % 2 else 0)
        if _ % 4 == 0:
            pulse(pin, 1)
    # 0.1 s ticks: 25 odd ticks + 13 ticks divisible by 4 => 38 pulses in the window
    [reading] = meter.read()
    assert reading.ok
    assert reading.value == pytest.approx(38 / 5.0 / 450.0 * 60.0)
    meter.close()


def test_flow_no_pulses_is_zero_not_unknown(clock):
    factory = MockFactory()
    meter = FlowMeter.from_config(
        {"name": "water_flow", "pin": 17, "pulses_per_litre": 450.0, "window_s": 2.0,
         "max_flow_l_per_min": 30.0},
        context(None, clock, factory))
    clock.advance(2.5)
    [reading] = meter.read()
    assert reading.ok and reading.value == 0.0
    meter.close()


def test_flow_pulse_rate_beyond_the_meters_rating_is_invalid(clock):
    factory = MockFactory()
    meter = FlowMeter.from_config(
        {"name": "water_flow", "pin": 17, "pulses_per_litre": 450.0, "window_s": 1.0,
         "max_flow_l_per_min": 30.0}, context(None, clock, factory))
    pin = factory.pin(17)
    clock.advance(1.0)
    for _ in range(10):                           # 225 pulses/s: the meter's 30 L/min
        clock.advance(0.1)
        pulse(pin, 22 if _ % 2 else 23)
    [reading] = meter.read()
    assert reading.ok and reading.value == pytest.approx(30.0)
    pulse(pin, 20)                                # 245 pulses in the last second: 32.7 L/min
    [reading] = meter.read()
    assert reading.validity is Validity.INVALID and reading.value is None
    assert "32.7 L/min" in reading.reason and "30 L/min" in reading.reason
    assert "GPIO17" in reading.reason
    meter.close()


def test_flow_counter_not_running_is_missing(clock):
    factory = MockFactory()
    factory.pin(17)
    first = FlowMeter.from_config(
        {"name": "a", "pin": 17, "pulses_per_litre": 450.0, "window_s": 1.0,
         "max_flow_l_per_min": 30.0},
        context(None, clock, factory))
    second = FlowMeter.from_config(  # the pin is taken: this counter cannot run
        {"name": "b", "pin": 17, "pulses_per_litre": 450.0, "window_s": 1.0,
         "max_flow_l_per_min": 30.0},
        context(None, clock, factory))
    clock.advance(2.0)
    [reading] = second.read()
    assert reading.validity is Validity.MISSING and "GPIO17" in reading.reason
    first.close()


def cpufreq_tree(root):
    policy = "/sys/devices/system/cpu/cpufreq/policy0"
    write(root, f"{policy}/scaling_available_frequencies",
          "600000 700000 800000 900000 1000000 1100000 1200000 1300000 1400000 1500000 \n")
    write(root, f"{policy}/affected_cpus", "0 1 2 3\n")
    write(root, f"{policy}/scaling_governor", "ondemand\n")
    write(root, f"{policy}/scaling_cur_freq", "1500000\n")
    return write(root, f"{policy}/scaling_max_freq", "1500000\n")


def test_cpufreq_reads_operating_points_and_writes_only_on_change(tmp_path):
    max_freq = cpufreq_tree(tmp_path)
    policy = CpuFreqPolicy(Hardware(root=tmp_path), "policy0")
    assert policy.available_khz[0] == 600000 and policy.available_khz[-1] == 1500000
    assert len(policy.available_khz) == 10 and policy.cpus == [0, 1, 2, 3]
    assert policy.cap(900000) is True
    assert max_freq.read_text() == "900000\n"
    max_freq.write_text("sentinel\n")
    assert policy.cap(900000) is False, "unchanged value is not written again"
    assert max_freq.read_text() == "sentinel\n"
    assert policy.cap(600000) is True and policy.max_freq.writes == 2


def test_cpufreq_without_table_uses_cpuinfo_limits(tmp_path):
    policy = "/sys/devices/system/cpu/cpufreq/policy0"
    write(tmp_path, f"{policy}/cpuinfo_min_freq", "1500000\n")
    write(tmp_path, f"{policy}/cpuinfo_max_freq", "2400000\n")
    write(tmp_path, f"{policy}/affected_cpus", "0 1 2 3\n")
    assert CpuFreqPolicy(Hardware(root=tmp_path)).available_khz == [1500000, 2400000]


@pytest.mark.parametrize("table", ["600000 abc 1500000\n", "0 600000\n", "-600000 1500000\n",
                                   "\n", "\u0666\u0660\u0660\u0660\u0660\u0660\n"])
def test_cpufreq_table_that_is_not_a_list_of_frequencies_names_the_file(tmp_path, table):
    cpufreq_tree(tmp_path)
    write(tmp_path, "/sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies",
          table)
    with pytest.raises(HardwareError) as raised:
        CpuFreqPolicy(Hardware(root=tmp_path), "policy0")
    assert "scaling_available_frequencies" in str(raised.value)
    assert "kHz" in str(raised.value)


def test_cpufreq_affected_cpus_that_are_not_cpu_numbers_name_the_file(tmp_path):
    cpufreq_tree(tmp_path)
    write(tmp_path, "/sys/devices/system/cpu/cpufreq/policy0/affected_cpus", "\n")
    with pytest.raises(HardwareError, match="affected_cpus"):
        CpuFreqPolicy(Hardware(root=tmp_path), "policy0")


def test_cgroup_quota_freeze_and_events(tmp_path):
    base = "/sys/fs/cgroup/hearth.slice/workload"
    cpu_max = write(tmp_path, f"{base}/cpu.max", "max 100000\n")
    freeze = write(tmp_path, f"{base}/cgroup.freeze", "0\n")
    events = write(tmp_path, f"{base}/cgroup.events", "populated 1\nfrozen 0\n")
    group = CpuGroup(Hardware(root=tmp_path), "hearth.slice/workload")
    assert group.set_quota(1.5) and cpu_max.read_text() == "150000 100000\n"
    assert not group.set_quota(1.5)
    assert group.set_quota(None) and cpu_max.read_text() == "max 100000\n"
    assert group.set_quota(0.0) and cpu_max.read_text() == "1000 100000\n", "kernel minimum"
    assert group.freeze(True) and freeze.read_text() == "1\n"
    assert group.frozen() is False, "frozen only once the kernel says so"
    events.write_text("populated 1\nfrozen 1\n")
    assert group.frozen() is True


def test_cgroup_cpu_stat_reads_the_kernels_counters(tmp_path):
    base = "/sys/fs/cgroup/hearth.slice/workload"
    write(tmp_path, f"{base}/cpu.stat", "usage_usec 5200\nuser_usec 5000\nsystem_usec 200\n"
          "nr_periods 12\nnr_throttled 3\nthrottled_usec 900\nnr_bursts 0\nburst_usec 0\n")
    stats = CpuGroup(Hardware(root=tmp_path), "hearth.slice/workload").cpu_stat()
    assert (stats["usage_usec"], stats["nr_periods"], stats["nr_throttled"]) == (5200, 12, 3)


@pytest.mark.parametrize("text", [
    "usage_usec 5200\nuser_usec 5000\nsystem_usec 200\n",          # no cpu controller counters
    "usage_usec -5200\nnr_periods 12\nnr_throttled 3\n",
    "usage_usec 5200\nnr_periods 12\nnr_throttled\n",
])
def test_cgroup_cpu_stat_the_agent_cannot_use_is_a_value_error_naming_the_file(tmp_path, text):
    base = "/sys/fs/cgroup/hearth.slice/workload"
    write(tmp_path, f"{base}/cpu.stat", text)
    with pytest.raises(ValueError, match="cpu.stat"):
        CpuGroup(Hardware(root=tmp_path), "hearth.slice/workload").cpu_stat()
