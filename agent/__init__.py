"""Hearth: a site controller for Raspberry Pi boards that heat buildings."""

__version__ = "0.1.0"
