"""A refused idToken takes the vehicle out of the offer, through the real control loop.

The real ``ControlLoop`` runs in virtual time on a simulated charger whose inverter is the
billing session's gate, and the real ``SessionDriver`` drives the session from the same
devices; only the CSMS is a stub that answers Authorize from a table. The grid sits at
59.5 Hz, so the droop asks the charger to discharge whenever it may. While a refused
idToken stops energy transfer, the offer (what the state record says this charger could
discharge) is 0 W and says why; the next vehicle, authorised, is offered again.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import trio

from hardware.connect import open_charger, open_site_meter
from hardware.simulated import VehicleConfig
from hardware.simulated.site import SimWorld
from meshagent.control.limits import Limits
from meshagent.control.loop import ControlLoop, Devices
from meshagent.control.offer import offer_from_loop
from meshagent.csms.session import SessionDriver, SessionLogic
from meshagent.csms.transactions import AuthDecision
from tests.meshagent.control.conftest import section
from tests.meshagent.control.test_loop import GUARD_S, wait_until

TOKENS = {"EVBAD": "Blocked", "EVGOOD": "Accepted"}


class TableCsms:
    """What the session driver needs of ``CsmsClient``, answering Authorize from ``TOKENS``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def set_status(self, evse_id: int, connector_id: int, status: str) -> None:
        self.events.append(("status", status))

    async def authorize(self, id_token: str, token_type: str) -> AuthDecision:
        await trio.sleep(0.2)  # a CSMS round trip: the vehicle is plugged in and not yet authorised
        status = TOKENS.get(id_token, "Unknown")
        return AuthDecision(status == "Accepted", status, "csms")

    async def start_transaction(self, **kw: Any) -> str:
        await trio.lowlevel.checkpoint()
        self.events.append(("start", str(kw.get("id_token"))))
        return f"tx{next(self._ids)}"

    async def update_transaction(self, transaction_id: str, **kw: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def end_transaction(self, transaction_id: str, **kw: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append(("end", kw["stopped_reason"]))

    def id_token_status(self, transaction_id: str) -> str | None:
        return None


async def test_a_refused_token_takes_the_vehicle_out_of_the_offer(tmp_path: Path, autojump_clock: Any) -> None:
    world = SimWorld(clock=trio.current_time)
    site = world.site("site-h")
    site.set_grid(frequency_hz=59.5)  # the droop asks for discharge whenever it may
    charger = site.chargers[0]
    charger.disconnect_vehicle()
    csms = TableCsms()
    meter = open_site_meter("sim://site-h/meter", world=world)
    ch = open_charger("sim://site-h/charger-1", world=world)
    session = SessionDriver(csms, ch, SessionLogic(sampled_interval_s=60.0), poll_s=0.1)
    loop = ControlLoop(section(cycle_budget="1s"),
                       Devices(meter, session.gate(ch.inverter), ch.vehicle, ch.thermal, ch.tamper),
                       node_id="n1", scope_id="site-h", state_dir=tmp_path,
                       offer_hold=lambda: session.logic.offer_hold)
    limits = Limits.from_section(loop.section)

    def offer() -> Any:
        return offer_from_loop(loop, limits)

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            await nursery.start(session.run)
            await trio.sleep(1.0)
            assert offer().discharge_available_w == 0.0  # no vehicle

            charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40", vehicle_id="EVBAD"))
            await wait_until(lambda: ("end", "DeAuthorized") in csms.events)
            await trio.sleep(5.0)  # loop, droop and session keep running
            held = offer()
            assert held.discharge_available_w == 0.0 and held.energy_above_min_soc_wh == 0.0
            assert "id_token_refused" in held.faults
            assert loop.last_decision.offer_available is False
            assert charger.snapshot().energy_out_wh == 0.0  # and the gate moved no energy

            charger.disconnect_vehicle()
            await trio.sleep(1.0)
            assert offer().discharge_available_w == 0.0 and "id_token_refused" not in offer().faults

            charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40", vehicle_id="EVGOOD"))
            await trio.sleep(0.15)  # plugged in, the CSMS not answered yet: not offered yet either
            assert session.logic.awaiting_authorization and offer().discharge_available_w == 0.0
            await wait_until(lambda: ("start", "EVGOOD") in csms.events)
            await trio.sleep(0.1)
            back = offer()
            assert back.discharge_available_w == 7000.0 and back.faults == ()  # the Leaf's 7 kW, offered again
            await wait_until(lambda: charger.snapshot().actual_power_w < -1000.0, within_s=30.0)
            nursery.cancel_scope.cancel()
    await meter.aclose()
    await ch.aclose()
