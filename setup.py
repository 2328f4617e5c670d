"""Packaging for Hearth: the `agent` package, its board definitions and the compiled control core."""

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

# The PID core, built for CPython's stable ABI (abi3) so one build loads on Bookworm's 3.11 and
# Trixie's 3.13. -ffp-contract=off keeps the C compiler from fusing multiply-adds (aarch64 would),
# which is what lets the compiled PID agree bit-for-bit with agent/control/pid_ref.py.
PID_EXTENSION = Extension(
    "agent.control._cpid",
    ["cext/cpid.pyx"],
    define_macros=[("Py_LIMITED_API", "0x030B0000")],
    py_limited_api=True,
    extra_compile_args=["-ffp-contract=off"],
)

setup(
    name="hearth",
    version="0.1.0",
    description="Site controller for Raspberry Pi boards that heat buildings",
    python_requires=">=3.11",
    # Every package under agent/ (a new one cannot be forgotten), plus the board definitions.
    packages=find_packages(include=["agent", "agent.*"]) + ["agent.boards"],
    # Board definitions live in hardware/boards/ beside the wiring docs, and ship inside the package.
    package_dir={"agent.boards": "hardware/boards"},
    package_data={"agent.boards": ["*.toml"], "agent.sim.scenarios": ["*.toml"],
                  "agent.sim.site_scenarios": ["*.toml"]},
    install_requires=[
        "gpiozero>=2.0",
        "smbus2>=0.4",
        "pyserial>=3.5",
        "paho-mqtt>=2.0",
        "psutil>=5.9",
    ],
    extras_require={
        "sim": ["matplotlib>=3.6"],
        "dev": ["pytest>=7", "hypothesis>=6", "simple-pid>=2", "Cython>=3.0", "matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["hearth = agent.cli:main"]},
    ext_modules=cythonize([PID_EXTENSION]),
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
