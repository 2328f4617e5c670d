"""Sensor and actuator drivers; each speaks its device's real protocol through the seam."""
