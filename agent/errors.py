"""Hearth's one exception hierarchy; each leaf also inherits the built-in it resembles."""

from collections.abc import Sequence
from typing import Any


class HearthError(Exception):
    """Base of every error Hearth raises on purpose."""


class ConfigError(HearthError):
    """The configuration cannot be used; the message names file, key, value and expectation.

    `problems` holds each finding separately (agent.tables.Problem), so a checker can print or
    test them one by one instead of parsing the message.
    """

    def __init__(self, message: str, *, problems: Sequence[Any] = ()):
        super().__init__(message)
        self.problems = list(problems)


class ConfigValueError(ConfigError, ValueError):
    """A configuration value has the wrong type or is out of range."""


class ConfigFileError(ConfigError, OSError):
    """A configuration or board-definition file is missing or is not valid TOML."""


class HardwareError(HearthError, OSError):
    """A device did not answer as its datasheet says it should."""


class DeviceFailedError(HardwareError):
    """A device kept failing past its retry budget and is marked failed until re-probed."""


class DeviceIdentityError(HardwareError):
    """A device answered with the wrong identity (e.g. a TMP117 whose ID register is not 0x0117)."""


class MessageError(HearthError, ValueError):
    """An MQTT payload that cannot be used (not UTF-8, not a JSON object, wrong schema version);
    the message says what was wrong, for the rejection reason or the log."""


class PeriodFailed(HearthError, RuntimeError):
    """A control period raised: the agent left the board in SAFE settings and recorded why; the
    process ends non-zero so systemd restarts it (ExecStopPost= caps the board meanwhile)."""


class BrokerProcessError(HearthError, OSError):
    """A Mosquitto of our own (simulator, benchmarks) could not run: not installed, exited at
    start or never listened; the message says which and what to do."""


class UpdateError(HearthError, RuntimeError):
    """An update step failed (install, reboot, mark); the message says what happened and what
    to do, and becomes the `reason` on the board's `update` topic."""


class UpdateRefusedError(UpdateError):
    """A bundle refused before anything was written: not signed by the site's key, made for
    another board, or older than what is installed without being forced."""
