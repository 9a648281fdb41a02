"""Body codec: attrs value classes <-> msgpack, kept apart from the classes themselves.

Theory of operation
-------------------
A message class is a plain ``@attrs.frozen`` class. Its body travels as a msgpack *array*
of its field values in declaration order (no field names on the wire: they would cost more
than the values in a 1,400-byte datagram). New fields are only ever appended with a
default, so an older decoder accepts a longer array and ignores the tail, and a newer
decoder accepts a shorter one and fills in defaults.

For every class we compile, once, a checker per field from its type annotation and its
limits (see ``text``/``blob``/``integer``/``number``/``items``). Decoding untrusted data
runs those checkers and nothing else, so the only error it can raise is ``BadPacket``.
Supported field types: ``int``, ``float``, ``bool``, ``str``, ``bytes``, ``tuple[T, ...]``,
``T | None``, ``enum.Enum`` subclasses (by value) and nested attrs classes.

Unpacking uses explicit msgpack limits and ``strict_map_key``; ext types are refused (no
message uses one), so msgpack bombs fail fast and cheaply.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import msgpack

from protocol.errors import BadPacket, DropReason, LocalProtocolError

T = TypeVar("T")

I64_MIN = -(2**63)
U64_MAX = 2**64 - 1

DEFAULT_MAX_TEXT = 256
DEFAULT_MAX_BLOB = 1024
DEFAULT_MAX_ITEMS = 256

# Limits handed to msgpack for a whole body. Per-field limits are checked afterwards.
UNPACK_LIMITS: dict[str, int] = {
    "max_str_len": 64 * 1024,
    "max_bin_len": 1024 * 1024,
    "max_array_len": 100_000,
    "max_map_len": 1_000,
    "max_ext_len": 0,
}


# --- field helpers: limits live in attrs metadata -------------------------------------------


def text(max_len: int = DEFAULT_MAX_TEXT, **kw: Any) -> Any:
    """A ``str`` field of at most ``max_len`` characters."""
    return attrs.field(metadata={"max_len": max_len}, **kw)


def blob(max_len: int = DEFAULT_MAX_BLOB, exact_len: int | None = None, **kw: Any) -> Any:
    """A ``bytes`` field of at most ``max_len`` bytes (or exactly ``exact_len``)."""
    return attrs.field(metadata={"max_len": max_len, "exact_len": exact_len}, **kw)


def integer(min_value: int = I64_MIN, max_value: int = U64_MAX, **kw: Any) -> Any:
    """An ``int`` field within ``[min_value, max_value]``."""
    return attrs.field(metadata={"min": min_value, "max": max_value}, **kw)


def number(min_value: float = -math.inf, max_value: float = math.inf, **kw: Any) -> Any:
    """A finite ``float`` field within ``[min_value, max_value]``."""
    return attrs.field(metadata={"min": min_value, "max": max_value}, **kw)


def items(max_items: int = DEFAULT_MAX_ITEMS, **kw: Any) -> Any:
    """A ``tuple[T, ...]`` field of at most ``max_items`` elements."""
    return attrs.field(metadata={"max_items": max_items}, **kw)


def field(**kw: Any) -> Any:
    """A field whose type alone bounds it (bool, enum, nested attrs class)."""
    return attrs.field(**kw)


# --- compiled checkers -----------------------------------------------------------------------

Checker = Callable[[Any], Any]
Packer = Callable[[Any], Any]


def _bad(what: str) -> BadPacket:
    return BadPacket(DropReason.BAD_FIELD, what)


def _int_checker(name: str, lo: int, hi: int) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is not int or not lo <= v <= hi:
            raise _bad(f"{name}: expected integer in [{lo}, {hi}]")
        return v

    return check


def _float_checker(name: str, lo: float, hi: float) -> Checker:
    def check(v: Any) -> Any:
        t = type(v)
        if t is not float and t is not int:
            raise _bad(f"{name}: expected a number")
        v = float(v)
        if not (math.isfinite(v) and lo <= v <= hi):
            raise _bad(f"{name}: expected a finite number in [{lo}, {hi}]")
        return v

    return check


def _bool_checker(name: str) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is not bool:
            raise _bad(f"{name}: expected a boolean")
        return v

    return check


def _str_checker(name: str, max_len: int) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is not str or len(v) > max_len:
            raise _bad(f"{name}: expected text of at most {max_len} characters")
        return v

    return check


def _bytes_checker(name: str, max_len: int, exact_len: int | None) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is not bytes or len(v) > max_len:
            raise _bad(f"{name}: expected at most {max_len} bytes")
        if exact_len is not None and len(v) != exact_len:
            raise _bad(f"{name}: expected exactly {exact_len} bytes")
        return v

    return check


def _tuple_checker(name: str, inner: Checker, max_items: int) -> Checker:
    def check(v: Any) -> Any:
        if type(v) is not list or len(v) > max_items:
            raise _bad(f"{name}: expected a list of at most {max_items} items")
        return tuple([inner(x) for x in v])

    return check


def _optional_checker(inner: Checker) -> Checker:
    def check(v: Any) -> Any:
        return None if v is None else inner(v)

    return check


def _enum_checker(name: str, enum_cls: type[enum.Enum]) -> Checker:
    by_value = {m.value: m for m in enum_cls}

    def check(v: Any) -> Any:
        try:
            return by_value[v]
        except (KeyError, TypeError):
            raise _bad(f"{name}: not a known {enum_cls.__name__}") from None

    return check


def _checker_for(name: str, tp: Any, meta: typing.Mapping[str, Any]) -> tuple[Checker, Packer | None]:
    """Return (checker for untrusted values, packer or None when the value packs as itself)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1:
            raise LocalProtocolError(f"{name}: only 'T | None' unions are supported")
        inner, inner_pack = _checker_for(name, members[0], meta)
        if inner_pack is None:
            return _optional_checker(inner), None
        pack_inner = inner_pack
        return _optional_checker(inner), lambda v: None if v is None else pack_inner(v)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise LocalProtocolError(f"{name}: only tuple[T, ...] is supported")
        inner, inner_pack = _checker_for(name + "[]", args[0], {})
        check = _tuple_checker(name, inner, meta.get("max_items", DEFAULT_MAX_ITEMS))
        if inner_pack is None:
            return check, list
        elem_pack = inner_pack
        return check, lambda v: [elem_pack(x) for x in v]
    if tp is bool:
        return _bool_checker(name), None
    if tp is int:
        return _int_checker(name, meta.get("min", I64_MIN), meta.get("max", U64_MAX)), None
    if tp is float:
        return _float_checker(name, meta.get("min", -math.inf), meta.get("max", math.inf)), None
    if tp is str:
        return _str_checker(name, meta.get("max_len", DEFAULT_MAX_TEXT)), None
    if tp is bytes:
        return (
            _bytes_checker(name, meta.get("max_len", DEFAULT_MAX_BLOB), meta.get("exact_len")),
            None,
        )
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_checker(name, tp), lambda v: v.value
    if isinstance(tp, type) and attrs.has(tp):
        codec = codec_for(tp)
        return codec.check_untrusted, codec.pack
    raise LocalProtocolError(f"{name}: field type {tp!r} has no wire encoding")


@attrs.frozen
class Codec:
    """The compiled encoder/decoder of one attrs class."""

    cls: type
    check_untrusted: Checker  # list -> instance, raises BadPacket
    pack: Packer  # instance -> list


_CODECS: dict[type, Codec] = {}


def codec_for(cls: type) -> Codec:
    """Compile (once) and return the codec of an attrs class."""
    codec = _CODECS.get(cls)
    if codec is not None:
        return codec
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    checkers: list[Checker] = []
    packers: list[Packer | None] = []
    required = 0
    for i, f in enumerate(fields):
        if f.default is attrs.NOTHING:
            if required != i:
                raise LocalProtocolError(f"{cls.__name__}: required field after optional one")
            required = i + 1
        check, pack = _checker_for(f"{cls.__name__}.{f.name}", hints[f.name], f.metadata)
        checkers.append(check)
        packers.append(pack)
    names = [f.name for f in fields]
    name = cls.__name__

    def check_untrusted(v: Any) -> Any:
        if type(v) is not list or not required <= len(v):
            raise _bad(f"{name}: expected a list of at least {required} fields")
        try:
            # zip stops at the shorter: extra trailing fields (from a newer peer) are
            # ignored, missing optional ones take their defaults.
            return cls(*[chk(x) for chk, x in zip(checkers, v, strict=False)])
        except BadPacket:
            raise
        except Exception as exc:  # an attrs validator of the class refused the value
            raise _bad(f"{name}: {exc}") from None

    if all(p is None for p in packers):

        def pack(obj: Any) -> Any:
            return [getattr(obj, a) for a in names]

    else:
        plan = [(a, p) for a, p in zip(names, packers, strict=True)]

        def pack(obj: Any) -> Any:
            return [getattr(obj, a) if p is None else p(getattr(obj, a)) for a, p in plan]

    codec = Codec(cls=cls, check_untrusted=check_untrusted, pack=pack)
    _CODECS[cls] = codec
    return codec


# --- whole bodies ----------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} not allowed")


def unpack_untrusted(data: bytes) -> Any:
    """msgpack bytes -> Python value with bomb limits. Raises only ``BadPacket``."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            **UNPACK_LIMITS,
        )
    except Exception as exc:  # msgpack raises several types; all mean the same to us
        raise BadPacket(DropReason.MALFORMED_BODY, type(exc).__name__) from None


def encode(obj: Any) -> bytes:
    """An attrs instance -> msgpack bytes of its field array."""
    packed: bytes = msgpack.packb(codec_for(type(obj)).pack(obj), use_bin_type=True)
    return packed


def decode_untrusted(cls: type[T], data: bytes) -> T:
    """msgpack bytes -> instance of ``cls``. Raises only ``BadPacket``."""
    value: T = codec_for(cls).check_untrusted(unpack_untrusted(data))
    return value
