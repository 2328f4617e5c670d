"""The DVFS governor: turns a power command in watts into CPU settings.

Three regimes, from most heat to least, chosen with the learned power model:
* the paid work at the top frequency is not enough: run the heat-fill load at the top
  frequency, with a CPU quota sized to make up the difference;
* the paid work alone can make the heat: pick the continuous frequency that makes it and
  dither between the two neighbouring operating points, so the average is exact;
* even the lowest frequency makes too much: stay at the lowest point and hold the paid work
  to a CPU quota on fewer cores (the only lever on a Pi 5, which runs 1.5 GHz for anything
  below).
Each setting is written only when it changes (SysfsAttribute).
"""

import dataclasses
import math

from agent.control.power_model import PowerModel
from agent.drivers.cgroup import CpuGroup
from agent.drivers.cpufreq import CpuFreqPolicy
from agent.drivers.safe_actuators import (
    MIN_HEATFILL_CPUS, MIN_WORKLOAD_QUOTA_CPUS, safe_actuators)
from agent.errors import HardwareError


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the governor applied this period."""

    freq_khz: int
    workload_quota_cpus: float | None
    workload_frozen: bool
    heatfill_cpus: float
    predicted_w: float


class DvfsGovernor:
    def __init__(self, policy: CpuFreqPolicy, workload: CpuGroup, heatfill: CpuGroup,
                 cores: int):
        self.policy = policy
        self.workload = workload
        self.heatfill = heatfill
        self.cores = cores
        self.top_khz = policy.top_khz
        self._points_x = [khz / self.top_khz for khz in policy.available_khz]
        self._dither_accumulator = 0.0
        self._cpu_lists = [list(range(n)) for n in range(cores + 1)]

    def apply(self, command_w: float, demand_cores: float, model: PowerModel) -> Settings:
        """Settings for `command_w` given the paid work's CPU demand; written to sysfs."""
        demand = min(float(self.cores), max(0.0, demand_cores))
        x_min = self._points_x[0]
        at_top_w = model.predict_w(1.0, demand)
        if command_w >= at_top_w or demand < MIN_WORKLOAD_QUOTA_CPUS:
            self._dither_accumulator = 0.0
            heatfill = min(self.cores - demand, max(0.0, command_w - at_top_w) / model.core_w(1.0))
            return self._write(self.top_khz, None, heatfill, model.predict_w(1.0, demand + heatfill))
        at_min_w = model.predict_w(x_min, demand)
        if command_w >= at_min_w:
            return self._dither(command_w, demand, model, at_min_w)
        self._dither_accumulator = 0.0
        quota = max(MIN_WORKLOAD_QUOTA_CPUS, (command_w - model.idle_w) / model.core_w(x_min))
        quota = min(quota, demand)
        return self._write(self.policy.min_khz, quota, 0.0, model.predict_w(x_min, quota))

    def safe(self, freeze_workload: bool) -> Settings:
        """The SAFE settings: lowest frequency, workload frozen or at its minimum quota,
        heat-fill stopped."""
        self._dither_accumulator = 0.0
        failures = safe_actuators([self.policy], self.workload, self.heatfill, freeze_workload)
        if failures:
            raise HardwareError("SAFE settings not written: " + "; ".join(failures))
        return Settings(self.policy.min_khz, MIN_WORKLOAD_QUOTA_CPUS, freeze_workload, 0.0, 0.0)

    def _dither(self, command_w: float, demand: float, model: PowerModel,
                at_min_w: float) -> Settings:
        """Between two operating points, alternate so the average power is the command."""
        predicted_w = [at_min_w]  # of each point up to the first that makes the command
        for x in self._points_x[1:]:
            if predicted_w[-1] >= command_w:
                break  # always by the top point (x = 1.0): apply() dithers only below its power
            predicted_w.append(model.predict_w(x, demand))
        upper = len(predicted_w) - 1
        if upper == 0:
            return self._write(self.policy.available_khz[0], None, 0.0, predicted_w[0])
        low_w, high_w = predicted_w[upper - 1], predicted_w[upper]
        duty = (command_w - low_w) / (high_w - low_w) if high_w > low_w else 1.0
        self._dither_accumulator += duty
        index = upper - 1
        if self._dither_accumulator >= 1.0:
            self._dither_accumulator -= 1.0
            index = upper
        return self._write(self.policy.available_khz[index], None, 0.0, predicted_w[index])

    def _write(self, freq_khz: int, workload_quota: float | None, heatfill_cpus: float,
               predicted_w: float) -> Settings:
        self.policy.cap(freq_khz)
        self.workload.freeze(False)
        self.workload.set_quota(workload_quota)
        if workload_quota is not None:
            self.workload.set_cpus(self._cpu_lists[math.ceil(workload_quota)])
        else:
            self.workload.set_cpus(self._cpu_lists[self.cores])
        running = heatfill_cpus >= MIN_HEATFILL_CPUS
        self.heatfill.set_quota(heatfill_cpus if running else MIN_HEATFILL_CPUS)
        self.heatfill.freeze(not running)
        return Settings(freq_khz, workload_quota, False, heatfill_cpus if running else 0.0,
                        predicted_w)
