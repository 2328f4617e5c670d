"""Selftest: every sensor read, every actuator file written back, and the status LED switched."""

from pathlib import Path

from agent.console.handlers.diagnostics import status_led


def selftest(processor, args, source):
    def run():
        agent = processor.agent
        readings = agent.status().readings.values()
        items = []
        for sensor in agent.sensors:
            own = [r for r in readings
                   if r.sensor == sensor.name or r.sensor.startswith(sensor.name + ".")]
            bad = [r for r in own if not r.ok]
            passed = bool(own) and not bad
            detail = ("no reading" if not own else
                      "; ".join(f"{r.sensor}: {r.validity.value} {r.reason}".strip()
                                for r in bad) or
                      ", ".join(f"{r.sensor} {r.value:.3g} {r.unit}" for r in own))
            items.append({"item": f"sensor {sensor.name} ({sensor.kind})", "pass": passed,
                          "detail": detail})
        items.append(_rewrite("cpufreq cap", agent.policy.max_freq.path))
        for label, group in (("workload", agent.workload), ("heat-fill", agent.heatfill)):
            items.append(_rewrite(f"{label} cpu.max", group.cpu_max.path))
            items.append(_rewrite(f"{label} cgroup.freeze", group.freeze_file.path))
        items.append(_led(processor))
        return items

    items = processor.in_loop(run)
    failed = [item for item in items if not item["pass"]]
    lines = [f"{'PASS' if item['pass'] else 'FAIL'}  {item['item']}: {item['detail']}"
             for item in items]
    lines.append(f"{len(items) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(lines), {"items": items, "passed": not failed}


def _rewrite(item: str, path: Path) -> dict:
    """Write an actuator file's present value back and read it again: the write path works
    and the board's settings do not change."""
    try:
        value = path.read_text()
        path.write_text(value)
        again = path.read_text()
    except OSError as error:
        return {"item": item, "pass": False, "detail": f"{path}: {error.strerror or error}; "
                "check the tmpfiles.d permissions and that the agent runs as hearth"}
    passed = again == value
    return {"item": item, "pass": passed,
            "detail": f"{path.name} = {value.strip()}" + ("" if passed else
                                                          f", read back {again.strip()!r}")}


def _led(processor) -> dict:
    item = f"status LED (GPIO {processor.config.pins.status_led_gpio})"
    try:
        led = status_led(processor)
        led.on()
        lit = led.is_lit
        led.off()
        dark = not led.is_lit
    except Exception as error:  # gpiozero raises many kinds; each is a failed item
        return {"item": item, "pass": False, "detail": f"{type(error).__name__}: {error}"}
    detail = "on and off" if lit and dark else f"lit={lit} after on, dark={dark} after off"
    return {"item": item, "pass": lit and dark, "detail": detail}
