"""This charger's offer to the mesh, from what the control loop last saw.

The state record a node publishes says how much it could discharge *now*: every limit the
clamp applies (inverter, vehicle, thermal derating, the owner's minimum SoC, the BMS) via
``limits.clamp_setpoint``, so the mesh never counts power the loop would refuse to give;
and nothing at all while a fault is active or the vehicle has left the offer (at its minimum
SoC, or while the billing session holds energy transfer off after a refused idToken: then
the hold's reason, ``id_token_refused``, rides in ``faults``, the record's reason field).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from meshagent.control.limits import Limits, clamp_setpoint, thermal_factor


@attrs.frozen
class Offer:
    discharge_available_w: float
    energy_above_min_soc_wh: float
    soc: float  # 0..1
    thermal_derating: float  # 0: none, 1: stopped
    faults: tuple[str, ...]

    def differs(self, other: Offer | None, *, power_w: float = 100.0, fraction: float = 0.02) -> bool:
        """A change worth publishing (records are gossip: do not spend them on noise)."""
        if other is None or self.faults != other.faults:
            return True
        for a, b in ((self.discharge_available_w, other.discharge_available_w),
                     (self.energy_above_min_soc_wh, other.energy_above_min_soc_wh)):
            if abs(a - b) > max(power_w, fraction * max(abs(a), abs(b))):
                return True
        return abs(self.soc - other.soc) >= 0.01 or abs(self.thermal_derating - other.thermal_derating) >= 0.05


NOTHING = Offer(0.0, 0.0, 0.0, 0.0, ())


def offer_from_loop(loop: Any, limits: Limits) -> Offer:
    """The offer as of the loop's last cycle (``ControlLoop``)."""
    state = loop.last_device_state
    decision = loop.last_decision
    vehicle = loop.last_vehicle
    faults = tuple(decision.faults) if decision is not None else ()
    if state is None or decision is None:
        return attrs.evolve(NOTHING, faults=faults or ("device_unreadable",))
    derating = 1.0 - thermal_factor(state.temperature_max_c, state.temperature_min_c, limits)
    soc = state.soc_pct / 100.0 if math.isfinite(state.soc_pct) else 0.0
    params = vehicle.parameters if vehicle is not None else None
    energy = params.energy_above_minimum_wh if params is not None else 0.0
    if not decision.offer_available or decision.safe_mode:
        why = (decision.offer_hold,) if decision.offer_hold else ()  # the record's reason, with the faults
        return Offer(0.0, 0.0, min(max(soc, 0.0), 1.0), derating, faults + why)
    # An idle charger's contactors are open and close when power is asked for: that is no
    # reason to withhold the offer (welded ones are, and the clamp still sees those).
    ready = attrs.evolve(state, contactor_closed=True)
    cap = clamp_setpoint(-1e12, ready, limits).discharge_cap_w  # ask for everything: the caps answer
    return Offer(max(0.0, round(cap, 1)), round(energy, 1), min(max(soc, 0.0), 1.0), min(max(derating, 0.0), 1.0), faults)
