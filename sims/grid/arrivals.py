"""Vehicle arrivals: a Poisson process whose rate follows the time of day, plus surges.

Theory of operation
-------------------
Arrivals at a site are a non-homogeneous Poisson process with a rate that is constant within
each hour of the day: ``rate(t) = sessions_per_day * HOURLY_SHARE[hour(t)] / 3600`` per second.
A step of ``dt`` draws ``Poisson(rate * dt)`` arrivals (the exact count for a piecewise-constant
rate), so a day is 1,440 draws at 1-minute steps, not one event per vehicle.

``WORKPLACE_WEEKDAY`` is the hourly share of weekday session starts at a workplace garage,
shaped after the arrival distribution published with ACN-Data (Z. J. Lee, T. Li, S. H. Low,
"ACN-Data: Analysis and Applications of an Open EV Charging Dataset", ACM e-Energy 2019; data
at https://ev.caltech.edu/dataset, CC BY 4.0): a sharp morning peak at 8-9 h holding about a
third of the day's arrivals within two hours, a small lunchtime bump and a thin evening tail.
It is NOT a refit of the raw sessions: this build machine cannot download the data set, so the
shares were transcribed from the paper's published arrival histogram (Caltech site, weekdays)
to two significant figures and renormalised. Refit them from the API (``sessions`` endpoint,
``connectionTime``) before quoting a study's absolute numbers. Session energy and dwell use the
same paper's orders of magnitude: about 10 kWh requested and 6-9 h parked at a workplace.

A surge (a shift change, a fleet returning to a depot) is ``count`` vehicles arriving
uniformly within ``window_s`` after ``at_s``: the synchronised demand spike of the scenarios.
Vehicles are drawn from the hardware layer's table (``hardware.simulated.vehicles``).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np
from numpy.typing import NDArray

from hardware.simulated.vehicles import VEHICLE_SPECS

_RAW_WORKPLACE = [
    0.002, 0.001, 0.001, 0.001, 0.002, 0.008, 0.035, 0.120, 0.195, 0.150, 0.085, 0.060,
    0.060, 0.070, 0.055, 0.040, 0.030, 0.025, 0.020, 0.015, 0.012, 0.008, 0.005, 0.003,
]
WORKPLACE_WEEKDAY: tuple[float, ...] = tuple(x / sum(_RAW_WORKPLACE) for x in _RAW_WORKPLACE)
FLAT: tuple[float, ...] = tuple(1 / 24 for _ in range(24))
PROFILES = {"workplace": WORKPLACE_WEEKDAY, "flat": FLAT}


def arrivals_in_step(
    rng: np.random.Generator, t_s: float, dt_s: float, sessions_per_day: float,
    profile: tuple[float, ...] = WORKPLACE_WEEKDAY,
) -> int:
    hour = int(t_s // 3600) % 24
    return int(rng.poisson(sessions_per_day * profile[hour] * dt_s / 3600.0))


@attrs.frozen
class Surge:
    at_s: float
    count: int
    window_s: float

    def arrivals_in(self, lo_s: float, hi_s: float) -> int:
        """How many of this surge's vehicles arrive in [lo, hi): evenly spread over the window,
        so consecutive steps add up to exactly ``count``."""
        return self._arrived_by(hi_s) - self._arrived_by(lo_s)

    def _arrived_by(self, t_s: float) -> int:
        if t_s <= self.at_s:
            return 0
        if self.window_s <= 0 or t_s >= self.at_s + self.window_s:
            return self.count
        return int(self.count * (t_s - self.at_s) / self.window_s)


@attrs.frozen
class VehicleDraw:
    battery_wh: NDArray[np.float64]
    charge_w: NDArray[np.float64]
    discharge_w: NDArray[np.float64]
    soc: NDArray[np.float64]
    dwell_s: NDArray[np.float64]


MODELS = tuple(VEHICLE_SPECS)


@functools.lru_cache(maxsize=16)
def _table(mix: tuple[tuple[str, float], ...] | None) -> tuple[NDArray[np.float64], ...]:
    """Pick probabilities and per-model figures as arrays, built once per mix."""
    names = [m for m, _ in mix] if mix else list(MODELS)
    weights = np.array([w for _, w in mix] if mix else [1.0] * len(names))
    specs = [VEHICLE_SPECS[m] for m in names]
    return (
        weights / weights.sum(),
        np.array([s.battery_kwh * 1000 for s in specs]),
        np.array([s.charge_kw * 1000 for s in specs]),
        np.array([s.discharge_kw * 1000 for s in specs]),
    )


def draw_vehicles(rng: np.random.Generator, n: int, mix: dict[str, float] | None = None) -> VehicleDraw:
    """``n`` arriving vehicles: model by ``mix`` (share per model name), SoC and dwell at random."""
    p, battery_t, charge_t, discharge_t = _table(tuple(sorted(mix.items())) if mix else None)
    pick = rng.choice(len(p), size=n, p=p)
    battery, charge, discharge = battery_t[pick], charge_t[pick], discharge_t[pick]
    return VehicleDraw(
        battery_wh=battery,
        charge_w=charge,
        discharge_w=discharge,
        soc=rng.uniform(0.3, 0.8, n),
        dwell_s=rng.uniform(6 * 3600, 9 * 3600, n),
    )
