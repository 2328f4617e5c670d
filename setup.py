"""Packaging for Hearth: the `agent` package, its board definitions and the compiled control core."""

import tomllib
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

# The runtime's requirements and compiled modules (abi3, flags explained there): one list that the
# image builder's aarch64 cross build reads too.
with (Path(__file__).parent / "agent" / "deploy" / "runtime.toml").open("rb") as handle:
    RUNTIME = tomllib.load(handle)
EXTENSIONS = [Extension(spec["name"], spec["sources"],
                        define_macros=[tuple(macro) for macro in spec["define_macros"]],
                        extra_compile_args=spec["extra_compile_args"], py_limited_api=True)
              for spec in RUNTIME["extension"]]

setup(
    name="hearth",
    version="0.1.0",
    description="Site controller for Raspberry Pi boards that heat buildings",
    python_requires=">=3.11",
    # Every package under agent/ (a new one cannot be forgotten), plus the board definitions.
    packages=find_packages(include=["agent", "agent.*"]) + ["agent.boards"],
    # Board definitions live in hardware/boards/ beside the wiring docs, and ship inside the package.
    package_dir={"agent.boards": "hardware/boards"},
    package_data={"agent.boards": ["*.toml"], "agent.deploy": ["runtime.toml"],
                  "agent.sim.scenarios": ["*.toml"], "agent.sim.site_scenarios": ["*.toml"]},
    install_requires=RUNTIME["requires"],
    extras_require={
        "sim": ["matplotlib>=3.6"],
        "fleet": ["nats-py>=2.6"],  # the site's uplink and the centre, never a board
        "dev": ["pytest>=7", "hypothesis>=6", "simple-pid>=2", "Cython>=3.0", "matplotlib>=3.6",
                "Jinja2>=3", "nats-py>=2.6"],
    },
    entry_points={"console_scripts": ["hearth = agent.cli:main"]},
    ext_modules=cythonize(EXTENSIONS),
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
