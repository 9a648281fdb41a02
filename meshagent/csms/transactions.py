"""The station API: transactions recorded durably (returned once committed; sent by the
outbox), meter values, connector statuses, and authorization (local list first, then the
CSMS). Payloads are built from the ``ocpp`` package's v201 call classes (``payloads``)."""

from __future__ import annotations

from typing import Any

import attrs

from meshagent.csms import payloads
from meshagent.csms.calls import CallMixin, _Reconnect
from meshagent.csms.core import log
from meshagent.csms.store import TransactionStart
from protocol import ocpp
from protocol.authlist import AuthStatus


@attrs.frozen
class AuthDecision:
    accepted: bool
    status: str  # an OCPP AuthorizationStatusEnumType value
    source: str  # "local_list", "csms" or "unavailable"


class TransactionApi(CallMixin):
    def _new_transaction_id(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    async def _record(self, transaction_id: str, payload: dict[str, Any], **kw: Any) -> int:
        if not self._online:
            payload["offline"] = True
        seq_no = await self._db(lambda: self.store.record_transaction_event(
            transaction_id, payload, self._wall_clock_ms(), **kw))
        self._poke("_queue_changed")
        return seq_no

    async def start_transaction(
        self, *, evse_id: int, connector_id: int, energy_import_wh: float, energy_export_wh: float,
        id_token: str | None = None, token_type: str = "ISO14443", trigger: str = "Authorized",
        transaction_id: str | None = None,
    ) -> str:
        """Record TransactionEvent Started; returns the transaction id.

        Raises ``StorageError`` (a clear one-line reason) if the queue cannot take a new
        transaction: the charger must not start one it could not bill.
        """
        transaction_id = transaction_id or self._new_transaction_id()
        payload = payloads.transaction_event(
            event_type="Started", timestamp=self._now_text(), trigger=trigger, transaction_id=transaction_id,
            meter=(energy_import_wh, energy_export_wh, "Transaction.Begin"), evse=(evse_id, connector_id),
            id_token=None if id_token is None else (id_token, token_type))
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        start = TransactionStart(transaction_id, evse_id, connector_id, id_token,
                                 token_type if id_token is not None else None)
        await self._record(transaction_id, payload, start=start, energy_import_wh=energy_import_wh,
                           energy_export_wh=energy_export_wh)
        return transaction_id

    async def update_transaction(
        self, transaction_id: str, *, energy_import_wh: float, energy_export_wh: float,
        trigger: str = "MeterValuePeriodic", charging_state: str | None = None,
    ) -> int:
        """Record TransactionEvent Updated with both registers; returns its seqNo."""
        payload = payloads.transaction_event(
            event_type="Updated", timestamp=self._now_text(), trigger=trigger, transaction_id=transaction_id,
            meter=(energy_import_wh, energy_export_wh, "Sample.Periodic"), charging_state=charging_state)
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        return await self._record(transaction_id, payload, energy_import_wh=energy_import_wh,
                                  energy_export_wh=energy_export_wh)

    async def end_transaction(
        self, transaction_id: str, *, energy_import_wh: float, energy_export_wh: float,
        stopped_reason: str = "Local", trigger: str = "StopAuthorized",
    ) -> int:
        """Record TransactionEvent Ended with the final registers; returns its seqNo."""
        payload = payloads.transaction_event(
            event_type="Ended", timestamp=self._now_text(), trigger=trigger, transaction_id=transaction_id,
            meter=(energy_import_wh, energy_export_wh, "Transaction.End"), stopped_reason=stopped_reason)
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        return await self._record(transaction_id, payload, ends=True, energy_import_wh=energy_import_wh,
                                  energy_export_wh=energy_export_wh)

    async def end_interrupted_transactions(self) -> list[str]:
        """At start: end every transaction a previous life left open; returns their ids.

        A transaction still open in the store when the agent starts was interrupted by a crash
        or a power loss (nothing in this process started it). OCPP 2.0.1 ends it with
        ``stoppedReason`` PowerLoss; ``PowerLoss`` is not a TriggerReasonEnumType value, so the
        trigger is ``AbnormalCondition``. The registers are the last ones recorded.
        """
        ended = []
        for tx in await self._db(self.store.open_transactions):
            await self.end_transaction(tx.transaction_id, energy_import_wh=tx.energy_import_wh,
                                       energy_export_wh=tx.energy_export_wh, stopped_reason="PowerLoss",
                                       trigger="AbnormalCondition")
            ended.append(tx.transaction_id)
            log.warning("csms %s: transaction %s left open by a previous run ended (PowerLoss)",
                        self.settings.station_id, tx.transaction_id)
        return ended

    async def meter_values(self, evse_id: int, *, energy_import_wh: float, energy_export_wh: float) -> None:
        """Record a MeterValues message (billing registers outside a transaction)."""
        payload = payloads.meter_values(evse_id, self._now_text(), energy_import_wh, energy_export_wh)
        ocpp.check_outgoing("MeterValues", payload, is_request=True)
        await self._db(self.store.record_message, "MeterValues", payload, self._wall_clock_ms())
        self._poke("_queue_changed")

    def set_status(self, evse_id: int, connector_id: int, status: str) -> None:
        """Report a connector's status (Available, Occupied, ...); sent now or after the next boot.

        Statuses are current state, not billing: only the latest per connector is kept.
        """
        self._statuses[(evse_id, connector_id)] = (status, self._now_text())
        self._status_dirty.add((evse_id, connector_id))
        self._poke("_status_changed")

    async def authorize(self, id_token: str, token_type: str = "ISO14443") -> AuthDecision:
        local = self._auth_list.authorize(id_token, token_type, self._wall_clock_ms())
        if local is not None:
            return AuthDecision(local is AuthStatus.ACCEPTED, local.value, "local_list")
        session = self._session
        if session is not None and self._online:
            try:
                result = await self._call(session, "Authorize", payloads.authorize(id_token, token_type))
            except _Reconnect:
                result = None
            if isinstance(result, ocpp.Answered):
                status = str(result.payload["idTokenInfo"]["status"])
                return AuthDecision(status == "Accepted", status, "csms")
        return AuthDecision(False, AuthStatus.UNKNOWN.value, "unavailable")
