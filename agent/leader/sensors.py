"""Which [[sensor]] tables on the leader's board are the module's, read by `hearth leader` only.

The module's sensors (docs/leader.md) are ordinary [[sensor]] tables in the leader board's
config, named in [leader]. The board agent on that board must not build them too: two processes
cannot both count one flow meter's GPIO pulses, and a module flow meter or water sensor must not
be taken for the board's own (the agent picks its flow reading by kind). A sensor the board
definition itself declares stays the board's even when [leader] also names it: the board's own
protection (its oil limit, its flow check) must not vanish because the leader reads it as well.
"""

import tomllib
from pathlib import Path


def module_sensor_names(config) -> frozenset[str]:
    """Sensors named in `config.leader` that the board definition does not declare."""
    leader = config.leader
    if leader is None:
        return frozenset()
    named = {reading.split(".")[0] for reading in (
        leader.water_in_reading, leader.water_out_reading, leader.flow_reading,
        leader.oil_reading) if reading}
    return frozenset(named - _board_declared(config.board_path))


def _board_declared(board_path: str) -> set[str]:
    """Sensor names in the board definition (config loading has already checked the file)."""
    if not board_path:
        return set()
    try:
        board = tomllib.loads(Path(board_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return set()
    return {table.get("name") for table in board.get("sensor", []) if isinstance(table, dict)}
