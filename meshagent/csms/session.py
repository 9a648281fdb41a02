"""The OCPP life of this charger's connector, driven by what its devices say.

Theory of operation
-------------------
``SessionLogic`` is sans-IO: it takes one ``Observation`` at a time (vehicle plugged or not,
its id, the inverter faulted or unreadable, the inverter's two energy registers, the time)
and returns the ``Action``s OCPP 2.0.1 asks for:

* a StatusNotification whenever the connector's status changes: ``Unavailable`` while the
  devices cannot be read, ``Faulted`` while the inverter is faulted, ``Occupied`` while a
  vehicle is plugged in, else ``Available``;
* a vehicle plugging in (or already plugged in at the first observation) starts a
  transaction (TransactionEvent Started). With a vehicle id (the EVCCID the vehicle link
  reports, idToken type ``MacAddress``) it is authorised first, local list then CSMS
  (``CsmsClient.authorize``); Accepted starts with that idToken (trigger ``Authorized``);
  Invalid, Blocked or Expired starts and ends at once with ``DeAuthorized``
  (StopTxOnInvalidId) and holds energy transfer off until the vehicle leaves; with no
  id, or no answer, the transaction starts on the cable (``CablePluggedIn``);
* every ``sampled_data_interval`` an Updated with both registers (``MeterValuePeriodic``),
  so a discharge share applied during a spike shows as the export register rising;
* unplugging ends it (``EVDisconnected`` / ``EVDeparted``), a fault ends it
  (``Other`` / ``AbnormalCondition``), devices unreadable for ``lost_after`` end it
  (``Other`` / ``EVCommunicationLost``).

``SessionDriver`` is the trio shell: it reads the devices every ``poll`` (the vehicle
link, the inverter's status and its energy registers), feeds the logic and carries the
actions out through ``CsmsClient`` (which queues them durably; nothing here waits for the
CSMS). ``gate(inverter)`` is what the control loop commands: 0 W outside a transaction
and while a refused idToken holds energy transfer off. ``SessionLogic.offer_hold`` is
what the control loop reads (never the other way round) to keep such a vehicle out of its
offer to the mesh: a vehicle that may not discharge is no capacity for the others.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio

from hardware.interfaces import DeviceFault, InverterState

log = logging.getLogger("meshagent.csms.session")

REFUSED = ("Invalid", "Blocked", "Expired")
TOKEN_TYPE = "MacAddress"  # the EVCCID an ISO 15118 vehicle gives


class Kind(enum.Enum):
    STATUS = "status"
    AUTHORIZE = "authorize"
    START = "start"
    UPDATE = "update"
    END = "end"


@attrs.frozen
class Observation:
    at_s: float
    readable: bool  # the devices answered
    connected: bool = False
    vehicle_id: str = ""
    faulted: bool = False
    energy_import_wh: float = 0.0  # absorbed by the charger (vehicle charging)
    energy_export_wh: float = 0.0  # injected by the charger (vehicle discharging)


@attrs.frozen
class Action:
    kind: Kind
    status: str = ""
    id_token: str | None = None
    trigger: str = ""
    stopped_reason: str = ""
    energy_import_wh: float = 0.0
    energy_export_wh: float = 0.0


@attrs.define
class SessionLogic:
    sampled_interval_s: float = 60.0
    lost_after_s: float = 10.0
    status: str | None = attrs.field(init=False, default=None)
    in_transaction: bool = attrs.field(init=False, default=False)
    awaiting_authorization: bool = attrs.field(init=False, default=False)
    energy_allowed: bool = attrs.field(init=False, default=True)
    _was_connected: bool = attrs.field(init=False, default=False)
    _last_update_s: float = attrs.field(init=False, default=0.0)
    _last_readable_s: float | None = attrs.field(init=False, default=None)
    _energy: tuple[float, float] = attrs.field(init=False, default=(0.0, 0.0))

    @property
    def offer_hold(self) -> str:
        """Why a plugged-in vehicle must stay out of the mesh's offer ("" when it need not):
        a refused idToken stops energy transfer until the vehicle leaves, and the next
        vehicle is offered only once its session starts (authorised, or on the cable)."""
        if not self.energy_allowed:
            return "id_token_refused"
        if self.awaiting_authorization:
            return "id_token_authorizing"
        return ""

    @property
    def transfer_allowed(self) -> bool:
        """Energy moves only inside a transaction, and never after a refused idToken."""
        return self.in_transaction and self.energy_allowed

    def observe(self, o: Observation) -> list[Action]:
        out: list[Action] = []
        if o.readable:
            self._last_readable_s = o.at_s
            self._energy = (o.energy_import_wh, o.energy_export_wh)
            status = "Faulted" if o.faulted else "Occupied" if o.connected else "Available"
        else:
            lost = self._last_readable_s is None or o.at_s - self._last_readable_s >= self.lost_after_s
            status = "Unavailable" if lost else (self.status or "Unavailable")
            if lost and self.in_transaction:
                out.append(self._end("Other", "EVCommunicationLost"))
        if status != self.status:
            self.status = status
            out.append(Action(Kind.STATUS, status=status))
        if not o.readable:
            return out
        if o.connected and not self._was_connected and not o.faulted:
            self.energy_allowed = True
            if o.vehicle_id:
                self.awaiting_authorization = True
                out.append(Action(Kind.AUTHORIZE, id_token=o.vehicle_id))
            else:
                out.append(self._start(None, "CablePluggedIn", o.at_s))
        elif self.in_transaction and o.faulted:
            out.append(self._end("Other", "AbnormalCondition"))
        elif self.in_transaction and not o.connected:
            out.append(self._end("EVDisconnected", "EVDeparted"))
        elif self.in_transaction and o.at_s - self._last_update_s >= self.sampled_interval_s:
            self._last_update_s = o.at_s
            out.append(Action(Kind.UPDATE, trigger="MeterValuePeriodic", energy_import_wh=self._energy[0],
                              energy_export_wh=self._energy[1]))
        if not o.connected:
            self.energy_allowed, self.awaiting_authorization = True, False
        self._was_connected = o.connected and not o.faulted
        return out

    def authorized(self, id_token: str, status: str, at_s: float) -> list[Action]:
        """The answer to an AUTHORIZE action (local list or CSMS); "" when there was none."""
        if not self.awaiting_authorization:
            return []
        self.awaiting_authorization = False
        if status == "Accepted":
            return [self._start(id_token, "Authorized", at_s)]
        if status in REFUSED:
            return self.deauthorize(id_token, at_s)
        return [self._start(None, "CablePluggedIn", at_s)]  # unknown or unanswered: bill the cable

    def deauthorize(self, id_token: str | None, at_s: float) -> list[Action]:
        """StopTxOnInvalidId: no energy transfer, and the transaction ends (started if need be)."""
        out = [] if self.in_transaction else [self._start(id_token, "Authorized", at_s)]
        self.energy_allowed = False
        return [*out, self._end("DeAuthorized", "Deauthorized")]

    def _start(self, id_token: str | None, trigger: str, at_s: float) -> Action:
        self.in_transaction, self._last_update_s = True, at_s
        return Action(Kind.START, id_token=id_token, trigger=trigger, energy_import_wh=self._energy[0],
                      energy_export_wh=self._energy[1])

    def _end(self, reason: str, trigger: str) -> Action:
        self.in_transaction = False
        return Action(Kind.END, stopped_reason=reason, trigger=trigger, energy_import_wh=self._energy[0],
                      energy_export_wh=self._energy[1])


@attrs.define(eq=False)
class SessionDriver:
    client: Any  # CsmsClient
    charger: Any  # hardware.connect.Charger
    logic: SessionLogic
    evse_id: int = 1
    connector_id: int = 1
    poll_s: float = 1.0
    clock: Callable[[], float] = trio.current_time
    transaction_id: str | None = attrs.field(init=False, default=None)
    last_authorization: Any = attrs.field(init=False, default=None)  # the AuthDecision of the last plug-in

    @property
    def energy_allowed(self) -> bool:
        return self.logic.energy_allowed

    async def observe(self) -> Observation:
        now = self.clock()
        try:
            vehicle = await self.charger.vehicle.read()
            status = await self.charger.inverter.status()
            imported, exported = await self.charger.inverter.energy_registers()
        except DeviceFault as fault:
            log.debug("session: devices unreadable: %s", fault)
            return Observation(now, readable=False)
        return Observation(now, True, vehicle.connected, vehicle.vehicle_id, status.state is InverterState.FAULT,
                           imported, exported)

    async def step(self) -> None:
        observation = await self.observe()
        await self._carry_out(self.logic.observe(observation))
        if self.transaction_id is not None:  # the CSMS may refuse the idToken in a TransactionEvent answer
            status = self.client.id_token_status(self.transaction_id)
            if status in REFUSED:
                await self.id_token_refused(self.transaction_id, status)

    async def _carry_out(self, actions: list[Action]) -> None:
        for a in actions:
            if a.kind is Kind.STATUS:
                self.client.set_status(self.evse_id, self.connector_id, a.status)
            elif a.kind is Kind.AUTHORIZE:
                assert a.id_token is not None
                decision = await self.client.authorize(a.id_token, TOKEN_TYPE)
                self.last_authorization = decision
                await self._carry_out(self.logic.authorized(a.id_token, decision.status, self.clock()))
            elif a.kind is Kind.START:
                self.transaction_id = await self.client.start_transaction(
                    evse_id=self.evse_id, connector_id=self.connector_id, energy_import_wh=a.energy_import_wh,
                    energy_export_wh=a.energy_export_wh, id_token=a.id_token, token_type=TOKEN_TYPE, trigger=a.trigger)
            elif a.kind is Kind.UPDATE and self.transaction_id is not None:
                await self.client.update_transaction(self.transaction_id, energy_import_wh=a.energy_import_wh,
                                                     energy_export_wh=a.energy_export_wh, trigger=a.trigger)
            elif a.kind is Kind.END and self.transaction_id is not None:
                await self.client.end_transaction(self.transaction_id, energy_import_wh=a.energy_import_wh,
                                                  energy_export_wh=a.energy_export_wh,
                                                  stopped_reason=a.stopped_reason, trigger=a.trigger)
                self.transaction_id = None

    async def id_token_refused(self, transaction_id: str, status: str) -> None:
        """The CSMS answered a TransactionEvent with idTokenInfo Invalid/Blocked/Expired."""
        if transaction_id == self.transaction_id and status in REFUSED:
            await self._carry_out(self.logic.deauthorize(None, self.clock()))

    def gate(self, inverter: Any) -> EnergyGate:
        """``inverter`` for the control loop, with energy transfer held off while refused."""
        return EnergyGate(inverter, self.logic)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.step()
            await trio.sleep(self.poll_s)


class EnergyGate:
    """An inverter whose setpoints become 0 W outside a transaction (before the vehicle is
    authorised) and after a refused idToken (OCPP 2.0.1 StopTxOnInvalidId stops energy
    transfer). Everything else
    passes through."""

    def __init__(self, inverter: Any, logic: SessionLogic) -> None:
        self._inverter = inverter
        self._logic = logic

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inverter, name)

    async def set_power(self, setpoint_w: float) -> float:
        result: float = await self._inverter.set_power(setpoint_w if self._logic.transfer_allowed else 0.0)
        return result
