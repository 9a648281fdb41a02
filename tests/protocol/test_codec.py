"""The body codec: field checks, limits, forward compatibility, registry rules."""

from __future__ import annotations

import enum

import attrs
import msgpack
import pytest

from protocol import codec
from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.messages import MESSAGE_TYPES, message


class Mode(enum.Enum):
    CHARGE = "charge"
    DISCHARGE = "discharge"


@attrs.frozen
class Inner:
    watts: float = codec.number(-1e6, 1e6)
    name: str = codec.text(8)


@attrs.frozen
class Sample:
    count: int = codec.integer(0, 100)
    flag: bool = attrs.field()
    mode: Mode = attrs.field()
    inner: Inner = attrs.field()
    tags: tuple[str, ...] = codec.items(3)
    blob: bytes | None = codec.blob(4, default=None)
    extra: int = codec.integer(0, 10, default=7)


GOOD = Sample(count=3, flag=True, mode=Mode.DISCHARGE, inner=Inner(-1.5, "inv"), tags=("a", "b"))


def test_round_trip_and_defaults():
    data = codec.encode(GOOD)
    assert msgpack.unpackb(data) == [3, True, "discharge", [-1.5, "inv"], ["a", "b"], None, 7]
    assert codec.decode_untrusted(Sample, data) == GOOD
    short = msgpack.packb([3, True, "discharge", [-1.5, "inv"], ["a", "b"]])
    assert codec.decode_untrusted(Sample, short) == GOOD


@pytest.mark.parametrize(
    "fields",
    [
        [101, True, "charge", [0, "x"], []],  # int above max
        [-1, True, "charge", [0, "x"], []],  # int below min
        [True, True, "charge", [0, "x"], []],  # bool is not an int
        [1, 1, "charge", [0, "x"], []],  # int is not a bool
        [1, True, "idle", [0, "x"], []],  # unknown enum value
        [1, True, "charge", [float("nan"), "x"], []],  # NaN power
        [1, True, "charge", [2e6, "x"], []],  # power out of range
        [1, True, "charge", [0, "x" * 9], []],  # text too long
        [1, True, "charge", [0, "x"], ["a", "b", "c", "d"]],  # too many items
        [1, True, "charge", [0, "x"], [], b"12345"],  # blob too long
        [1, True, "charge", [0, "x"]],  # missing required field
        [1, True, "charge", {"watts": 0}, []],  # map where an array belongs
        "not a list",
    ],
)
def test_bad_fields_raise_badpacket(fields):
    with pytest.raises(BadPacket) as info:
        codec.decode_untrusted(Sample, msgpack.packb(fields, use_bin_type=True))
    assert info.value.reason is DropReason.BAD_FIELD


def test_attrs_validator_failure_becomes_badpacket():
    @attrs.frozen
    class Positive:
        x: int = attrs.field(validator=attrs.validators.gt(0))

    with pytest.raises(BadPacket):
        codec.decode_untrusted(Positive, msgpack.packb([0]))


def test_unsupported_field_type_fails_at_compile_time():
    @attrs.frozen
    class Bad:
        x: dict[str, int] = attrs.field()

    with pytest.raises(LocalProtocolError):
        codec.codec_for(Bad)


def test_registry_refuses_duplicate_type_bytes():
    with pytest.raises(LocalProtocolError):

        @message(0x01)
        @attrs.frozen
        class Clash:
            x: int = 0

    assert MESSAGE_TYPES[0x01].__name__ == "Revoke"
