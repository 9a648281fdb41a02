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


# --- the compiled checkers against the per-field closures they stand for ---------------------


def _all_codecs() -> dict[type, codec.Codec]:
    import protocol.allocation.messages
    import protocol.authlist
    import protocol.query
    import protocol.state
    import protocol.swim.messages  # noqa: F401 - registers their classes

    for cls in [*MESSAGE_TYPES.values(), Sample]:
        codec.codec_for(cls)
    return dict(codec._CODECS)


def _near(rng, cls: type, depth: int = 0):
    """A body for ``cls``: mostly in range, often just past a limit, sometimes anything."""
    import typing

    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    n = len(fields) + rng.choice([0, 0, 0, 0, 1, -1, -2])
    body = []
    for f in fields[: max(n, 0)]:
        body.append(_value_near(rng, f"{cls.__name__}.{f.name}", hints[f.name], f.metadata, depth))
    if n > len(fields):
        body.append(_anything(rng, depth))
    return body


def _anything(rng, depth: int):
    pick = rng.randrange(9)
    if pick == 0 or depth > 3:
        return rng.choice([None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", b""])
    if pick in (1, 2):
        return rng.randint(-(2**63), 2**64 - 1)
    if pick == 3:
        return rng.uniform(-1e9, 1e9)
    if pick == 4:
        return "x" * rng.randint(0, 300)
    if pick == 5:
        return rng.randbytes(rng.randint(0, 70))
    if pick == 6:
        return {"k": 1}
    return [_anything(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _value_near(rng, name: str, tp, meta, depth: int):
    import typing

    if rng.random() < 0.08:
        return _anything(rng, depth)
    kind = codec._kind_of(name, tp, meta)
    if kind.optional and rng.random() < 0.3:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if kind.optional:
        tp = args[0]
    if kind.scalar is not None:
        tag = kind.scalar[0]
        if tag == "bool":
            return rng.choice([True, False, 1])
        if tag == "int":
            lo, hi = kind.scalar[1], kind.scalar[2]
            return rng.choice([lo, hi, lo - 1, hi + 1, (lo + hi) // 2, True, float(lo)])
        if tag == "float":
            lo, hi = kind.scalar[1], kind.scalar[2]
            return rng.choice([lo, hi, 0, 1, -1.5, float("nan"), float("inf"), -float("inf"), 1e308, True, "1"])
        if tag == "str":
            return "é" * rng.choice([0, 1, kind.scalar[1], kind.scalar[1] + 1])
        n, exact = kind.scalar[1], kind.scalar[2]
        size = exact if exact is not None and rng.random() < 0.7 else rng.choice([0, 1, n, n + 1])
        return rng.randbytes(min(size, 4096)) if rng.random() < 0.95 else bytearray(2)
    if kind.enum_by_value is not None:
        return rng.choice([*kind.enum_by_value, "no-such-value", 999, [1], {"a": 1}])
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        limit = meta.get("max_items", codec.DEFAULT_MAX_ITEMS)
        count = rng.choice([0, 1, 2, min(limit, 5), limit + 1]) if limit < 50 else rng.randint(0, 5)
        return [_value_near(rng, name + "[]", inner, {}, depth + 1) for _ in range(count)]
    if attrs.has(tp):
        return _near(rng, tp, depth + 1) if depth < 4 else []
    return _anything(rng, depth)


def _pack_by_closures(obj):
    import typing

    hints = typing.get_type_hints(type(obj))
    out = []
    for f in attrs.fields(type(obj)):
        pack = codec._kind_of(f.name, hints[f.name], f.metadata).pack
        v = getattr(obj, f.name)
        out.append(v if pack is None else pack(v))
    return out


def _outcome(check, body):
    try:
        return ("ok", check(body))
    except BadPacket as exc:
        return ("bad", str(exc))


def test_compiled_checkers_match_the_per_field_closures():
    """Every class's compiled checker returns what its per-field closures return, or raises
    BadPacket with the same message, on bodies in range, at and past every limit, short, long
    and of the wrong types; and its packer gives what the closures' packing gave."""
    import random

    codecs = _all_codecs()
    assert len(codecs) > 20, sorted(c.__name__ for c in codecs)
    rng = random.Random(20261204)
    accepted = refused = 0
    for cls, compiled in codecs.items():
        generic = codec._GENERIC[cls]
        for _ in range(300):
            body = _near(rng, cls)
            got, want = _outcome(compiled.check_untrusted, body), _outcome(generic, body)
            assert got == want, (cls.__name__, body)
            if got[0] == "ok":
                accepted += 1
                value = got[1]
                assert compiled.pack(value) == _pack_by_closures(value)
                assert generic(msgpack.unpackb(codec.encode(value), raw=False)) == value
            else:
                refused += 1
    assert accepted > 1000 and refused > 1000, (accepted, refused)
