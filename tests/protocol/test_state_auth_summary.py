"""The auth-list summary in the state record: appended fields, signatures across the upgrade."""

from __future__ import annotations

import hashlib

import attrs
import msgpack
import pytest

from protocol import codec
from protocol.errors import BadPacket
from protocol.state import StateRecord, signed_fields
from protocol.swim.messages import signing_payload
from tests.protocol.swim.helpers import records
from tests.protocol.swim.test_security import relay, sign, signed_mesh

HASH = hashlib.sha256(b"list").digest()


def record(**kw) -> StateRecord:
    base = dict(node_id="n1", incarnation=0, version=3, site_id="s", transformer_id="t",
                discharge_available_w=7000.0, energy_above_min_soc_wh=1.0, soc=0.5, thermal_derating=0.0,
                faults=(), updated_at_ms=1)
    base.update(kw)
    return StateRecord(**base)


def old_layout(r: StateRecord) -> bytes:
    """The record as a node from before the auth-list fields encodes it (12 fields)."""
    return msgpack.packb(codec.codec_for(StateRecord).pack(r)[:12], use_bin_type=True)


def test_old_encodings_decode_with_defaults_and_new_ones_round_trip():
    old = codec.decode_untrusted(StateRecord, old_layout(record(signature=b"s" * 64)))
    assert (old.auth_list_version, old.auth_list_hash, old.signature) == (0, b"", b"s" * 64)
    new = record(auth_list_version=7, auth_list_hash=HASH)
    assert codec.decode_untrusted(StateRecord, codec.encode(new)) == new
    # an older decoder (12 fields) ignores the tail: zip in check_untrusted stops at the shorter


@pytest.mark.parametrize("bad", [b"x" * 31, b"x" * 33])
def test_a_hash_that_is_neither_empty_nor_32_bytes_is_refused(bad):
    fields = codec.codec_for(StateRecord).pack(record())
    fields[13] = bad
    with pytest.raises(BadPacket):
        codec.decode_untrusted(StateRecord, msgpack.packb(fields, use_bin_type=True))


def test_signature_covers_the_summary_and_is_unchanged_without_one():
    plain = record()
    # without a list, the signed bytes are exactly the old layout's
    assert signing_payload(plain).endswith(old_layout(plain))
    assert len(signed_fields(plain)) == 12
    with_list = record(auth_list_version=2, auth_list_hash=HASH)
    assert len(signed_fields(with_list)) == 14
    assert signing_payload(with_list) != signing_payload(attrs.evolve(with_list, auth_list_version=3))
    assert signing_payload(with_list) != signing_payload(attrs.evolve(with_list, auth_list_hash=bytes(32)))


def test_a_relayed_record_with_a_forged_summary_is_refused(pki):
    _net, idents, cores = signed_mesh(pki)
    genuine = sign(idents["n1"], record(version=50, auth_list_version=2, auth_list_hash=HASH))
    forged = attrs.evolve(genuine, version=51, auth_list_version=9)  # signature of another record
    rejected = cores[0].statistics().rumors_rejected
    relay(cores[0], "n2", _rumors(forged))
    assert cores[0].statistics().rumors_rejected == rejected + 1
    relay(cores[0], "n2", _rumors(genuine))
    assert records(cores[0]).record("n1").auth_list_version == 2
    assert records(cores[0]).record("n1").auth_list_hash == HASH


def _rumors(r: StateRecord):
    from protocol.swim import Rumors

    return Rumors(records=(r,))


def test_the_droop_rating_is_appended_and_signed_only_when_set():
    plain, rated = record(), record(rated_discharge_w=11_500.0)
    assert len(signed_fields(plain)) == 12 and signing_payload(plain).endswith(old_layout(plain))
    assert len(signed_fields(rated)) == 15  # the list's two defaults come along before it
    assert signing_payload(rated) != signing_payload(attrs.evolve(rated, rated_discharge_w=1.0))
    assert codec.decode_untrusted(StateRecord, codec.encode(rated)) == rated
    assert codec.decode_untrusted(StateRecord, old_layout(plain)).rated_discharge_w == 0.0
