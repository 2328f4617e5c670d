#!/usr/bin/python3
"""/init of the aarch64 VM: load the golden image's compiled PID core on an aarch64 CPU and
drive it and the pure-Python reference through the same random steps.

Runs as PID 1 from an initramfs holding python3-minimal, the extension and pid_ref.py as the
image ships them; standard library only. It prints `vm-test:` lines on the console and exits,
which panics the kernel, which (panic=-1, QEMU -no-reboot) ends the VM.
"""

import importlib.machinery
import importlib.util
import math
import platform
import random
import sys

EXTENSION = "/hearth/_cpid.abi3.so"
REFERENCE = "/hearth/pid_ref.py"
CONTROLLERS = 40
STEPS_PER_CONTROLLER = 100
SEED = 17


def report(name: str, passed: bool, value: str) -> None:
    print(f"vm-test: {name} {value} {'PASS' if passed else 'FAIL'}", flush=True)


def load(name: str, path: str, loader):
    spec = importlib.util.spec_from_file_location(name, path, loader=loader(name, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state(controller) -> tuple:
    return tuple(float(getattr(controller, name)).hex() for name in (
        "kp", "ki", "kd", "output_min", "output_max", "derivative_filter_s",
        "integral", "derivative", "output", "manual"))


def step(controller, draw: random.Random, now_s: float, kind: int):
    """One operation, as the agent's loop and console make them; returns what a caller sees."""
    try:
        if kind == 0:
            return controller.track(draw.uniform(-5, 15))
        if kind == 1:
            return controller.set_gains(draw.uniform(0, 3), draw.uniform(0, 2), draw.uniform(0, 1))
        if kind == 2:
            low = draw.uniform(-5, 5)
            return controller.set_limits(low, low + draw.uniform(0, 10))
        measured = draw.choice((draw.uniform(-50, 100), math.nan)) if draw.random() < 0.02 \
            else draw.uniform(-50, 100)
        return float(controller.update(now_s, measured, draw.uniform(-50, 100))).hex()
    except ValueError as error:
        return f"ValueError: {error}"


def agree(compiled_module, reference_module) -> tuple[int, str]:
    """Steps compared until the first difference (with its description), or all of them."""
    draw = random.Random(SEED)
    steps = 0
    for _ in range(CONTROLLERS):
        low = draw.uniform(-5, 5)
        args = dict(kp=draw.uniform(0, 3), ki=draw.uniform(0, 2), kd=draw.uniform(0, 1),
                    output_min=low, output_max=low + draw.uniform(0, 10),
                    derivative_filter_s=draw.uniform(0, 2))
        compiled, reference = compiled_module.PID(**args), reference_module.PID(**args)
        now_s = 0.0
        for _ in range(STEPS_PER_CONTROLLER):
            now_s += draw.uniform(-0.01, 0.2)
            kind = draw.randrange(12)
            seed = draw.random()
            results = [step(c, random.Random(seed), now_s, kind) for c in (compiled, reference)]
            steps += 1
            if results[0] != results[1] or state(compiled) != state(reference):
                return steps, (f"step {steps} differs: {results[0]} vs {results[1]}, "
                               f"{state(compiled)} vs {state(reference)}")
    return steps, ""


def main() -> int:
    machine = platform.machine()
    try:
        compiled = load("agent.control._cpid", EXTENSION, importlib.machinery.ExtensionFileLoader)
    except ImportError as error:
        report("aarch64-extension-loads", False, f"on {machine} Python {platform.python_version()}: "
               f"{error}")
        return 1
    report("aarch64-extension-loads", machine == "aarch64",
           f"{EXTENSION.rsplit('/', 1)[1]} on {machine} Python {platform.python_version()}")
    reference = load("pid_ref", REFERENCE, importlib.machinery.SourceFileLoader)
    steps, difference = agree(compiled, reference)
    report("aarch64-pid-agrees", not difference,
           difference or f"{steps} random steps bit for bit, outputs and state")
    return 0


if __name__ == "__main__":
    status = main()
    print(f"vm-test: aarch64 done, exit {status}", flush=True)
    sys.exit(status)
