"""Finding the hardware: the status LED, the I2C and 1-wire buses, and the config file."""

from agent.config import load_config
from agent.config_docs import effective_toml
from agent.console.spec import CommandRefused
from agent.errors import ConfigError

W1_DEVICES = "/sys/bus/w1/devices"
I2C_FIRST, I2C_LAST = 0x03, 0x77
I2C_PROBES_PER_PERIOD = 16
"""A scan probes this many addresses per control period, so it never stretches one."""


def status_led(processor):
    """The board's status LED, opened once through the agent's pin factory."""
    from gpiozero import LED

    if processor.led is None:
        processor.led = LED(processor.config.pins.status_led_gpio,
                            pin_factory=processor.agent.context.hardware.pin_factory)
    return processor.led


def identify(processor, args, source):
    seconds = args["seconds"]
    processor.in_loop(lambda: status_led(processor).blink(
        on_time=0.25, off_time=0.25, n=max(1, round(seconds * 2)), background=True))
    pin = processor.config.pins.status_led_gpio
    return (f"blinking the status LED (GPIO {pin}) for {seconds:g} s",
            {"gpio": pin, "seconds": seconds})


def i2c_scan(processor, args, source):
    expected = {(s.settings["bus"], s.settings["address"]): s for s in processor.config.sensors
                if "bus" in s.settings and "address" in s.settings}
    bus = args["bus"] if args["bus"] >= 0 else min(
        (b for b, _ in expected), default=1)
    found: list[int] = []

    def probe(addresses):
        try:
            handle = processor.agent.context.i2c(bus)
        except OSError as error:
            raise CommandRefused(f"I2C bus {bus} could not be opened ({error}); this board's "
                                 f"sensors are on bus(es) "
                                 f"{sorted({b for b, _ in expected}) or [1]}") from None
        answered = []
        for address in addresses:
            try:
                handle.read_byte(address)
            except OSError:
                continue
            answered.append(address)
        return answered

    addresses = list(range(I2C_FIRST, I2C_LAST + 1))
    for start in range(0, len(addresses), I2C_PROBES_PER_PERIOD):
        found += processor.in_loop(lambda chunk=addresses[start:start + I2C_PROBES_PER_PERIOD]:
                                   probe(chunk))
    rows = [{"address": f"0x{a:02x}", "sensor": expected[(bus, a)].name if (bus, a) in expected
             else None, "kind": expected[(bus, a)].kind if (bus, a) in expected else None}
            for a in found]
    silent = [{"address": f"0x{a:02x}", "sensor": s.name, "kind": s.kind}
              for (b, a), s in sorted(expected.items()) if b == bus and a not in found]
    lines = [f"I2C bus {bus}: {len(found)} device(s) answered"]
    lines += [f"  {row['address']}  {row['sensor'] or 'not in the config'}"
              + (f" ({row['kind']})" if row["kind"] else "") for row in rows]
    lines += [f"  {row['address']}  {row['sensor']} ({row['kind']}) is configured but did NOT "
              "answer: check its wiring, supply and address straps" for row in silent]
    return "\n".join(lines), {"bus": bus, "found": rows, "silent": silent}


def w1_list(processor, args, source):
    devices_dir = processor.root / W1_DEVICES.lstrip("/")
    present = sorted(p.name for p in devices_dir.glob("28-*"))
    configured = {s.settings.get("id"): s.name for s in processor.config.sensors
                  if s.kind == "ds18b20"} if processor.config else {}
    readings = processor.in_loop(lambda: processor.agent.status().readings) \
        if processor.agent is not None else {}
    rows = []
    for device_id in present:
        name = configured.get(device_id)
        reading = readings.get(name) if name else None
        rows.append({"id": device_id, "sensor": name,
                     "value_c": reading.value if reading is not None and reading.ok else None})
    missing = sorted(name for device_id, name in configured.items()
                     if device_id not in present)
    lines = [f"{row['id']}  {row['sensor'] or 'not in the config'}"
             + (f"  {row['value_c']:.2f} C" if row["value_c"] is not None else "")
             for row in rows] or [f"no DS18B20 on the 1-wire bus ({devices_dir} has no 28-*): "
                                  "check the w1-gpio overlay and the data line's pull-up"]
    lines += [f"{name} is configured but its device is not on the bus" for name in missing]
    return "\n".join(lines), {"devices": rows, "configured_missing": missing}


def config_show(processor, args, source):
    from agent.drivers.registry import SENSOR_CLASSES

    if processor.config is None:
        raise CommandRefused(f"{processor.config_path} does not load; `config check` says why")
    return (effective_toml(processor.config, SENSOR_CLASSES).rstrip("\n"),
            processor.config.to_dict())


def config_check(processor, args, source):
    path = processor.config_path
    try:
        config = load_config(path)
    except ConfigError as error:
        problems = [str(p) for p in error.problems] or [str(error)]
        raise CommandRefused(f"{path} has {len(problems)} problem(s):\n  "
                             + "\n  ".join(problems)) from None
    running = "" if processor.agent is None else (
        "; the agent runs on the config it started with: restart it to apply changes")
    return (f"{path}: OK: board type {config.board_type}, {len(config.sensors)} sensors{running}",
            {"path": str(path), "ok": True, "sensors": len(config.sensors)})
