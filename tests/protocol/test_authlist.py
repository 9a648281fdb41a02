"""The local authorization list: OCPP updates, authorization, and core-to-core transfer."""

from __future__ import annotations

import random

import attrs
import pytest

from protocol import codec
from protocol.authlist import (
    AuthEntry,
    AuthListAssembler,
    AuthListChunk,
    AuthListRequest,
    AuthStatus,
    LocalAuthList,
    UpdateStatus,
    apply_send_local_list_untrusted,
    chunks_for,
    wants_list,
)
from protocol.errors import BadPacket
from protocol.messages import MESSAGE_TYPES
from tests.conftest import NOW_MS


def _entry(token: str, status: AuthStatus = AuthStatus.ACCEPTED, expiry_ms: int | None = None) -> AuthEntry:
    return AuthEntry(token, "ISO14443", status, expiry_ms)


def _list(n: int, version: int = 3) -> LocalAuthList:
    return LocalAuthList.build(version, [_entry(f"TOKEN{i:05d}") for i in range(n)])


def test_messages_are_registered_in_the_authlist_block() -> None:
    assert MESSAGE_TYPES[0x50] is AuthListRequest and MESSAGE_TYPES[0x51] is AuthListChunk


def test_authorize_accepted_blocked_expired_unknown() -> None:
    lst = LocalAuthList.build(1, [
        _entry("GOOD"), _entry("BLOCKED", AuthStatus.BLOCKED),
        _entry("OLD", expiry_ms=NOW_MS - 1), _entry("LATER", expiry_ms=NOW_MS + 1),
    ])
    assert lst.authorize("GOOD", "ISO14443", NOW_MS) is AuthStatus.ACCEPTED
    assert lst.authorize("LATER", "ISO14443", NOW_MS) is AuthStatus.ACCEPTED
    assert lst.authorize("BLOCKED", "ISO14443", NOW_MS) is AuthStatus.BLOCKED
    assert lst.authorize("OLD", "ISO14443", NOW_MS) is AuthStatus.EXPIRED
    assert lst.authorize("NOBODY", "ISO14443", NOW_MS) is None
    assert lst.authorize("GOOD", "KeyCode", NOW_MS) is None


def test_hash_depends_on_content_and_version_only() -> None:
    a = LocalAuthList.build(2, [_entry("B"), _entry("A")])
    b = LocalAuthList.build(2, [_entry("A"), _entry("B")])
    assert a == b and a.list_hash == b.list_hash
    assert LocalAuthList.build(3, [_entry("A"), _entry("B")]).list_hash != a.list_hash
    assert LocalAuthList.build(2, [_entry("A")]).list_hash != a.list_hash


def _send_local_list(version: int, update: str, items: list[dict]) -> dict:
    return {"versionNumber": version, "updateType": update, "localAuthorizationList": items}


def test_send_local_list_full_then_differential() -> None:
    full = _send_local_list(5, "Full", [
        {"idToken": {"idToken": "A", "type": "ISO14443"}, "idTokenInfo": {"status": "Accepted"}},
        {"idToken": {"idToken": "B", "type": "ISO14443"},
         "idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "2025-11-26T00:00:00Z"}},
    ])
    lst, status = apply_send_local_list_untrusted(LocalAuthList(), full)
    assert status is UpdateStatus.ACCEPTED and lst.version == 5
    assert lst.lookup("B", "ISO14443") == _entry("B", expiry_ms=NOW_MS)
    diff = _send_local_list(6, "Differential", [
        {"idToken": {"idToken": "A", "type": "ISO14443"}},  # no idTokenInfo: remove
        {"idToken": {"idToken": "C", "type": "ISO14443"}, "idTokenInfo": {"status": "Blocked"}},
    ])
    lst2, status = apply_send_local_list_untrusted(lst, diff)
    assert status is UpdateStatus.ACCEPTED
    assert [e.id_token for e in lst2.entries] == ["B", "C"] and lst2.version == 6
    # A differential that is not newer is refused and changes nothing.
    same, status = apply_send_local_list_untrusted(lst2, {**diff, "versionNumber": 6})
    assert status is UpdateStatus.VERSION_MISMATCH and same is lst2


def test_send_local_list_over_capacity_fails_without_change() -> None:
    lst = _list(3)
    items = [{"idToken": {"idToken": f"X{i}", "type": "Local"}, "idTokenInfo": {"status": "Accepted"}}
             for i in range(5)]
    same, status = apply_send_local_list_untrusted(lst, _send_local_list(9, "Full", items), max_entries=4)
    assert status is UpdateStatus.FAILED and same is lst


@pytest.mark.parametrize("bad", [
    {"versionNumber": 1, "updateType": "Full", "localAuthorizationList": [{"idToken": {"idToken": "A"}}]},
    {"versionNumber": 1, "updateType": "Full", "localAuthorizationList": [
        {"idToken": {"idToken": "A", "type": "x"}, "idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": "soon"}}]},
    {"versionNumber": 1, "updateType": "Partial"},
    {"versionNumber": "1", "updateType": "Full"},
])
def test_send_local_list_bad_payloads_raise_badpacket(bad: dict) -> None:
    with pytest.raises(BadPacket):
        apply_send_local_list_untrusted(LocalAuthList(), bad)


def _transfer(source: LocalAuthList, target: LocalAuthList, rng: random.Random,
              max_entries: int = 10) -> LocalAuthList | None:
    """Core to core: request, chunks through the codec, shuffled and duplicated."""
    request = codec.decode_untrusted(AuthListRequest, codec.encode(
        AuthListRequest(target.version, target.list_hash)))
    if not wants_list(source.summary(), request):
        return None
    wire = [codec.encode(c) for c in chunks_for(source, max_entries)]
    wire = wire + rng.sample(wire, k=len(wire) // 2)  # duplicates
    rng.shuffle(wire)
    assembler = AuthListAssembler(target)
    result = None
    for data in wire:
        out = assembler.offer_untrusted(codec.decode_untrusted(AuthListChunk, data))
        result = out or result
    return result


def test_transfer_core_to_core_shuffled_and_duplicated() -> None:
    rng = random.Random(7)
    source = _list(95, version=4)
    got = _transfer(source, LocalAuthList(), rng)
    assert got == source and got.list_hash == source.list_hash
    for chunk in chunks_for(source):
        assert len(codec.encode(chunk)) < 1400
    # Up to date: nothing asked for.
    assert _transfer(source, source, rng) is None
    # Empty list at a newer version also travels.
    empty = LocalAuthList(9, ())
    assert _transfer(empty, source, rng) == empty


def test_assembler_refuses_forged_hash_and_inconsistent_chunks() -> None:
    source = _list(25, version=4)
    chunks = list(chunks_for(source))
    assembler = AuthListAssembler(LocalAuthList())
    forged = attrs.evolve(chunks[1], entries=(_entry("TOKEN00010X"), *chunks[1].entries[1:]))
    assembler.offer_untrusted(chunks[0])
    assembler.offer_untrusted(chunks[2])
    with pytest.raises(BadPacket, match="hash"):
        assembler.offer_untrusted(forged)
    assert assembler.current == LocalAuthList()
    assembler.offer_untrusted(chunks[0])
    with pytest.raises(BadPacket, match="inconsistent"):
        assembler.offer_untrusted(attrs.evolve(chunks[1], count=7))
    stats = assembler.statistics()
    assert stats.transfers_refused == 2 and stats.transfers_completed == 0
    # A clean retry afterwards completes.
    for c in chunks:
        out = assembler.offer_untrusted(c)
    assert out == source


def test_assembler_prefers_newest_and_ignores_older() -> None:
    old, new = _list(15, version=4), _list(12, version=5)
    assembler = AuthListAssembler(LocalAuthList())
    assembler.offer_untrusted(chunks_for(old)[0])
    for c in chunks_for(new):
        out = assembler.offer_untrusted(c)
    assert out == new
    assert assembler.offer_untrusted(chunks_for(old)[1]) is None
    assert assembler.statistics().chunks_ignored == 1


def test_assembler_bounds_list_size() -> None:
    assembler = AuthListAssembler(LocalAuthList(), max_entries=20)
    with pytest.raises(BadPacket, match="too_large"):
        for c in chunks_for(_list(30)):
            assembler.offer_untrusted(c)


def test_same_version_tie_break_converges() -> None:
    a = LocalAuthList.build(3, [_entry("A")])
    b = LocalAuthList.build(3, [_entry("B")])
    assert a.summary().is_older_than(b.summary()) != b.summary().is_older_than(a.summary())
