"""Packaging for Hearth: the `agent` package, its board definitions and the compiled control core."""

from setuptools import setup

setup(
    name="hearth",
    version="0.1.0",
    description="Site controller for Raspberry Pi boards that heat buildings",
    python_requires=">=3.11",
    packages=["agent", "agent.drivers", "agent.sim", "agent.control", "agent.boards"],
    # Board definitions live in hardware/boards/ beside the wiring docs, and ship inside the package.
    package_dir={"agent.boards": "hardware/boards"},
    package_data={"agent.boards": ["*.toml"]},
    install_requires=[
        "gpiozero>=2.0",
        "smbus2>=0.4",
        "pyserial>=3.5",
        "paho-mqtt>=2.0",
        "psutil>=5.9",
    ],
    extras_require={
        "dev": ["pytest>=7", "hypothesis>=6", "simple-pid>=2"],
    },
    entry_points={"console_scripts": ["hearth = agent.cli:main"]},
)
