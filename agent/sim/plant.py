"""The physics of one board in its oil bath: what the CPU settings make in watts and degrees.

Inputs are what the agent sets (frequency cap, workload quota and freeze, heat-fill) and what
the building does (water flow and inlet temperature); outputs are what the sensors see. The
model is deliberately small: a first-order SoC, a lumped oil bath and an effectiveness-NTU heat
exchanger, integrated with explicit Euler steps short against every time constant.
"""

import dataclasses
import math

from agent.sim.params import BoardParams

WATER_KG_PER_L = 1.0


@dataclasses.dataclass
class CpuDemand:
    """What runs on the CPU: the paid workload and the heat-fill load, as the kernel sees them."""

    workload_utilisation: float = 1.0
    """Fraction of all cores the paid work would use if nothing held it back."""
    workload_quota_cpus: float | None = None
    workload_frozen: bool = False
    heatfill_running: bool = False
    heatfill_quota_cpus: float | None = None
    heatfill_frozen: bool = False


class BoardPlant:
    def __init__(self, params: BoardParams, soc_c: float | None = None,
                 oil_c: float | None = None):
        self.params = params
        self.cap_mhz = params.operating_points_mhz[-1]
        self.demand = CpuDemand()
        self.water_flow_l_per_min = params.water_flow_l_per_min
        self.water_inlet_c = params.water_inlet_c
        self.under_voltage = False
        start_c = params.water_inlet_c if oil_c is None else oil_c
        self.oil_c = start_c
        self.soc_c = start_c if soc_c is None else soc_c
        self.power_w = params.idle_w
        self.heat_to_water_w = 0.0
        self.energy_electric_j = 0.0
        self.energy_to_water_j = 0.0
        self.energy_to_room_j = 0.0

    def effective_mhz(self) -> int:
        """The frequency the firmware lets the Arm run at: the cap, unless it throttles."""
        p = self.params
        mhz = self.cap_mhz
        if self.under_voltage or self.soc_c >= p.firmware_hard_limit_c:
            return p.operating_points_mhz[0]
        if self.soc_c >= p.firmware_soft_limit_c:
            return min(mhz, p.firmware_soft_limit_mhz)
        return mhz

    def workload_cores(self) -> float:
        """CPUs the paid work actually gets: its demand, unless frozen or held by its quota."""
        p, d = self.params, self.demand
        if d.workload_frozen:
            return 0.0
        return min(d.workload_utilisation * p.cores,
                   p.cores if d.workload_quota_cpus is None else d.workload_quota_cpus)

    def workload_throttled(self) -> bool:
        d = self.demand
        return (not d.workload_frozen and d.workload_quota_cpus is not None
                and d.workload_utilisation * self.params.cores > d.workload_quota_cpus)

    def heatfill_cores(self) -> float:
        """The heat-fill load takes what the paid work leaves, up to its own quota."""
        p, d = self.params, self.demand
        if not d.heatfill_running or d.heatfill_frozen:
            return 0.0
        return max(0.0, min(p.cores - self.workload_cores(),
                            p.cores if d.heatfill_quota_cpus is None else d.heatfill_quota_cpus))

    def busy_cores(self) -> float:
        return self.workload_cores() + self.heatfill_cores()

    def core_busy_w(self, mhz: float) -> float:
        """Power of one fully busy core at `mhz`: proportional to f * V^2."""
        p = self.params
        low, top = p.operating_points_mhz[0], p.operating_points_mhz[-1]
        volts = p.core_volts_at_min + (p.core_volts_at_top - p.core_volts_at_min) * (
            (mhz - low) / (top - low))
        return p.core_busy_w_at_top * (mhz / top) * (volts / p.core_volts_at_top) ** 2

    def electric_power_w(self) -> float:
        return self.params.idle_w + self.busy_cores() * self.core_busy_w(self.effective_mhz())

    def bus_voltage_v(self) -> float:
        p = self.params
        return p.supply_v - p.supply_ohms * self.power_w / p.supply_v

    def current_a(self) -> float:
        return self.power_w / self.bus_voltage_v()

    def water_outlet_c(self) -> float:
        capacity_rate = self._water_capacity_rate_w_per_k()
        if capacity_rate == 0.0:
            return self.oil_c
        return self.water_inlet_c + self.heat_to_water_w / capacity_rate

    def _water_capacity_rate_w_per_k(self) -> float:
        p = self.params
        return (self.water_flow_l_per_min / 60.0 * WATER_KG_PER_L
                * p.water_heat_capacity_j_per_kg_k)

    def exchanger_w_per_k(self) -> float:
        """Heat from oil to water per kelvin between the oil and the inlet water at the
        present flow: effectiveness-NTU with the oil as an isothermal bath."""
        capacity_rate = self._water_capacity_rate_w_per_k()
        if capacity_rate == 0.0:
            return 0.0
        effectiveness = 1.0 - math.exp(-self.params.exchanger_ua_w_per_k / capacity_rate)
        return effectiveness * capacity_rate

    def _exchanger_w(self) -> float:
        return self.exchanger_w_per_k() * (self.oil_c - self.water_inlet_c)

    def step(self, dt_s: float) -> None:
        p = self.params
        self.power_w = self.electric_power_w()
        soc_to_oil_w = (self.soc_c - self.oil_c) / p.soc_to_oil_k_per_w
        self.heat_to_water_w = self._exchanger_w()
        oil_to_room_w = p.oil_to_room_w_per_k * (self.oil_c - p.room_c)
        self.soc_c += (self.power_w - soc_to_oil_w) * dt_s / p.soc_heat_capacity_j_per_k
        self.oil_c += ((soc_to_oil_w - self.heat_to_water_w - oil_to_room_w) * dt_s
                       / p.oil_heat_capacity_j_per_k)
        self.energy_electric_j += self.power_w * dt_s
        self.energy_to_water_j += self.heat_to_water_w * dt_s
        self.energy_to_room_j += oil_to_room_w * dt_s
