"""The site config's shape: each section's keys (typed, bounded, documented Fields) beside the
plain frozen dataclass the loader fills from them, the sensors' and board definition's keys, and
the checks across keys. The loader (agent.config) and the reference page (agent.config_docs) both
read these, so what is checked and what is documented cannot drift apart."""

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.schema import Field, Schema
from agent.site.schedule import PERIOD_PATTERN, WEEKLY_TIME_PATTERN

DEFAULT_CONFIG_PATH = Path("/etc/hearth/hearth.toml")

_TOPIC_LEVEL_RULE = ("lowercase letters, digits, '_' and '-', at most 32, starting with a letter "
                     "or digit; it becomes an MQTT topic level")
_CGROUP_PATTERN = r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]*(/[A-Za-z0-9_@-][A-Za-z0-9_.@-]*)*"
_CGROUP_RULE = "a path relative to /sys/fs/cgroup, without '..'"

TOP_SCHEMA: Schema = {
    "board_type": Field(str, "the carrier board: `<config dir>/boards/<type>.toml` if present, "
                        "else the definition shipped with Hearth (`hardware/boards/`)",
                        pattern=r"[a-z0-9][a-z0-9_-]*", example="oil-carrier"),
}

IDENTITY_SCHEMA: Schema = {
    "site": Field(str, "the site (home, pool, school): " + _TOPIC_LEVEL_RULE,
                  pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="school-7"),
    "module": Field(str, "the module (one oil loop and its broker): " + _TOPIC_LEVEL_RULE,
                    pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="m1"),
    "board": Field(str, "this board within its module: " + _TOPIC_LEVEL_RULE,
                   pattern=r"[a-z0-9][a-z0-9_-]{0,31}", example="b07"),
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """[identity]: who this board is, when the site config says so rather than the boot sources."""

    site: str
    module: str
    board: str


# The firmware throttles the Arm on its own from 80 C; the agent's SoC limits stay below that so
# that its control, not the firmware's, is in charge (DESIGN.md section 7).
LIMITS_SCHEMA: Schema = {
    "soc_warning_c": Field(float, "SoC temperature at which the board is held back (LIMITED)",
                           default=70.0, min=40.0, max=79.0),
    "soc_limit_c": Field(float, "SoC temperature the temperature-limit loop holds the SoC below",
                         default=75.0, min=40.0, max=79.0),
    "soc_critical_c": Field(float, "SoC temperature that forces SAFE at once",
                            default=78.0, min=40.0, max=79.0),
    "oil_warning_c": Field(float, "local oil temperature at which the board is held back",
                           default=60.0, min=20.0, max=90.0),
    "oil_limit_c": Field(float, "local oil temperature the limit loop holds the oil below",
                         default=65.0, min=20.0, max=90.0),
    "oil_critical_c": Field(float, "local oil temperature that forces SAFE at once",
                            default=70.0, min=20.0, max=90.0),
    "hysteresis_c": Field(float, "how far a temperature must fall below a threshold before its "
                          "mode is left, so the mode does not chatter", default=2.0,
                          min=0.5, max=10.0),
    "power_min_w": Field(float, "lowest board power the controller will command "
                         "(a Pi 4 idles at 2-3 W)", default=2.0, min=0.0, max=15.0),
    "power_max_w": Field(float, "highest board power the controller will command "
                         "(a Pi 4 draws 5.5-6.5 W fully loaded)", default=6.5, min=0.5, max=15.0),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """[limits]: where the supervisor holds the board back or makes it SAFE."""

    soc_warning_c: float
    soc_limit_c: float
    soc_critical_c: float
    oil_warning_c: float
    oil_limit_c: float
    oil_critical_c: float
    hysteresis_c: float
    power_min_w: float
    power_max_w: float


CONTROL_SCHEMA: Schema = {
    "period_s": Field(float, "control loop period (sample, supervise, control, govern)",
                      default=0.1, min=0.02, max=1.0),
    "report_period_s": Field(float, "how often state is published over MQTT",
                             default=1.0, min=0.1, max=60.0),
    "fallback_setpoint_w": Field(float, "power setpoint used while the leader or broker is silent",
                                 default=3.0, min=0.0, max=15.0),
    "leader_timeout_s": Field(float, "the leader or broker counts as lost after this long without "
                              "a message, and fallback_setpoint_w applies", default=30.0,
                              min=1.0, max=3600.0),
    "setpoint_hold_s": Field(float, "a setpoint from the leader expires after this long unless "
                             "renewed", default=300.0, min=1.0, max=86400.0),
}


@dataclasses.dataclass(frozen=True)
class Control:
    """[control]: loop timing and the setpoint to fall back on."""

    period_s: float
    report_period_s: float
    fallback_setpoint_w: float
    leader_timeout_s: float
    setpoint_hold_s: float


ACTUATORS_SCHEMA: Schema = {
    "cpufreq_policy": Field(str, "cpufreq policy directory under /sys/devices/system/cpu/cpufreq",
                            default="policy0", pattern=r"policy[0-9]+", example="policy0"),
    "workload_cgroup": Field(str, "cgroup v2 group of the paid workload: " + _CGROUP_RULE,
                             default="hearth.slice/hearth-workload.slice", pattern=_CGROUP_PATTERN,
                             example="hearth.slice/hearth-workload.slice"),
    "heatfill_cgroup": Field(str, "cgroup v2 group of the heat-fill load: " + _CGROUP_RULE,
                             default="hearth.slice/hearth-heatfill.slice", pattern=_CGROUP_PATTERN,
                             example="hearth.slice/hearth-heatfill.slice"),
    "cpu_period_us": Field(int, "period written to cpu.max with the workload's quota "
                           "(the kernel accepts 1 ms to 1 s)", default=100000,
                           min=1000, max=1000000),
}


@dataclasses.dataclass(frozen=True)
class Actuators:
    """[actuators]: the sysfs and cgroup files the governor writes."""

    cpufreq_policy: str
    workload_cgroup: str
    heatfill_cgroup: str
    cpu_period_us: int


_FILE_RULE = "an absolute path, or empty for none"
_FILE_PATTERN = r"(/[^\x00]*)?"

_BROKER_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(:[0-9]{1,5})?"
MQTT_PORT = 1883
MQTT_TLS_PORT = 8883

MQTT_SCHEMA: Schema = {
    "brokers": Field(list, "the site's broker, then any standby, tried in that order: the link "
                     "moves to the next (wrapping around) when one refuses or drops the "
                     "connection. Each `host` or `host:port` (a host name or IPv4 address); "
                     'brokers = ["hearth-broker.local"] replaces host = "hearth-broker.local"',
                     example='["hearth-broker.local", "standby.local:8883"]',
                     items=Field(str, "a broker: `host` or `host:port`",
                                 pattern=_BROKER_PATTERN, example="hearth-broker.local:8883")),
    "port": Field(int, f"the port of a broker given without one; none: {MQTT_TLS_PORT} (MQTT "
                  f"over TLS) when ca_file is set, else {MQTT_PORT}", default=None, min=1,
                  max=65535),
    "keepalive_s": Field(int, "seconds between pings when idle; the broker publishes the Last "
                         "Will (`offline`) about 1.5 times this after the board goes silent",
                         default=30, min=5, max=3600),
    "ca_file": Field(str, "CA certificate that signed the broker's certificate; TLS is used when "
                     "this is set: " + _FILE_RULE, default="", pattern=_FILE_PATTERN,
                     example="/etc/hearth/tls/ca.crt"),
    "cert_file": Field(str, "this board's client certificate, if the broker asks for one: "
                       + _FILE_RULE, default="", pattern=_FILE_PATTERN,
                       example="/etc/hearth/tls/board.crt"),
    "key_file": Field(str, "the client certificate's private key: " + _FILE_RULE, default="",
                      pattern=_FILE_PATTERN, example="/etc/hearth/tls/board.key"),
    "username": Field(str, "this board's broker account (provisioning names it after the "
                      "board); empty for none", default="", pattern=r"[A-Za-z0-9_.@-]{0,64}",
                      example="school-7.m1.b07"),
    "password_file": Field(str, "file holding the account's password on its first line (kept "
                           "out of hearth.toml so the config can be shown): " + _FILE_RULE,
                           default="", pattern=_FILE_PATTERN,
                           example="/etc/hearth/mqtt-password"),
}


@dataclasses.dataclass(frozen=True)
class Mqtt:
    """[mqtt]: how this role reaches the site's broker, and its standby. `brokers` are
    `host:port` with the port filled in, and `port` is the default that was used."""

    brokers: tuple[str, ...]
    port: int
    keepalive_s: int
    ca_file: str
    cert_file: str
    key_file: str
    username: str
    password_file: str


_READING_NAME = r"([a-z][a-z0-9_]*(\.[a-z_]+)?)?"
_READING_RULE = ("a reading of a [[sensor]] in this file (its name, or name.quantity such as "
                 "`module_power.power_w`), or empty for none")

_LEADER_READING_RULE = ("the name of a [[sensor]] in this file, or empty; the same as giving "
                        "that sensor the role, and the way to give it to a sensor with a board "
                        "role already (the board's `oil`)")

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"
_IPV6 = r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"


def _metrics_address(role: str) -> Field:
    """Where a role's Prometheus endpoint listens (docs/metrics.md): loopback unless the config
    says otherwise, so no figure leaves the machine by default."""
    return Field(str, f"address {role}'s /metrics listens on: an IPv4 or IPv6 address of this "
                 "machine; 127.0.0.1 serves this machine only, 0.0.0.0 or :: every interface "
                 "(for a Prometheus on another box)", default="127.0.0.1",
                 pattern=f"{_IPV4}|{_IPV6}", example="0.0.0.0")


# The module leader's own settings and the module sensors on its board (docs/leader.md).
LEADER_SCHEMA: Schema = {
    "period_s": Field(float, "leader period: setpoints (the boards' heartbeat), module totals and "
                      "the interlock check", default=5.0, min=0.5, max=60.0),
    "silence_timeout_s": Field(float, "a board without a state message for this long counts as "
                               "silent and gets no share", default=15.0, min=2.0, max=600.0),
    "budget_w": Field(float, "module heat budget until the site sends one", default=0.0,
                      min=0.0, max=100000.0),
    "water_in_reading": Field(str, "module water inlet temperature, the role module_water_in: "
                              + _LEADER_READING_RULE, default="", pattern=_READING_NAME,
                              example="module_in"),
    "water_out_reading": Field(str, "module water outlet temperature, the role "
                               "module_water_out: " + _LEADER_READING_RULE, default="",
                               pattern=_READING_NAME, example="module_out"),
    "flow_reading": Field(str, "module water flow (L/min), the role module_flow: "
                          + _LEADER_READING_RULE, default="", pattern=_READING_NAME,
                          example="module_flow"),
    "oil_reading": Field(str, "module oil temperature, the role module_oil: "
                         + _LEADER_READING_RULE, default="", pattern=_READING_NAME,
                         example="module_oil"),
    "flow_min_l_per_min": Field(float, "module flow below this sets the interlock (all boards "
                                "SAFE); checked only when the module_flow role is given",
                                default=2.0, min=0.0, max=1000.0),
    "oil_max_c": Field(float, "module oil at or above this sets the interlock; checked only when "
                       "the module_oil role is given", default=68.0, min=20.0, max=90.0),
    "interlock_clear_s": Field(float, "the causes must be gone this long before the interlock "
                               "clears", default=30.0, min=0.0, max=3600.0),
    "metrics_port": Field(int, "Prometheus endpoint port (/metrics); 0 for none", default=9105,
                          min=0, max=65535),
    "metrics_address": _metrics_address("the leader"),
}


@dataclasses.dataclass(frozen=True)
class Leader:
    """[leader]: the module leader's timing, budget and module sensors."""

    period_s: float
    silence_timeout_s: float
    budget_w: float
    water_in_reading: str
    water_out_reading: str
    flow_reading: str
    oil_reading: str
    flow_min_l_per_min: float
    oil_max_c: float
    interlock_clear_s: float
    metrics_port: int
    metrics_address: str


# The site's target plan (agent/site/target_plan.py): schedule, guard, legionella cycle and
# heating curve, each off until configured (docs/site.md, Targets).
SITE_PLAN_SCHEMA: Schema = {
    "timezone": Field(str, "time zone of the schedule and the legionella cycle, as the tz "
                      "database names it; empty for the system's", default="",
                      pattern=r"([A-Za-z_]+(/[A-Za-z0-9_+-]+)*)?", example="Europe/Berlin"),
    "comfort_c": Field(float, "target in comfort periods and in mode comfort; without it the "
                       "target Home Assistant sets (target_c) is the comfort target",
                       default=None, min=20.0, max=75.0),
    "eco_c": Field(float, "target outside comfort periods and in mode eco", default=45.0,
                   min=20.0, max=75.0),
    "comfort_periods": Field(list, "weekly comfort periods; mode auto follows them, eco outside "
                             "them; without any, auto uses target_c (or the heating curve)",
                             default=None, example='["mon-fri 06:00-22:00", "sat,sun 08:00-23:00"]',
                             items=Field(str, "days (daily, mon, mon-fri, sat,sun), a space, "
                                         "then HH:MM-HH:MM; an end before the start runs past "
                                         "midnight, 24:00 ends the day",
                                         pattern=PERIOD_PATTERN, example="mon-fri 06:00-22:00")),
    "guard_c": Field(float, "lowest tank temperature: the target is never below it, in every "
                     "mode, off included; without it, no guard", default=None, min=20.0,
                     max=75.0),
    "legionella_start": Field(str, "when the weekly anti-legionella cycle starts, a day and a "
                              "time; empty for none", default="",
                              pattern=f"({WEEKLY_TIME_PATTERN})?", example="sun 02:00"),
    "legionella_c": Field(float, "the cycle is done once the tank has held at least this for "
                          "legionella_hold_h without a break", default=60.0, min=60.0, max=70.0),
    "legionella_target_c": Field(float, "the target while the cycle runs (a little above "
                                 "legionella_c, so the tank holds it)", default=62.0, min=60.0,
                                 max=75.0),
    "legionella_hold_h": Field(float, "hours the tank must hold legionella_c", default=1.0,
                               min=1.0, max=12.0),
    "legionella_deadline_h": Field(float, "hours after its start a cycle not done counts as "
                                   "missed (reported, target back to normal)", default=6.0,
                                   min=1.0, max=48.0),
    "curve_slope": Field(float, "heating curve: kelvin of target per kelvin the outdoor "
                         "temperature is below curve_room_c; without it, no curve", default=None,
                         min=0.1, max=4.0),
    "curve_shift_k": Field(float, "heating curve: parallel shift of the whole curve",
                           default=0.0, min=-20.0, max=20.0),
    "curve_room_c": Field(float, "heating curve: the outdoor temperature at which the target is "
                          "curve_room_c + curve_shift_k", default=20.0, min=10.0, max=30.0),
    "outdoor_reading": Field(str, "outdoor temperature for the heating curve: " + _READING_RULE
                             + "; without it, `site/outdoor` (outdoor_c) over MQTT",
                             default="", pattern=_READING_NAME, example="outdoor"),
    "outdoor_timeout_s": Field(float, "an outdoor temperature older than this is not used (the "
                               "curve gives way to comfort_c)", default=1800.0, min=10.0,
                               max=86400.0),
}

SITE_SCHEMA: Schema = {
    "period_s": Field(float, "how often module budgets are sent", default=10.0, min=1.0,
                      max=600.0),
    "target_c": Field(float, "tank/loop temperature target (Home Assistant can change it)",
                      default=55.0, min=20.0, max=75.0),
    "loop_reading": Field(str, "tank/loop temperature: " + _READING_RULE + "; without it demand "
                          "comes only from `site/demand`", default="", pattern=_READING_NAME,
                          example="tank"),
    "proportional_band_k": Field(float, "demand PI: kelvin below target that ask for the "
                                 "site's full capacity (docs/site.md)", default=2.5, min=0.1,
                                 max=50.0),
    "integral_time_s": Field(float, "demand PI: integral time Tn, in which the integral adds "
                             "what the proportional term gives", default=1200.0, min=10.0,
                             max=86400.0),
    "demand_timeout_s": Field(float, "an external `site/demand` older than this is forgotten",
                              default=120.0, min=1.0, max=86400.0),
    **SITE_PLAN_SCHEMA,
    "metrics_port": Field(int, "Prometheus endpoint port for the site's totals (/metrics); 0 "
                          "for none", default=9106, min=0, max=65535),
    "metrics_address": _metrics_address("the site"),
}


@dataclasses.dataclass(frozen=True)
class Site:
    """[site]: how the site role turns building demand into module budgets."""

    period_s: float
    target_c: float
    loop_reading: str
    proportional_band_k: float
    integral_time_s: float
    demand_timeout_s: float
    timezone: str
    comfort_c: float | None
    eco_c: float
    comfort_periods: tuple[str, ...] | None
    guard_c: float | None
    legionella_start: str
    legionella_c: float
    legionella_target_c: float
    legionella_hold_h: float
    legionella_deadline_h: float
    curve_slope: float | None
    curve_shift_k: float
    curve_room_c: float
    outdoor_reading: str
    outdoor_timeout_s: float
    metrics_port: int
    metrics_address: str


REPORT_SCHEMA: Schema = {
    "displaced": Field(str, "the heating the boards' heat stands in for in the statement",
                       default="gas", choices=("gas", "electric")),
    "gas_boiler_efficiency": Field(float, "seasonal efficiency of the gas boiler displaced "
                                   "(0.90: a condensing boiler, EU ErP / SAP figures)",
                                   default=0.90, min=0.3, max=1.1),
    "electric_heater_efficiency": Field(float, "efficiency of the electric heating displaced "
                                        "(1.0: resistive; a heat pump's seasonal COP, e.g. 3.0)",
                                        default=1.0, min=0.5, max=8.0),
    "gas_co2_kg_per_kwh": Field(float, "CO2e per kWh of natural gas burnt (0.183: UK DESNZ "
                                "GHG conversion factors 2024, natural gas, gross CV)",
                                default=0.183, min=0.0, max=1.0),
    "grid_co2_kg_per_kwh": Field(float, "CO2e per kWh of grid electricity (0.207: UK DESNZ GHG "
                                 "conversion factors 2024, UK electricity generation); use "
                                 "your grid's", default=0.207, min=0.0, max=2.0),
    "gas_price_per_kwh": Field(float, "gas tariff, in `currency` per kWh; 0 leaves the cost "
                               "out of the statement", default=0.0, min=0.0, max=10.0),
    "electricity_price_per_kwh": Field(float, "electricity tariff, in `currency` per kWh; 0 "
                                       "leaves the cost out of the statement", default=0.0,
                                       min=0.0, max=10.0),
    "currency": Field(str, "the tariffs' currency, as printed", default="EUR",
                      pattern=r"[A-Za-z]{1,8}"),
}


@dataclasses.dataclass(frozen=True)
class Report:
    """[report]: the factors and tariffs of the site's monthly statement (docs/report.md)."""

    displaced: str
    gas_boiler_efficiency: float
    electric_heater_efficiency: float
    gas_co2_kg_per_kwh: float
    grid_co2_kg_per_kwh: float
    gas_price_per_kwh: float
    electricity_price_per_kwh: float
    currency: str


_GPIO = Field(int, "BCM GPIO number", min=0, max=27)

PINS_SCHEMA: Schema = {
    "one_wire_gpio": Field(int, "1-wire data line of the DS18B20s (dtoverlay=w1-gpio,gpiopin=N)",
                           min=0, max=27),
    "flow_gpio": Field(int, "pulse output of the water flow meter", min=0, max=27),
    "status_led_gpio": Field(int, "status LED, blinked by `identify`", min=0, max=27),
    "slot_id_gpios": Field(list, "slot-ID straps on the backplane, bit 0 first, each a BCM GPIO "
                           "number from 0 to 27", example="[5, 6, 13]", items=_GPIO),
}


@dataclasses.dataclass(frozen=True)
class Pins:
    """[pins]: the carrier's GPIO wiring."""

    one_wire_gpio: int
    flow_gpio: int
    status_led_gpio: int
    slot_id_gpios: tuple[int, ...]


# Sections of the site config: (table name, schema, what it is for, required as a whole).
SECTIONS: tuple[tuple[str, Schema, str, bool], ...] = (
    ("identity", IDENTITY_SCHEMA, "Who this board is. Optional: without it the board learns its "
     "identity at boot (boot-partition file, slot straps, serial number). If present, all three "
     "keys are required.", False),
    ("limits", LIMITS_SCHEMA, "Safety thresholds and the power range the controller may command.",
     True),
    ("control", CONTROL_SCHEMA, "Loop timing and what to do when the leader goes quiet.", True),
    ("actuators", ACTUATORS_SCHEMA, "Where the governor writes: cpufreq policy and cgroups.", True),
    ("pins", PINS_SCHEMA, "GPIO wiring. The board definition declares all of them; the site "
     "config may override any.", True),
    ("mqtt", MQTT_SCHEMA, "The site's MQTT broker and its standby (docs/mqtt.md). Optional: "
     "without it the board runs on its own, on its fallback setpoint. If present, `brokers` is "
     "required.", False),
    ("leader", LEADER_SCHEMA, "Only on the board that runs `hearth leader` for its module: the "
     "leader's timing and the module's own sensors, named by reading (docs/leader.md).", False),
    ("site", SITE_SCHEMA, "Only where `hearth site` runs: how building demand is found.", False),
    ("report", REPORT_SCHEMA, "Only where `hearth report` runs: the factors and tariffs of the "
     "site's monthly statement (docs/report.md).", False),
)

SENSOR_NAME_FIELD = Field(str, "unique sensor name, used in readings and MQTT state: lowercase "
                          "letters, digits and '_', starting with a letter",
                          pattern=r"[a-z][a-z0-9_]*", example="water_in")

# What a sensor may be declared to be for (`role`), with the quantity its driver must measure
# for it (each driver lists its QUANTITIES) and who reads it. Roles are resolved once, when the
# config is loaded; a sensor without a role is only measured and reported.
SENSOR_ROLES: dict[str, tuple[str, str]] = {
    "power": ("power", "the board's electric power: the power loop holds it at the setpoint; "
              "the supervisor checks it"),
    "soc": ("soc_temperature", "the SoC temperature: its limit loop and the supervisor's "
            "warning, limit and critical stages"),
    "oil": ("temperature", "the oil bath at the board: its limit loop and the supervisor's "
            "stages"),
    "flow": ("flow", "water flow through the board's heat exchanger: flow lost makes the board "
             "SAFE; with water_in and water_out it gives the heat in the state report"),
    "throttle": ("supply_flags", "the firmware's under-voltage and throttling flags: the "
                 "supervisor's supply check"),
    "water_in": ("temperature", "heat exchanger inlet: reported, and the heat in the state report"),
    "water_out": ("temperature", "heat exchanger outlet: reported, and the heat in the state "
                  "report"),
    "module_water_in": ("temperature", "the module's water inlet, read by `hearth leader` for "
                        "the module heat meter"),
    "module_water_out": ("temperature", "the module's water outlet, read by `hearth leader` for "
                         "the module heat meter"),
    "module_flow": ("flow", "the module's water flow, read by `hearth leader`: its interlock "
                    "and heat meter"),
    "module_oil": ("temperature", "the module's oil, read by `hearth leader`: its interlock"),
}

# The [leader] keys that name a module sensor's reading, from before sensors declared roles;
# still read, so a leader's config written then keeps working, and the one way to give the
# leader a sensor that already has a board role (the board's own oil).
LEADER_ROLE_KEYS: dict[str, str] = {
    "module_water_in": "water_in_reading",
    "module_water_out": "water_out_reading",
    "module_flow": "flow_reading",
    "module_oil": "oil_reading",
}

SENSOR_ROLE_FIELD = Field(str, "what the sensor is for (see Sensor roles below); without one it "
                          "is only measured and reported", default=None,
                          choices=tuple(SENSOR_ROLES))

BOARD_SCHEMA: Schema = {
    "description": Field(str, "what the carrier board is, for people",
                         example="Hearth oil carrier"),
}

# Values that must rise along each chain: (key paths, strictly). Checked after every single value
# passed its own bounds; listed in the generated reference.
ORDERED_CHAINS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("limits.soc_warning_c", "limits.soc_limit_c", "limits.soc_critical_c"), True),
    (("limits.oil_warning_c", "limits.oil_limit_c", "limits.oil_critical_c"), True),
    (("limits.power_min_w", "limits.power_max_w"), True),
    (("limits.power_min_w", "control.fallback_setpoint_w", "limits.power_max_w"), False),
    (("control.period_s", "control.report_period_s"), False),
    (("site.eco_c", "site.comfort_c"), False),
    (("site.legionella_c", "site.legionella_target_c"), False),
    (("site.legionella_hold_h", "site.legionella_deadline_h"), True),
)

# What an operator does when a required sensor key is missing and the key's doc is not enough.
MISSING_KEY_HINTS: dict[tuple[str, str], str] = {
    ("ds18b20", "id"): "the board definition leaves DS18B20 ids to each board: set it in the site "
                       "config; the serial console's `w1 list` shows the ids on this bus, with the "
                       "agent stopped too",
}


@dataclasses.dataclass(frozen=True)
class SensorConfig:
    """One sensor after merging board and site tables: settings has every key of the driver's
    SCHEMA (defaults filled, name and kind removed) and is read-only."""

    name: str
    kind: str
    settings: Mapping[str, Any]
    role: str | None = None  # None: only measured and reported


@dataclasses.dataclass(frozen=True)
class BoardConfig:
    """Everything a board agent needs from its config, checked, read once."""

    path: Path
    board_type: str
    board_path: str
    board_description: str
    identity: Identity | None  # None: the board learns its identity at boot
    limits: Limits
    control: Control
    actuators: Actuators
    pins: Pins
    sensors: tuple[SensorConfig, ...]
    mqtt: Mqtt | None = None  # None: no broker, the board runs on its own
    leader: Leader | None = None  # None: this board runs no leader
    site: Site | None = None  # None: no site role here
    report: Report | None = None  # None: the statement uses [report]'s defaults
    roles: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}))
    """Each role given in the config -> the reading that serves it (`board_power.power_w`)."""
    leader_only_sensors: frozenset[str] = frozenset()
    """Sensors only `hearth leader` reads, which the board agent must not build as well: two
    processes cannot both count one flow meter's pulses."""

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain TOML/JSON values (what `hearth config show` prints)."""
        effective: dict[str, Any] = {"board_type": self.board_type}
        for section, *_ in SECTIONS:
            values = getattr(self, section)
            if values is not None:
                effective[section] = {key: list(value) if isinstance(value, tuple) else value
                                      for key, value in dataclasses.asdict(values).items()}
        effective["sensor"] = [{"name": sensor.name, "kind": sensor.kind,
                                **({"role": sensor.role} if sensor.role else {}),
                                **sensor.settings}
                               for sensor in self.sensors]
        return effective
