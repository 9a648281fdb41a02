"""SWIM messages (type bytes 0x10-0x2F) and the rumors they carry.

Theory of operation
-------------------
Every packet is one signed envelope (``protocol.wire``) holding one message. Probes (``Ping``,
``Ack``, ``PingReq``) and ``Gossip`` carry a ``Rumors`` bundle: the items the dissemination
queue chose to piggyback, each kind in its own list so the codec stays monomorphic.

Rumors are *authored*: an ``Alive``, ``Left``, ``StateRecord`` or urgent ``Broadcast`` by the
node it is about, a ``Suspect`` or ``Dead`` by its accuser (``from_id``). The envelope only
proves who relayed a rumor, so each item carries its author's Ed25519 signature over the
item with an empty signature field (``signing_payload``), and a receiver checks it whenever
the relay is not the author. That is what makes "only a node can raise its own incarnation,
only a node can leave for itself, only a node can publish its own record" hold in a gossip
mesh, which memberlist (with one shared key) cannot promise. In simulations the signature
is left empty and not checked (``protocol.swim.auth``).

Wire layouts (msgpack arrays in field order; nested classes are nested arrays):

    Alive      [node_id, incarnation, host, port, site_id, transformer_id, signature]
    Suspect    [node_id, incarnation, from_id, signature]
    Dead       [node_id, incarnation, from_id, signature]
    Left       [node_id, incarnation, signature]
    Broadcast  [origin_id, serial, [scope_kind, scope_id], type_byte, body, signature]
    Rumors     [[Alive...], [Suspect...], [Dead...], [Left...], [StateRecord...], [Broadcast...]]

    0x10 Ping     [seq, target_id, Rumors]
    0x11 Ack      [seq, Rumors]
    0x12 Nack     [seq]
    0x13 PingReq  [seq, target_id, target_host, target_port, want_nack, Rumors]
    0x14 Gossip   [Rumors]
    0x15 PushPull [join, reply, Rumors]         (over TCP; bounded by push_pull_max_bytes)
    0x16 Urgent   [Broadcast]                    (straight to each member of a scope)
"""

from __future__ import annotations

from typing import Any

import attrs
import msgpack

from protocol import codec
from protocol.identity import NODE_ID_MAX
from protocol.messages import message
from protocol.state import U63_MAX, Scope, StateRecord, signed_fields

SIGNATURE_MAX = 64
HOST_MAX = 64  # an IPv6 literal with a zone, or a short DNS name
MAX_RUMORS = 20_000  # per kind; a push-pull of a 10,000-node mesh fits; UDP is bounded by size
MAX_URGENT_BODY = 60_000
U32_MAX = 2**32 - 1


def _required() -> Any:
    """A field with no default (typed Any so mypy accepts it among codec helpers)."""
    return attrs.field()


@attrs.frozen
class Alive:
    node_id: str = codec.text(NODE_ID_MAX)
    incarnation: int = codec.integer(0, U63_MAX)
    host: str = codec.text(HOST_MAX)
    port: int = codec.integer(1, 65535)
    site_id: str = codec.text(64)
    transformer_id: str = codec.text(64)
    signature: bytes = codec.blob(SIGNATURE_MAX, default=b"")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@attrs.frozen
class Suspect:
    node_id: str = codec.text(NODE_ID_MAX)
    incarnation: int = codec.integer(0, U63_MAX)
    from_id: str = codec.text(NODE_ID_MAX)
    signature: bytes = codec.blob(SIGNATURE_MAX, default=b"")


@attrs.frozen
class Dead:
    node_id: str = codec.text(NODE_ID_MAX)
    incarnation: int = codec.integer(0, U63_MAX)
    from_id: str = codec.text(NODE_ID_MAX)
    signature: bytes = codec.blob(SIGNATURE_MAX, default=b"")


@attrs.frozen
class Left:
    node_id: str = codec.text(NODE_ID_MAX)
    incarnation: int = codec.integer(0, U63_MAX)
    signature: bytes = codec.blob(SIGNATURE_MAX, default=b"")


@attrs.frozen
class Broadcast:
    """An application message sent urgently to a scope, relayed by gossip.

    ``body`` is the msgpack body (``protocol.codec.encode``) of a registered message whose
    type byte is ``type_byte``; it is decoded (untrusted) only by members in ``scope``.
    """

    origin_id: str = codec.text(NODE_ID_MAX)
    serial: int = codec.integer(0, U63_MAX)
    scope: Scope = _required()
    type_byte: int = codec.integer(1, 255)
    body: bytes = codec.blob(MAX_URGENT_BODY)
    signature: bytes = codec.blob(SIGNATURE_MAX, default=b"")


@attrs.frozen
class Rumors:
    alive: tuple[Alive, ...] = codec.items(MAX_RUMORS, default=())
    suspect: tuple[Suspect, ...] = codec.items(MAX_RUMORS, default=())
    dead: tuple[Dead, ...] = codec.items(MAX_RUMORS, default=())
    left: tuple[Left, ...] = codec.items(MAX_RUMORS, default=())
    records: tuple[StateRecord, ...] = codec.items(MAX_RUMORS, default=())
    broadcasts: tuple[Broadcast, ...] = codec.items(MAX_RUMORS, default=())

    def __len__(self) -> int:
        return (
            len(self.alive) + len(self.suspect) + len(self.dead) + len(self.left)
            + len(self.records) + len(self.broadcasts)
        )


NO_RUMORS = Rumors()

Rumor = Alive | Suspect | Dead | Left | StateRecord | Broadcast


def bundle(items: list[Any]) -> Rumors:
    """Sort a list of rumors into a ``Rumors`` bundle."""
    if not items:
        return NO_RUMORS
    alive: list[Alive] = []
    suspect: list[Suspect] = []
    dead: list[Dead] = []
    left: list[Left] = []
    records: list[StateRecord] = []
    broadcasts: list[Broadcast] = []
    lists: dict[type, list[Any]] = {
        Alive: alive, Suspect: suspect, Dead: dead, Left: left,
        StateRecord: records, Broadcast: broadcasts,
    }
    for item in items:
        lists[type(item)].append(item)
    return Rumors(
        tuple(alive), tuple(suspect), tuple(dead), tuple(left), tuple(records), tuple(broadcasts)
    )


# Domain separation: a signature over one kind of rumor can never pass for another kind.
_DOMAINS: dict[type, bytes] = {
    Alive: b"meshagent/swim/alive\x00",
    Suspect: b"meshagent/swim/suspect\x00",
    Dead: b"meshagent/swim/dead\x00",
    Left: b"meshagent/swim/left\x00",
    StateRecord: b"meshagent/state/record\x00",
    Broadcast: b"meshagent/swim/broadcast\x00",
}


def signing_payload(item: Any) -> bytes:
    """The bytes an author signs: a domain tag and the item encoded with no signature."""
    if type(item) is StateRecord:
        # without the fields appended after the signature while they hold their defaults,
        # so that records verify across the upgrade that added them (protocol.state)
        packed: bytes = msgpack.packb(signed_fields(item), use_bin_type=True)
        return _DOMAINS[StateRecord] + packed
    return _DOMAINS[type(item)] + codec.encode(attrs.evolve(item, signature=b""))


def author_of(item: Any) -> str:
    """Who must have signed a rumor."""
    if isinstance(item, Suspect | Dead):
        return item.from_id
    if isinstance(item, Broadcast):
        return item.origin_id
    node_id: str = item.node_id
    return node_id


# --- messages --------------------------------------------------------------------------------


@message(0x10)
@attrs.frozen
class Ping:
    seq: int = codec.integer(0, U32_MAX)
    target_id: str = codec.text(NODE_ID_MAX)
    rumors: Rumors = NO_RUMORS


@message(0x11)
@attrs.frozen
class Ack:
    seq: int = codec.integer(0, U32_MAX)
    rumors: Rumors = NO_RUMORS


@message(0x12)
@attrs.frozen
class Nack:
    """Lifeguard: a relay asked to ping on our behalf says it got no answer."""

    seq: int = codec.integer(0, U32_MAX)


@message(0x13)
@attrs.frozen
class PingReq:
    seq: int = codec.integer(0, U32_MAX)
    target_id: str = codec.text(NODE_ID_MAX)
    target_host: str = codec.text(HOST_MAX)
    target_port: int = codec.integer(1, 65535)
    want_nack: bool = True
    rumors: Rumors = NO_RUMORS


@message(0x14)
@attrs.frozen
class Gossip:
    rumors: Rumors = NO_RUMORS


@message(0x15)
@attrs.frozen
class PushPull:
    """Full state sync: the sender's members and records. Carried over TCP."""

    join: bool = False
    reply: bool = False
    rumors: Rumors = NO_RUMORS


@message(0x16)
@attrs.frozen
class Urgent:
    broadcast: Broadcast
