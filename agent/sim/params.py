"""Physical parameters of a simulated board, in one documented place.

Figures for a Raspberry Pi 4 / CM4 in a small oil bath with a water heat exchanger.
Sources: DESIGN.md section 7 (Pi 4 idle 2-3 W, 5.5-6.5 W with four cores at 1.5 GHz;
cpufreq operating points every 100 MHz from 600 to 1500 MHz; firmware soft limit 80 C, hard
limit 85 C), the Pi 4's published core-voltage range (about 0.8 V at 600 MHz to 0.9 V at
1.5 GHz), and textbook values for mineral oil and water.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class BoardParams:
    cores: int = 4
    operating_points_mhz: tuple[int, ...] = tuple(range(600, 1501, 100))
    idle_w: float = 2.7
    """Board power with no CPU work (SoC idle, RAM, PMIC, carrier), independent of the cap."""
    core_busy_w_at_top: float = 0.85
    """Extra power of one fully busy core at the top point: 2.7 + 4 x 0.85 = 6.1 W."""
    core_volts_at_min: float = 0.80
    core_volts_at_top: float = 0.90
    """Dynamic power scales with f * V^2; V rises linearly between these two points."""
    supply_v: float = 5.10
    supply_ohms: float = 0.05
    """Cable and connector resistance: the bus voltage sags as current rises."""

    soc_to_oil_k_per_w: float = 4.0
    """Junction-to-oil thermal resistance of the immersed SoC with its heat spreader."""
    soc_time_constant_s: float = 20.0
    firmware_soft_limit_c: float = 80.0
    firmware_soft_limit_mhz: int = 1000
    firmware_hard_limit_c: float = 85.0

    oil_litres: float = 2.0
    oil_density_kg_per_l: float = 0.85
    oil_heat_capacity_j_per_kg_k: float = 1900.0
    oil_to_room_w_per_k: float = 0.05
    room_c: float = 20.0
    exchanger_ua_w_per_k: float = 5.0
    """Oil-to-water heat exchanger conductance (a coil in the bath)."""

    water_flow_l_per_min: float = 0.5
    water_inlet_c: float = 30.0
    water_heat_capacity_j_per_kg_k: float = 4180.0
    flow_meter_pulses_per_litre: float = 450.0
    water_pressure_bar: float = 1.5

    @property
    def oil_heat_capacity_j_per_k(self) -> float:
        return self.oil_litres * self.oil_density_kg_per_l * self.oil_heat_capacity_j_per_kg_k

    @property
    def soc_heat_capacity_j_per_k(self) -> float:
        return self.soc_time_constant_s / self.soc_to_oil_k_per_w
