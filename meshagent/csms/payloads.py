"""OCPP 2.0.1 payloads built from the ``ocpp`` package's v201 call and call_result classes.

The dataclasses name every field and its type as the OCPP 2.0.1 schemas do, so a misspelt or
missing field fails here rather than at the CSMS; ``to_payload`` turns one into the JSON
object the wire carries (camelCase keys, absent optional fields left out), the way the
package's own ChargePoint does. ``protocol/ocpp.py`` still checks every outgoing payload
against the schemas before it is sent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ocpp.charge_point import remove_nones, snake_to_camel_case
from ocpp.v201 import call, call_result, datatypes

IMPORT = "Energy.Active.Import.Register"
EXPORT = "Energy.Active.Export.Register"


def to_payload(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = snake_to_camel_case(remove_nones(dataclasses.asdict(message)))
    return out


def _meter_value_type(timestamp: str, energy_import_wh: float, energy_export_wh: float,
                      context: str) -> datatypes.MeterValueType:
    def sampled(value: float, measurand: str) -> datatypes.SampledValueType:
        return datatypes.SampledValueType(value=float(value), context=context, measurand=measurand,
                                          unit_of_measure=datatypes.UnitOfMeasureType(unit="Wh"))

    return datatypes.MeterValueType(timestamp=timestamp, sampled_value=[
        sampled(energy_import_wh, IMPORT), sampled(energy_export_wh, EXPORT)])


def meter_value(timestamp: str, energy_import_wh: float, energy_export_wh: float, context: str) -> dict[str, Any]:
    """One OCPP MeterValue with the two billing registers (Wh, cumulative)."""
    return to_payload(_meter_value_type(timestamp, energy_import_wh, energy_export_wh, context))


def transaction_event(*, event_type: str, timestamp: str, trigger: str, transaction_id: str,
                      meter: tuple[float, float, str], stopped_reason: str | None = None,
                      charging_state: str | None = None, evse: tuple[int, int] | None = None,
                      id_token: tuple[str, str] | None = None) -> dict[str, Any]:
    """TransactionEvent without its ``seqNo`` (the store numbers it when it is recorded)."""
    message = call.TransactionEvent(
        event_type=event_type, timestamp=timestamp, trigger_reason=trigger, seq_no=0,
        transaction_info=datatypes.TransactionType(transaction_id=transaction_id, stopped_reason=stopped_reason,
                                                   charging_state=charging_state),
        meter_value=[_meter_value_type(timestamp, *meter)],
        evse=None if evse is None else datatypes.EVSEType(id=evse[0], connector_id=evse[1]),
        id_token=None if id_token is None else datatypes.IdTokenType(id_token=id_token[0], type=id_token[1]),
    )
    payload = to_payload(message)
    del payload["seqNo"]
    return payload


def meter_values(evse_id: int, timestamp: str, energy_import_wh: float, energy_export_wh: float) -> dict[str, Any]:
    return to_payload(call.MeterValues(evse_id=evse_id, meter_value=[
        _meter_value_type(timestamp, energy_import_wh, energy_export_wh, "Sample.Periodic")]))


def boot_notification(reason: str, model: str, vendor: str) -> dict[str, Any]:
    return to_payload(call.BootNotification(
        charging_station=datatypes.ChargingStationType(model=model, vendor_name=vendor), reason=reason))


def heartbeat() -> dict[str, Any]:
    return to_payload(call.Heartbeat())


def status_notification(timestamp: str, status: str, evse_id: int, connector_id: int) -> dict[str, Any]:
    return to_payload(call.StatusNotification(timestamp=timestamp, connector_status=status,
                                              evse_id=evse_id, connector_id=connector_id))


def authorize(id_token: str, token_type: str) -> dict[str, Any]:
    return to_payload(call.Authorize(id_token=datatypes.IdTokenType(id_token=id_token, type=token_type)))


def send_local_list_result(status: str) -> dict[str, Any]:
    return to_payload(call_result.SendLocalList(status=status))


def get_local_list_version_result(version: int) -> dict[str, Any]:
    return to_payload(call_result.GetLocalListVersion(version_number=version))


def set_variables_result(results: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """(attributeStatus, component, variable) per item; component and variable as received."""
    out = to_payload(call_result.SetVariables(set_variable_result=[
        datatypes.SetVariableResultType(attribute_status=status, component=None, variable=None)
        for status, _, _ in results]))
    for item, (_, component, variable) in zip(out["setVariableResult"], results, strict=True):
        item["component"], item["variable"] = component, variable  # echoed as the CSMS wrote them
    return out


def reset_result(status: str) -> dict[str, Any]:
    return to_payload(call_result.Reset(status=status))
