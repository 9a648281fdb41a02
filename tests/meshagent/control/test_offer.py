"""The offer a node publishes: every clamp limit, nothing while faulted."""

from __future__ import annotations

import types

import attrs

from meshagent.control.limits import DeviceState, Limits
from meshagent.control.offer import NOTHING, Offer, offer_from_loop


def fake_loop(state, *, offer_available=True, safe_mode=False, faults=(), energy_wh=15_600.0):
    decision = types.SimpleNamespace(offer_available=offer_available, safe_mode=safe_mode, faults=faults,
                                     offer_hold="")
    vehicle = types.SimpleNamespace(parameters=types.SimpleNamespace(energy_above_minimum_wh=energy_wh))
    return types.SimpleNamespace(last_device_state=state, last_decision=decision, last_vehicle=vehicle)


STATE = DeviceState(
    inverter_max_charge_w=11_000, inverter_max_discharge_w=11_000, ev_max_charge_w=46_000,
    ev_max_discharge_w=7_000, soc_pct=60.0, min_soc_pct=20.0, contactor_closed=False,
)


def test_offer_is_the_tightest_limit_even_with_idle_contactors():
    offer = offer_from_loop(fake_loop(STATE), Limits())
    assert offer == Offer(7_000.0, 15_600.0, 0.6, 0.0, ())


def test_thermal_derating_and_minimum_soc():
    hot = offer_from_loop(fake_loop(attrs.evolve(STATE, temperature_max_c=45.0, ev_max_discharge_w=20_000)), Limits())
    assert hot.discharge_available_w == 5_500.0 and hot.thermal_derating == 0.5
    empty = offer_from_loop(fake_loop(attrs.evolve(STATE, soc_pct=20.0), energy_wh=0.0), Limits())
    assert empty.discharge_available_w == 0.0


def test_nothing_while_faulted_or_unreadable():
    faulted = offer_from_loop(fake_loop(STATE, offer_available=False, faults=("ERR_TAMPER",)), Limits())
    assert faulted.discharge_available_w == 0 and faulted.faults == ("ERR_TAMPER",)
    welded = offer_from_loop(fake_loop(attrs.evolve(STATE, contactor_welded=True)), Limits())
    assert welded.discharge_available_w == 0
    unreadable = offer_from_loop(fake_loop(None), Limits())
    assert unreadable == attrs.evolve(NOTHING, faults=("device_unreadable",))


def test_only_real_changes_are_published():
    a = Offer(7_000.0, 15_600.0, 0.6, 0.0, ())
    assert not a.differs(attrs.evolve(a, discharge_available_w=7_050.0))
    assert a.differs(attrs.evolve(a, discharge_available_w=6_000.0))
    assert a.differs(attrs.evolve(a, faults=("ERR_THERMAL",)))
    assert a.differs(None)
