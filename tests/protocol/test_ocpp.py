"""OCPP-J framing and the sans-IO endpoint: two endpoints wired together, no sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ocpp
from protocol.errors import LocalProtocolError

BOOT = {"chargingStation": {"model": "m", "vendorName": "v"}, "reason": "PowerUp"}
BOOT_ANSWER = {"currentTime": "2025-11-26T00:00:00.000Z", "interval": 300, "status": "Accepted"}


def test_call_and_answer_between_two_endpoints() -> None:
    station, csms = ocpp.OcppEndpoint("st"), ocpp.OcppEndpoint("cs")
    uid, text = station.call("BootNotification", BOOT)
    assert json.loads(text) == [2, uid, "BootNotification", BOOT]
    request = csms.receive_untrusted(text)
    assert request == ocpp.Requested(uid, "BootNotification", BOOT)
    event = station.receive_untrusted(csms.answer(request, BOOT_ANSWER))
    assert event == ocpp.Answered("BootNotification", uid, BOOT_ANSWER)
    assert station.outstanding is None
    assert station.statistics().answered == 1 and csms.statistics().requests_received == 1


def test_one_outstanding_call_and_unique_ids() -> None:
    station = ocpp.OcppEndpoint("st")
    uid1, _ = station.call("Heartbeat", {})
    with pytest.raises(LocalProtocolError, match="outstanding"):
        station.call("Heartbeat", {})
    station.abandon()
    uid2, _ = station.call("Heartbeat", {})
    assert uid1 != uid2


def test_late_answer_after_abandon_is_ignored_not_matched() -> None:
    station = ocpp.OcppEndpoint("st")
    uid1, _ = station.call("Heartbeat", {})
    station.abandon()
    uid2, _ = station.call("Heartbeat", {})
    late = ocpp.encode(ocpp.CallResult(uid1, {"currentTime": "2025-11-26T00:00:00Z"}))
    assert station.receive_untrusted(late) == ocpp.Ignored(uid1, "late answer to an abandoned call")
    assert station.outstanding is not None and station.outstanding.unique_id == uid2


def test_callerror_ends_the_call() -> None:
    station = ocpp.OcppEndpoint("st")
    uid, _ = station.call("Heartbeat", {})
    event = station.receive_untrusted(f'[4,"{uid}","InternalError","boom",{{}}]')
    assert event == ocpp.Failed("Heartbeat", uid, "InternalError", "boom")
    assert station.outstanding is None


def test_invalid_outgoing_payload_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match="BootNotification"):
        ocpp.OcppEndpoint("st").call("BootNotification", {"reason": "PowerUp"})
    with pytest.raises(LocalProtocolError, match="not an OCPP"):
        ocpp.OcppEndpoint("st").call("Teleport", {})


@pytest.mark.parametrize(
    ("text", "code", "answered"),
    [
        ('[2,"a1","Reset",{"type":"Sometime"}]', ocpp.PROPERTY_CONSTRAINT_VIOLATION, True),
        ('[2,"a1","Reset",{}]', ocpp.OCCURRENCE_CONSTRAINT_VIOLATION, True),
        ('[2,"a1","Reset",{"type":7}]', ocpp.TYPE_CONSTRAINT_VIOLATION, True),
        ('[2,"a1","Teleport",{}]', ocpp.NOT_SUPPORTED, True),
        ('[2,"a1","Reset"]', ocpp.RPC_FRAMEWORK_ERROR, True),
        ('[9,"a1"]', ocpp.MESSAGE_TYPE_NOT_SUPPORTED, True),
        ('{"not":"array"}', ocpp.RPC_FRAMEWORK_ERROR, False),
        ("[2, 1, \"Reset\", {}]", ocpp.RPC_FRAMEWORK_ERROR, False),
        ('[2,"' + "x" * 37 + '","Reset",{}]', ocpp.RPC_FRAMEWORK_ERROR, False),
        ("[3,\"a1\",{\"x\":NaN}]", ocpp.FORMAT_VIOLATION, False),
        ("not json", ocpp.FORMAT_VIOLATION, False),
    ],
)
def test_bad_frames_raise_one_error_type(text: str, code: str, answered: bool) -> None:
    with pytest.raises(ocpp.BadFrame) as info:
        ocpp.OcppEndpoint("cs").receive_untrusted(text)
    assert info.value.error_code == code
    if answered:
        reply = json.loads(info.value.reply or "null")
        assert reply[:3] == [4, "a1", code]
    else:
        assert info.value.reply is None


def test_answer_breaking_its_schema_is_refused_and_ends_the_call() -> None:
    station = ocpp.OcppEndpoint("st")
    uid, _ = station.call("Heartbeat", {})
    with pytest.raises(ocpp.BadFrame):
        station.receive_untrusted(f'[3,"{uid}",{{"currentTime":5}}]')
    assert station.outstanding is None


def test_oversized_message_refused() -> None:
    endpoint = ocpp.OcppEndpoint("cs", max_message_bytes=100)
    with pytest.raises(ocpp.BadFrame, match="too_large"):
        endpoint.receive_untrusted('[2,"a","Heartbeat",{"x":"' + "y" * 200 + '"}]')


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_badframe(data: bytes) -> None:
    endpoint = ocpp.OcppEndpoint("cs")
    try:
        endpoint.receive_untrusted(data)
    except ocpp.BadFrame:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=20))
def test_random_json_only_raises_badframe(value: object) -> None:
    endpoint = ocpp.OcppEndpoint("cs")
    endpoint.call("Heartbeat", {})
    for text in (json.dumps(value), json.dumps([2, "id", "Reset", value]), json.dumps([3, "cs-1", value])):
        try:
            endpoint.receive_untrusted(text)
        except ocpp.BadFrame:
            pass


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "1970-01-01T00:00:00.000Z"), (1_764_115_200_123, "2025-11-26T00:00:00.123Z"),
     (951_782_400_000, "2000-02-29T00:00:00.000Z"), (4_102_444_799_999, "2099-12-31T23:59:59.999Z")],
)
def test_format_timestamp(ms: int, text: str) -> None:
    assert ocpp.format_timestamp(ms) == text


def test_known_actions_come_from_the_ocpp_package() -> None:
    actions = ocpp.known_actions()
    assert {"TransactionEvent", "SendLocalList", "BootNotification", "Reset"} <= actions
    assert len(actions) == 64
