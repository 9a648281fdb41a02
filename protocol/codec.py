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
    kind = _kind_of(name, tp, meta)
    return kind.check, kind.pack


@attrs.frozen
class _Kind:
    """One field type, resolved once: its checker and packer, and what the compiled codec of
    its class inlines for it (``scalar``: a check on ``type(x)`` and bounds; ``enum_by_value``:
    a dict look-up; neither: a call to ``check``)."""

    check: Checker
    pack: Packer | None
    scalar: tuple[Any, ...] | None = None  # ("int", lo, hi) | ("float", lo, hi) | ("bool",) | ("str", n) | ("bytes", n, exact)
    enum_by_value: dict[Any, Any] | None = None
    enum_name: str = ""  # the enum's class name, for the message
    optional: bool = False


def _kind_of(name: str, tp: Any, meta: typing.Mapping[str, Any]) -> _Kind:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1:
            raise LocalProtocolError(f"{name}: only 'T | None' unions are supported")
        inner = _kind_of(name, members[0], meta)
        if inner.pack is None:
            pack = None
        else:
            pack_inner = inner.pack

            def pack(v: Any) -> Any:
                return None if v is None else pack_inner(v)

        return attrs.evolve(inner, check=_optional_checker(inner.check), pack=pack, optional=True)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise LocalProtocolError(f"{name}: only tuple[T, ...] is supported")
        inner_check, inner_pack = _checker_for(name + "[]", args[0], {})
        check = _tuple_checker(name, inner_check, meta.get("max_items", DEFAULT_MAX_ITEMS))
        if inner_pack is None:
            return _Kind(check, list)
        elem_pack = inner_pack
        return _Kind(check, lambda v: [elem_pack(x) for x in v])
    if tp is bool:
        return _Kind(_bool_checker(name), None, scalar=("bool",))
    if tp is int:
        lo, hi = meta.get("min", I64_MIN), meta.get("max", U64_MAX)
        return _Kind(_int_checker(name, lo, hi), None, scalar=("int", lo, hi))
    if tp is float:
        lo, hi = meta.get("min", -math.inf), meta.get("max", math.inf)
        return _Kind(_float_checker(name, lo, hi), None, scalar=("float", lo, hi))
    if tp is str:
        n = meta.get("max_len", DEFAULT_MAX_TEXT)
        return _Kind(_str_checker(name, n), None, scalar=("str", n))
    if tp is bytes:
        n, exact = meta.get("max_len", DEFAULT_MAX_BLOB), meta.get("exact_len")
        return _Kind(_bytes_checker(name, n, exact), None, scalar=("bytes", n, exact))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _Kind(_enum_checker(name, tp), lambda v: v.value, enum_by_value={m.value: m for m in tp},
                     enum_name=tp.__name__)
    if isinstance(tp, type) and attrs.has(tp):
        codec = codec_for(tp)
        return _Kind(codec.check_untrusted, codec.pack)
    raise LocalProtocolError(f"{name}: field type {tp!r} has no wire encoding")


def _compile(
    cls: type, names: list[str], kinds: list[_Kind], required: int, generic_check: Checker,
) -> tuple[Checker, Packer]:
    """Straight-line Python for one class's ``check_untrusted`` and ``pack``, made once.

    The generic checker calls one closure per field, and one more per level of nesting; at a
    thousand members a push-pull state is a thousand records of a dozen fields, and those
    calls were most of the codec's time. The compiled checker does the same checks, in the
    same order, with the same messages, inline; a body shorter than the class (an older peer,
    defaults to fill) takes the generic path. The source is made from the class's own
    annotations and limits only, never from received bytes.
    """
    name = cls.__name__
    ns: dict[str, Any] = {"_cls": cls, "_bad": _bad, "BadPacket": BadPacket, "_isfinite": math.isfinite,
                          "_generic": generic_check, "_list": list, "_int": int, "_float": float,
                          "_bool": bool, "_str": str, "_bytes": bytes}
    body: list[str] = []
    args: list[str] = []
    for i, kind in enumerate(kinds):
        x = f"x{i}"
        fname = f"{name}.{names[i]}"
        body.append(f"{x} = v[{i}]")
        lines: list[str] = []
        if kind.scalar is not None:
            tag = kind.scalar[0]
            if tag == "int":
                lo, hi = kind.scalar[1], kind.scalar[2]
                ns[f"m{i}"] = f"{fname}: expected integer in [{lo}, {hi}]"
                lines.append(f"if type({x}) is not _int or not {lo!r} <= {x} <= {hi!r}: raise _bad(m{i})")
            elif tag == "float":
                ns[f"lo{i}"], ns[f"hi{i}"] = kind.scalar[1], kind.scalar[2]
                ns[f"m{i}"] = f"{fname}: expected a number"
                ns[f"n{i}"] = f"{fname}: expected a finite number in [{kind.scalar[1]}, {kind.scalar[2]}]"
                lines.append(f"if type({x}) is not _float and type({x}) is not _int: raise _bad(m{i})")
                lines.append(f"{x} = _float({x})")
                lines.append(f"if not (_isfinite({x}) and lo{i} <= {x} <= hi{i}): raise _bad(n{i})")
            elif tag == "bool":
                ns[f"m{i}"] = f"{fname}: expected a boolean"
                lines.append(f"if type({x}) is not _bool: raise _bad(m{i})")
            elif tag == "str":
                ns[f"m{i}"] = f"{fname}: expected text of at most {kind.scalar[1]} characters"
                lines.append(f"if type({x}) is not _str or len({x}) > {kind.scalar[1]!r}: raise _bad(m{i})")
            else:  # bytes
                n, exact = kind.scalar[1], kind.scalar[2]
                ns[f"m{i}"] = f"{fname}: expected at most {n} bytes"
                lines.append(f"if type({x}) is not _bytes or len({x}) > {n!r}: raise _bad(m{i})")
                if exact is not None:
                    ns[f"e{i}"] = f"{fname}: expected exactly {exact} bytes"
                    lines.append(f"if len({x}) != {exact!r}: raise _bad(e{i})")
        elif kind.enum_by_value is not None:
            ns[f"b{i}"] = kind.enum_by_value
            ns[f"m{i}"] = f"{fname}: not a known {kind.enum_name}"
            lines.append("try:")
            lines.append(f"    {x} = b{i}[{x}]")
            lines.append("except (KeyError, TypeError):")
            lines.append(f"    raise _bad(m{i}) from None")
        else:
            ns[f"c{i}"] = kind.check
            lines.append(f"{x} = c{i}({x})")
        if kind.optional:
            body.append(f"if {x} is not None:")
            body.extend("    " + line for line in lines)
        else:
            body.extend(lines)
        args.append(x)
    ns["_m_list"] = f"{name}: expected a list of at least {required} fields"
    src = [
        "def check_untrusted(v):",
        f"    if type(v) is not _list or len(v) < {len(kinds)}:",
        f"        if type(v) is not _list or len(v) < {required}: raise _bad(_m_list)",
        "        return _generic(v)",
        "    try:",
        *("        " + line for line in body),
        f"        return _cls({', '.join(args)}{',' if len(args) == 1 else ''})",
        "    except BadPacket:",
        "        raise",
        "    except Exception as exc:",
        f"        raise _bad({name!r} + ': ' + str(exc)) from None",
    ]
    packs: list[str] = []
    for i, (attr, kind) in enumerate(zip(names, kinds, strict=True)):
        if kind.pack is None:
            packs.append(f"obj.{attr}")
        elif kind.enum_by_value is not None and not kind.optional:
            packs.append(f"obj.{attr}.value")
        else:
            ns[f"p{i}"] = kind.pack
            packs.append(f"p{i}(obj.{attr})")
    src += ["def pack(obj):", f"    return [{', '.join(packs)}]"]
    exec("\n".join(src), ns)  # the source is built from annotations only, see above
    return ns["check_untrusted"], ns["pack"]


@attrs.frozen
class Codec:
    """The compiled encoder/decoder of one attrs class."""

    cls: type
    check_untrusted: Checker  # list -> instance, raises BadPacket
    pack: Packer  # instance -> list


_CODECS: dict[type, Codec] = {}
# the per-field closures each compiled checker stands for (tests compare the two)
_GENERIC: dict[type, Checker] = {}


def codec_for(cls: type) -> Codec:
    """Compile (once) and return the codec of an attrs class."""
    codec = _CODECS.get(cls)
    if codec is not None:
        return codec
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    kinds: list[_Kind] = []
    required = 0
    for i, f in enumerate(fields):
        if f.default is attrs.NOTHING:
            if required != i:
                raise LocalProtocolError(f"{cls.__name__}: required field after optional one")
            required = i + 1
        kinds.append(_kind_of(f"{cls.__name__}.{f.name}", hints[f.name], f.metadata))
    checkers = [k.check for k in kinds]
    names = [f.name for f in fields]
    name = cls.__name__

    def generic_check(v: Any) -> Any:
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

    check_untrusted, pack = _compile(cls, names, kinds, required, generic_check)
    _GENERIC[cls] = generic_check
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
