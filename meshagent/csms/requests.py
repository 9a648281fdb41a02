"""Requests from the CSMS: SendLocalList, GetLocalListVersion, SetVariables (OCPPCommCtrlr),
Reset; anything else is answered NotImplemented and logged. Answers are built from the
``ocpp`` package's v201 call_result classes (``payloads``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshagent.csms import payloads
from meshagent.csms.core import COMM_CTRLR, ClientCore, log
from meshagent.csms.store import StorageError
from protocol import ocpp
from protocol.authlist import UpdateStatus, apply_send_local_list_untrusted
from protocol.errors import BadPacket


class CsmsRequestsMixin(ClientCore):
    async def _handle_request(self, session: Any, request: ocpp.Requested) -> str:
        endpoint = session.endpoint
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = {
            "SendLocalList": self._on_send_local_list,
            "GetLocalListVersion": self._on_get_local_list_version,
            "SetVariables": self._on_set_variables,
            "Reset": self._on_reset_request,
        }.get(request.action)
        if handler is None:
            self._bump("not_implemented")
            log.warning("csms %s: %s from the CSMS is not implemented; answered NotImplemented",
                        self.settings.station_id, request.action)
            return str(endpoint.answer_error(request, ocpp.NOT_IMPLEMENTED, f"{request.action} is not implemented"))
        return str(endpoint.answer(request, await handler(dict(request.payload))))

    async def _on_send_local_list(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            new, status = apply_send_local_list_untrusted(self._auth_list, payload)
        except BadPacket as exc:
            log.warning("csms %s: SendLocalList refused: %s", self.settings.station_id, exc)
            return payloads.send_local_list_result(UpdateStatus.FAILED.value)
        if status is UpdateStatus.ACCEPTED:
            try:
                await self._db(self.store.save_auth_list, new)
            except StorageError as exc:
                log.error("%s", exc)
                return payloads.send_local_list_result(UpdateStatus.FAILED.value)
            self._auth_list = new
            self._poke("_stats_changed")
            log.info("csms %s: local auth list now version %d (%d entries)", self.settings.station_id,
                     new.version, len(new.entries))
        return payloads.send_local_list_result(status.value)

    async def _on_get_local_list_version(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payloads.get_local_list_version_result(self._auth_list.version)

    async def _on_set_variables(self, payload: dict[str, Any]) -> dict[str, Any]:
        results: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for item in payload["setVariableData"]:
            component, variable = item["component"], item["variable"]
            name, instance = variable["name"], variable.get("instance")
            status = "Accepted"
            try:
                value = float(item["attributeValue"])
            except ValueError:
                value = float("nan")
            if component["name"] != COMM_CTRLR:
                status = "UnknownComponent"
            elif item.get("attributeType", "Actual") != "Actual":
                status = "NotSupportedAttributeType"
            elif not value > 0 or value != value:
                status = "Rejected"
            elif name == "HeartbeatInterval":
                self._heartbeat_interval_s = value
                self._poke("_stats_changed")
            elif name == "MessageAttempts" and instance == "TransactionEvent":
                self._message_attempts = int(value)
            elif name == "MessageAttemptInterval" and instance == "TransactionEvent":
                self._attempt_interval_s = value
            else:
                status = "UnknownVariable"
            results.append((status, component, variable))
        return payloads.set_variables_result(results)

    async def _on_reset_request(self, payload: dict[str, Any]) -> dict[str, Any]:
        kind = str(payload["type"])
        log.warning("csms %s: Reset (%s) requested by the CSMS", self.settings.station_id, kind)
        self._boot_reason = "RemoteReset"
        if self._on_reset is not None:
            self._on_reset(kind)
        # The CSMS session restarts (the receiver drops the connection once this answer is
        # sent) and the next BootNotification says RemoteReset.
        self._reset_pending = True
        return payloads.reset_result("Accepted")
