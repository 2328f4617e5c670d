"""Shared fixtures: a RAM-backed directory for simulated sysfs trees."""

from pathlib import Path

import pytest

from agent.sim.scratch import scratch_directory


@pytest.fixture
def sim_dir():
    """Like tmp_path, but on tmpfs: simulated boards rewrite their sysfs files every period."""
    with scratch_directory("hearth-test-") as directory:
        yield Path(directory)
