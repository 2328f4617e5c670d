"""The technician console: one command processor, reached over serial, a local socket and MQTT."""
