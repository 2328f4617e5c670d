"""Every sensor kind a config may name, and building the configured sensors of a board."""

from agent.drivers.ads1115 import ADS1115
from agent.drivers.base import DriverContext, Sensor
from agent.drivers.ds18b20 import DS18B20
from agent.drivers.flow import FlowMeter
from agent.drivers.ina2xx import INA219, INA226
from agent.drivers.soc import SocTemperature, ThrottleFlags
from agent.drivers.tmp117 import TMP117

SENSOR_CLASSES: dict[str, type[Sensor]] = {
    cls.kind: cls
    for cls in (DS18B20, INA219, INA226, TMP117, ADS1115, FlowMeter, SocTemperature,
                ThrottleFlags)
}


def build_sensors(sensor_configs, context: DriverContext) -> list[Sensor]:
    """Sensors for validated config entries (objects with name, kind and settings)."""
    return [SENSOR_CLASSES[entry.kind].from_config({"name": entry.name, **entry.settings},
                                                   context)
            for entry in sensor_configs]
