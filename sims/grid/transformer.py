"""Distribution transformers: rating and a simplified IEEE C57.91 thermal model.

Theory of operation
-------------------
IEEE Std C57.91-2011 ("Guide for Loading Mineral-Oil-Immersed Transformers"), clause 7, the
exponential top-oil / hot-spot model. With K the load in per unit of the rating and
theta_A the ambient temperature:

    ultimate top-oil rise   dTO_U = dTO_R * ((K^2 R + 1) / (R + 1))^n
    top oil                 tau_TO dTO/dt = dTO_U - dTO               (theta_TO = theta_A + dTO)
    ultimate hot-spot rise  dH_U  = dH_R * K^(2m)
    hot spot over top oil   tau_W  dH/dt  = dH_U - dH                 (theta_H = theta_TO + dH)

Each rise moves toward its ultimate value exponentially; with the load held for a step the
update ``x += (x_U - x)(1 - exp(-dt/tau))`` is exact, and it is vectorised over all
transformers. "Simplified": no ambient dynamics, no viscosity correction, no separate
winding-to-oil time constant per cooling mode, and reverse power flow (V2G export) heats the
windings like forward flow (K is the magnitude).

Default parameters (``ThermalParams()``), an ONAN distribution transformer of 65 degC average
winding rise: rated top-oil rise 55 K and hot-spot rise over top oil 25 K (so 110 degC hot spot
at 30 degC ambient, the standard's normal-life reference), loss ratio R = 5, exponents
n = m = 0.8 (C57.91 table 4 for ONAN), oil time constant 180 min and winding 4 min (typical
of pole- and pad-mount units; the standard computes tau_TO from the thermal capacity).
"""

from __future__ import annotations

import attrs
import numpy as np
from numpy.typing import NDArray

HOT_SPOT_LIMIT_C = 110.0  # normal-life reference of C57.91 for 65 degC rise insulation


@attrs.frozen
class ThermalParams:
    top_oil_rise_rated_k: float = 55.0
    hot_spot_rise_rated_k: float = 25.0
    loss_ratio_r: float = 5.0
    oil_exponent_n: float = 0.8
    winding_exponent_m: float = 0.8
    oil_tau_s: float = 180 * 60.0
    winding_tau_s: float = 4 * 60.0
    ambient_c: float = 30.0


@attrs.define
class Transformers:
    """A bank of transformers: ratings (kW at unity power factor) and their temperatures."""

    rating_kw: NDArray[np.float64]
    params: ThermalParams = ThermalParams()
    top_oil_rise_k: NDArray[np.float64] = attrs.field(init=False)
    hot_spot_rise_k: NDArray[np.float64] = attrs.field(init=False)
    _dt_s: float = attrs.field(init=False, default=-1.0)
    _oil_f: float = attrs.field(init=False, default=0.0)
    _winding_f: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        self.rating_kw = np.asarray(self.rating_kw, dtype=np.float64)
        self.settle(np.zeros_like(self.rating_kw))

    def ultimate(self, load_kw: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        p = self.params
        k = np.abs(load_kw) / self.rating_kw
        top = p.top_oil_rise_rated_k * ((k * k * p.loss_ratio_r + 1) / (p.loss_ratio_r + 1)) ** p.oil_exponent_n
        hot = p.hot_spot_rise_rated_k * k ** (2 * p.winding_exponent_m)
        return top, hot

    def settle(self, load_kw: NDArray[np.float64]) -> None:
        """Start in thermal equilibrium with ``load_kw``."""
        self.top_oil_rise_k, self.hot_spot_rise_k = self.ultimate(np.asarray(load_kw, dtype=np.float64))

    def step(self, load_kw: NDArray[np.float64], dt_s: float) -> None:
        top_u, hot_u = self.ultimate(load_kw)
        if dt_s != self._dt_s:  # the decay factors of a step, cached: the runner's dt is fixed
            p = self.params
            self._dt_s = dt_s
            self._oil_f = 1 - float(np.exp(-dt_s / p.oil_tau_s))
            self._winding_f = 1 - float(np.exp(-dt_s / p.winding_tau_s))
        self.top_oil_rise_k += (top_u - self.top_oil_rise_k) * self._oil_f
        self.hot_spot_rise_k += (hot_u - self.hot_spot_rise_k) * self._winding_f

    @property
    def top_oil_c(self) -> NDArray[np.float64]:
        return self.params.ambient_c + self.top_oil_rise_k

    @property
    def hot_spot_c(self) -> NDArray[np.float64]:
        return self.params.ambient_c + self.top_oil_rise_k + self.hot_spot_rise_k
