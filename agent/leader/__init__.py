"""The module leader (`hearth leader`): its pure parts (tracker, heat meter, splitter, trim,
interlock, ledger), each without I/O and with time passed in, and the role that wires them to MQTT."""
