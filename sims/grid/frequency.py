"""Area frequency: the swing equation with load damping and one governor-turbine lag.

Theory of operation
-------------------
One balancing area, aggregated into one machine (the classic low-order system frequency
response model: Anderson and Mirheydar, "A low-order system frequency response model",
IEEE Trans. Power Systems 5(3), 1990; Kundur, *Power System Stability and Control*, 1994,
section 11.1). Per unit on the area's base ``base_mw``, deviations from nominal:

    2H  d(df)/dt = dPm - dPload - D df              (swing equation with load damping)
    Tg  d(dPm)/dt = -df / R - dPm                   (governor droop R through a first-order lag)

``dPload`` is the net disturbance: load steps and generator trips add to it, V2G discharge and
curtailed charging subtract from it (they are negative load). Frequency is
``f = nominal_hz * (1 + df)``.

The model is linear, so a step of length ``dt`` with the disturbance held constant is solved
exactly (zero-order hold): ``x[k+1] = Phi x[k] + Gamma u[k]`` with ``Phi = exp(A dt)``. The
integration error is then nil; what a step length costs is only the delay of the feedback
(the V2G response is sampled once per step). ``step_response`` is the closed form of the same
model for a step ``dP`` at t = 0 (the test checks the two against each other):

    df(t) = -dP [1/c + e^{s t} (A cos(w t) + B sin(w t))],  a = 2H Tg, b = 2H + D Tg,
    c = D + 1/R, s = -b / 2a, w = sqrt(4ac - b^2) / 2a, A = -1/c, B = (1/(2H) - s A) / w

(underdamped, which every realistic parameter set is). Initial RoCoF is ``-dP / 2H`` per unit
per second; the settled deviation is ``-dP / (D + 1/R)``.

Default parameters (``AreaParams()``): a small area (50 MW base) so that a few hundred
chargers' V2G is visible, H = 4 s (typical of a thermal-dominated system, Kundur table 3.2
gives 4-10 s for thermal units), D = 1 (1 % load change per 1 % frequency, Kundur 11.1.3),
R = 5 % (the common governor droop setting), Tg = 0.5 s (Kundur example 11.1 uses 0.2 s
governor + 0.5 s turbine; one lag stands for both).
"""

from __future__ import annotations

import math

import attrs
import numpy as np
from numpy.typing import NDArray


@attrs.frozen
class AreaParams:
    base_mw: float = 50.0
    inertia_h_s: float = 4.0
    damping_d_pu: float = 1.0
    droop_r_pu: float = 0.05
    governor_tg_s: float = 0.5
    nominal_hz: float = 60.0

    def __attrs_post_init__(self) -> None:
        for name in ("base_mw", "inertia_h_s", "droop_r_pu", "governor_tg_s", "nominal_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.damping_d_pu < 0:
            raise ValueError("damping_d_pu must be >= 0")

    def matrices(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``A`` and ``B`` of ``x' = A x + B u`` with x = (df, dPm) and u = dPload, per unit."""
        h2, d, r, tg = 2 * self.inertia_h_s, self.damping_d_pu, self.droop_r_pu, self.governor_tg_s
        a = np.array([[-d / h2, 1 / h2], [-1 / (r * tg), -1 / tg]])
        b = np.array([-1 / h2, 0.0])
        return a, b


def _expm(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Matrix exponential by scaling and squaring a Taylor series (2x2: cheap and exact enough)."""
    norm = float(np.abs(a).sum(axis=1).max())
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    m = a / (2**squarings)
    result = np.eye(len(a))
    term = np.eye(len(a))
    for k in range(1, 20):
        term = term @ m / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


@attrs.define
class Area:
    """The area's state; ``step`` advances it by ``dt_s`` with the disturbance held constant."""

    params: AreaParams
    dt_s: float
    df_pu: float = 0.0
    dpm_pu: float = 0.0
    _phi: NDArray[np.float64] = attrs.field(init=False)
    _gamma: NDArray[np.float64] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        a, b = self.params.matrices()
        phi = _expm(a * self.dt_s)
        self._phi = phi
        # Gamma = A^-1 (Phi - I) B, exact for a held input
        self._gamma = np.asarray(np.linalg.solve(a, (phi - np.eye(2)) @ b), dtype=np.float64)

    @property
    def frequency_hz(self) -> float:
        return self.params.nominal_hz * (1.0 + self.df_pu)

    def step(self, disturbance_mw: float) -> float:
        """Advance one step with net extra load ``disturbance_mw``; return the new frequency."""
        u = disturbance_mw / self.params.base_mw
        phi, gamma = self._phi, self._gamma
        df = phi[0, 0] * self.df_pu + phi[0, 1] * self.dpm_pu + gamma[0] * u
        dpm = phi[1, 0] * self.df_pu + phi[1, 1] * self.dpm_pu + gamma[1] * u
        self.df_pu, self.dpm_pu = float(df), float(dpm)
        return self.frequency_hz


def step_response(params: AreaParams, step_mw: float, t_s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Closed-form frequency (Hz) after a load step of ``step_mw`` at t = 0 (see module doc)."""
    h2, d, r, tg = 2 * params.inertia_h_s, params.damping_d_pu, params.droop_r_pu, params.governor_tg_s
    a, b, c = h2 * tg, h2 + d * tg, d + 1 / r
    disc = 4 * a * c - b * b
    if disc <= 0:
        raise ValueError("closed form written for the underdamped case only")
    s = -b / (2 * a)
    w = math.sqrt(disc) / (2 * a)
    big_a = -1 / c
    big_b = (1 / h2 - s * big_a) / w
    dp = step_mw / params.base_mw
    df = -dp * (1 / c + np.exp(s * t_s) * (big_a * np.cos(w * t_s) + big_b * np.sin(w * t_s)))
    return np.asarray(params.nominal_hz * (1 + df), dtype=np.float64)


def nadir_closed_form(params: AreaParams, step_mw: float) -> tuple[float, float]:
    """(time s, frequency Hz) of the lowest point after a load step, from the closed form."""
    t = np.linspace(0.0, 60.0, 600_001)
    f = step_response(params, step_mw, t)
    k = int(np.argmin(f))
    return float(t[k]), float(f[k])
