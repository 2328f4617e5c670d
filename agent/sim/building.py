"""The building a site heats, well enough to judge a site controller by: a buffer tank in two
layers, space heating driven by the outdoor temperature, hot-water draws at the times people
draw it, and the tank's own standing loss. docs/building-model.md gives every parameter's
source.

Why two layers and not one mixed volume: a hot-water draw takes from the top and lets cold
mains in at the bottom, and the sensor a site reads sits near the top, so a mixed tank would
hide the dip a shower makes. Why energies are counted: a model that judges controllers must
conserve energy, and the counters let a test prove it does (heat in - losses - space heating -
hot water = change of stored heat).
"""

import dataclasses
import math

WATER_J_PER_L_K = 4180.0
"""Water's heat capacity per litre (c_p 4.18 kJ/(kg K), 1 kg/l; DESIGN.md section 7)."""
BAND_K = 0.5
"""The target band: within target +/- this the tank counts as on target."""
ERP_CLASSES = {"A+": (5.5, 3.16), "A": (8.5, 4.25), "B": (12.0, 5.93), "C": (16.66, 8.33),
               "D": (21.0, 10.33)}
"""EU Regulation 812/2013, Annex II: the highest standing loss S (W) of each class for a tank of
V litres, S = a + b * V^0.4, measured at 45 K above ambient (EN 12897's method)."""
ERP_TEST_DELTA_K = 45.0


def erp_standing_loss_w_per_k(litres: float, energy_class: str) -> float:
    """The loss coefficient of a tank that just meets an ErP class."""
    a, b = ERP_CLASSES[energy_class]
    return (a + b * litres ** 0.4) / ERP_TEST_DELTA_K


@dataclasses.dataclass(frozen=True)
class TankParams:
    litres: float = 800.0
    top_share: float = 0.4
    """Share of the volume in the top layer: the sensor's layer, where heat arrives and leaves."""
    standing_loss_w_per_k: float = erp_standing_loss_w_per_k(800.0, "C")
    mixing_w_per_k: float = 20.0
    """Heat exchanged between the layers by conduction and the ports' stirring."""
    plant_room_c: float = 15.0
    mains_c: float = 10.0
    room_c: float = 20.0
    """Radiators give nothing from water at room temperature or below."""


class BufferTank:
    """Two mixed layers; every flow is computed from the temperatures at the start of a step."""

    def __init__(self, params: TankParams, start_c: float):
        self.params = params
        self.top_j_per_k = params.litres * params.top_share * WATER_J_PER_L_K
        self.bottom_j_per_k = params.litres * (1.0 - params.top_share) * WATER_J_PER_L_K
        self.top_c = start_c
        self.bottom_c = start_c
        self.heat_in_j = 0.0
        self.loss_j = 0.0
        self.space_heat_j = 0.0
        self.hot_water_j = 0.0
        """Heat carried out by drawn water, counted above the mains temperature."""

    @property
    def temperature_c(self) -> float:
        """What the site's tank sensor reads: the top layer."""
        return self.top_c

    def stored_j(self) -> float:
        """Heat held above 0 C (only its change matters)."""
        return self.top_j_per_k * self.top_c + self.bottom_j_per_k * self.bottom_c

    def step(self, dt_s: float, heat_in_w: float, space_heat_w: float,
             hot_water_w: float) -> float:
        """Advance `dt_s`; returns the space heating delivered (W), which the radiators cannot
        take below room temperature. Hot water comes through a thermostatic mixer: the energy
        asked for is drawn, by volume, whatever the tank's temperature above the mains."""
        p = self.params
        top_c, bottom_c = self.top_c, self.bottom_c
        space_w = min(max(0.0, space_heat_w),
                      max(0.0, top_c - p.room_c) * self.top_j_per_k / dt_s)
        draw_l = max(0.0, hot_water_w) * dt_s / (WATER_J_PER_L_K * max(top_c - p.mains_c, 1.0))
        draw_l = min(draw_l, p.litres * min(p.top_share, 1.0 - p.top_share))
        hot_water_j = draw_l * WATER_J_PER_L_K * (top_c - p.mains_c)
        mixing_w = p.mixing_w_per_k * (top_c - bottom_c)
        top_loss_w = p.standing_loss_w_per_k * p.top_share * (top_c - p.plant_room_c)
        bottom_loss_w = p.standing_loss_w_per_k * (1.0 - p.top_share) * (bottom_c - p.plant_room_c)
        moved_j_per_k = draw_l * WATER_J_PER_L_K
        self.top_c += ((heat_in_w - space_w - mixing_w - top_loss_w) * dt_s
                       + moved_j_per_k * (bottom_c - top_c)) / self.top_j_per_k
        self.bottom_c += ((mixing_w - bottom_loss_w) * dt_s
                          + moved_j_per_k * (p.mains_c - bottom_c)) / self.bottom_j_per_k
        if self.bottom_c > self.top_c:  # warmer water below rises: the layers mix
            mixed_c = self.stored_j() / (self.top_j_per_k + self.bottom_j_per_k)
            self.top_c = self.bottom_c = mixed_c
        self.heat_in_j += heat_in_w * dt_s
        self.loss_j += (top_loss_w + bottom_loss_w) * dt_s
        self.space_heat_j += space_w * dt_s
        self.hot_water_j += hot_water_j
        return space_w


@dataclasses.dataclass(frozen=True)
class OutdoorDay:
    """An outdoor temperature over a day: a sine between the coldest hour (dawn) and the warmest
    (mid-afternoon), with an optional cold snap that falls by `snap_drop_k` over `snap_ramp_h`
    from `snap_start_h` and stays."""

    mean_c: float
    swing_k: float
    warmest_hour: float = 15.0
    snap_start_h: float | None = None
    snap_drop_k: float = 0.0
    snap_ramp_h: float = 3.0

    def temperature_c(self, t_s: float) -> float:
        hour = t_s / 3600.0
        outdoor_c = self.mean_c + self.swing_k * math.cos(
            2.0 * math.pi * (hour - self.warmest_hour) / 24.0)
        if self.snap_start_h is not None and hour > self.snap_start_h:
            outdoor_c -= self.snap_drop_k * min(1.0, (hour - self.snap_start_h)
                                                / self.snap_ramp_h)
        return outdoor_c


WINTER_DAY = OutdoorDay(mean_c=2.0, swing_k=3.0)
MILD_DAY = OutdoorDay(mean_c=9.0, swing_k=4.0)
COLD_SNAP = OutdoorDay(mean_c=2.0, swing_k=3.0, snap_start_h=12.0, snap_drop_k=10.0)


@dataclasses.dataclass(frozen=True)
class SpaceHeating:
    """Heat the building needs: its loss coefficient times the degrees below the base
    temperature (the degree-day base, below which heating is needed once internal and solar
    gains are counted)."""

    loss_w_per_k: float
    base_c: float = 15.5

    def load_w(self, outdoor_c: float) -> float:
        return self.loss_w_per_k * max(0.0, self.base_c - outdoor_c)


TAPPING_CYCLE_M = (
    (7.00, 0.105, 1), (7.05, 1.400, 10), (7.30, 0.105, 1), (8.01, 0.105, 1), (8.15, 0.105, 1),
    (8.30, 0.105, 1), (8.45, 0.105, 1), (9.00, 0.105, 1), (9.30, 0.105, 1), (10.30, 0.105, 1),
    (11.30, 0.105, 1), (11.45, 0.105, 1), (12.45, 0.315, 3), (14.30, 0.105, 1),
    (15.30, 0.105, 1), (16.30, 0.105, 1), (18.00, 0.105, 1), (18.15, 0.105, 1),
    (18.30, 0.105, 1), (19.00, 0.105, 1), (20.30, 0.735, 5), (21.15, 0.105, 1),
    (21.30, 1.400, 10))
"""EN 16147 / Regulation 814/2013 load profile M (5.845 kWh a day): (time as hh.mm, kWh,
minutes the draw lasts). The durations are ours: a shower of 10 min, dishwashing 3-5 min,
every small draw 1 min."""


class HotWaterDraws:
    """A tapping cycle repeated every day, each draw as constant power over its duration."""

    def __init__(self, cycle: tuple[tuple[float, float, int], ...] = TAPPING_CYCLE_M,
                 scale: float = 1.0):
        self.draws = []
        for clock, kwh, minutes in cycle:
            hours, minutes_past = divmod(round(clock * 100), 100)
            start_s = hours * 3600.0 + minutes_past * 60.0
            self.draws.append((start_s, start_s + minutes * 60.0,
                               kwh * scale * 3.6e6 / (minutes * 60.0)))

    def power_w(self, t_s: float) -> float:
        day_s = t_s % 86400.0
        return sum(w for start_s, end_s, w in self.draws if start_s <= day_s < end_s)

    def daily_kwh(self) -> float:
        return sum((end_s - start_s) * w for start_s, end_s, w in self.draws) / 3.6e6


@dataclasses.dataclass(frozen=True)
class ComfortFigures:
    """The tank against its target band, as a building's owner would judge it."""

    below_band_k_h: float
    worst_deficit_k: float
    below_band_s: float
    below_2k_s: float
    worst_excess_k: float


def comfort(times_s: list[float], tank_c: list[float | None],
            target_c: list[float | None]) -> ComfortFigures | None:
    """Each sample holds until the next (the last one for the gap before it); None where
    there is no sample with both a tank temperature and a target."""
    pairs = [(t, c, g) for t, c, g in zip(times_s, tank_c, target_c)
             if c is not None and g is not None and math.isfinite(c) and math.isfinite(g)]
    if not pairs:
        return None
    gaps = [later[0] - earlier[0] for earlier, later in zip(pairs, pairs[1:])]
    weights = gaps + [gaps[-1] if gaps else 0.0]
    below_k_s = below_s = below_2k_s = 0.0
    for (_, tank, target), weight in zip(pairs, weights):
        under_k = target - BAND_K - tank
        if under_k > 0:
            below_k_s += under_k * weight
            below_s += weight
        if tank < target - 2.0:
            below_2k_s += weight
    return ComfortFigures(below_k_s / 3600.0, max(0.0, max(g - c for _, c, g in pairs)),
                          below_s, below_2k_s, max(0.0, max(c - g for _, c, g in pairs)))
