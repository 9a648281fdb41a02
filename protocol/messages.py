"""The message registry: one type byte <-> one attrs class (after hyperframe's FRAMES).

Every message that crosses the wire is a small ``@attrs.frozen`` class registered here with
``@message(TYPE_BYTE)``. The envelope (``protocol.wire``) carries the type byte; the codec
(``protocol.codec``) turns the class's fields into a msgpack array. Classes hold no codec
code.

Type byte ranges, so that each layer owns a block and a collision is a startup error:

    0x01-0x0F  identity and control       (this module)
    0x10-0x2F  membership: SWIM, gossip   (protocol.swim)
    0x30-0x3F  state records              (protocol.state)
    0x40-0x4F  allocation: PLAN, ACK      (protocol.allocation)
    0x50-0x5F  authorization lists        (protocol.authlist)
    0x60-0x6F  queries (utility capacity)
    0x7F       the urgent benchmark's probe (sims.bench.urgent)
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from protocol import codec
from protocol.errors import LocalProtocolError

C = TypeVar("C", bound=type)

# type byte -> class, and back
MESSAGE_TYPES: dict[int, type] = {}
TYPE_OF: dict[type, int] = {}


def message(type_byte: int) -> Callable[[C], C]:
    """Register an attrs class as the message with ``type_byte``."""

    def register(cls: C) -> C:
        if not 0 < type_byte < 256:
            raise LocalProtocolError(f"type byte {type_byte:#x} out of range")
        if not attrs.has(cls):
            raise LocalProtocolError(f"{cls.__name__} is not an attrs class")
        existing = MESSAGE_TYPES.get(type_byte)
        if existing is not None and existing is not cls:
            raise LocalProtocolError(
                f"type byte {type_byte:#x} already used by {existing.__name__}"
            )
        MESSAGE_TYPES[type_byte] = cls
        TYPE_OF[cls] = type_byte
        codec.codec_for(cls)  # compile now: a bad field type fails at import, not on the wire
        return typing.cast(C, cls)

    return register


def type_byte_of(msg: Any) -> int:
    try:
        return TYPE_OF[type(msg)]
    except KeyError:
        raise LocalProtocolError(f"{type(msg).__name__} is not a registered message") from None


@message(0x01)
@attrs.frozen
class Revoke:
    """Carries one CA-signed revocation record (``protocol.identity``) through the mesh."""

    revocation: bytes = codec.blob(1024)


@message(0x02)
@attrs.frozen
class CertificateRequest:
    """Ask a peer for certificates we lack (by node id); answered with ``Certificates``."""

    node_ids: tuple[str, ...] = codec.items(64)


@message(0x03)
@attrs.frozen
class Certificates:
    """Certificates as the CA signed them; each is verified on arrival."""

    certificates: tuple[bytes, ...] = codec.items(64)
