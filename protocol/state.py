"""State records: each node's small, versioned account of what it can give the grid.

Theory of operation
-------------------
Every node publishes one ``StateRecord`` about itself (site, transformer, discharge it can
offer now, energy above its minimum state of charge, SoC, thermal derating, active faults,
and the wall-clock time it was taken) and every node keeps the latest record of every
member. Records ride the membership dissemination (``protocol.swim``): piggybacked on
probes and gossip, and in full in push-pull syncs.

Merging is last-writer-wins by ``(incarnation, version)``: the incarnation is the author's
SWIM incarnation when it published (so a restarted node, whose version counter began
again, still wins once it has refuted its old life), the version counts publications
within it. Only the author can make a record about itself: relayed records carry the
author's signature (see ``protocol.swim.auth``), checked before a record is accepted.

Capacity "from any peer" is then a local sum over the records of live members
(``capacity_sum``): exact up to the staleness of gossip, which is what a utility asking
any charger wants. Records of dead or left members are reaped after a configurable time
(``SwimConfig.record_reap_s``) so their capacity stops counting at once (``capacity_sum``
only counts live members) and their memory is freed later.

Wire layout (a msgpack array, fields in this order; see ``protocol.codec``):

    0 node_id                  str <= 32
    1 incarnation              int >= 0
    2 version                  int >= 0
    3 site_id                  str <= 64
    4 transformer_id           str <= 64
    5 discharge_available_w    float >= 0
    6 energy_above_min_soc_wh  float >= 0
    7 soc                      float in [0, 1]
    8 thermal_derating         float in [0, 1] (0 = full power, 1 = no power for heat)
    9 faults                   [str <= 64] <= 16
    10 updated_at_ms           int, the author's wall clock (ms since the Unix epoch)
    11 signature               bytes <= 64 (empty when the mesh runs without item signatures)
    12 auth_list_version       int in [0, 2**31 - 1] (0: no local authorization list)
    13 auth_list_hash          bytes, 32 (SHA-256 of the list) or empty

Fields 12 and 13 were appended after the signature (the codec only ever appends): an older
decoder ignores them, a newer one reads an older record with ``0`` and ``b""``. The author's
signature covers them (``signing_payload`` encodes the record with an empty signature), and
``signed_fields`` leaves them out of the signed bytes while they hold their defaults, so a
record without a list signs the same bytes under the old layout and the new one.

The auth-list summary is what ``meshagent.csms.authsync`` replicates by: a node whose list is
older than a live peer's (``protocol.authlist.AuthListSummary.is_older_than``) pulls the
peer's list with ``AuthListRequest``/``AuthListChunk``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import attrs

from protocol import codec
from protocol.identity import NODE_ID_MAX
from protocol.messages import message

MAX_FAULTS = 16
U63_MAX = 2**63 - 1
AUTH_LIST_VERSION_MAX = 2**31 - 1  # OCPP versionNumber is a 32-bit integer
AUTH_LIST_HASH_BYTES = 32


def _hash_or_empty(_record: object, _attribute: object, value: bytes) -> None:
    if len(value) not in (0, AUTH_LIST_HASH_BYTES):
        raise ValueError(f"auth_list_hash must be empty or {AUTH_LIST_HASH_BYTES} bytes")


@message(0x30)
@attrs.frozen
class StateRecord:
    """One node's published state. Also a message on its own (type 0x30)."""

    node_id: str = codec.text(NODE_ID_MAX)
    incarnation: int = codec.integer(0, U63_MAX)
    version: int = codec.integer(0, U63_MAX)
    site_id: str = codec.text(64)
    transformer_id: str = codec.text(64)
    discharge_available_w: float = codec.number(0.0)
    energy_above_min_soc_wh: float = codec.number(0.0)
    soc: float = codec.number(0.0, 1.0)
    thermal_derating: float = codec.number(0.0, 1.0)
    faults: tuple[str, ...] = codec.items(MAX_FAULTS)
    updated_at_ms: int = codec.integer(0, U63_MAX)
    signature: bytes = codec.blob(64, default=b"")
    auth_list_version: int = codec.integer(0, AUTH_LIST_VERSION_MAX, default=0)
    auth_list_hash: bytes = codec.blob(AUTH_LIST_HASH_BYTES, default=b"", validator=_hash_or_empty)
    # the IEEE 1547 droop's base (the inverter's discharge rating): what a frequency event's
    # droop asks of this charger per unit, delivered or not (docs/allocation.md)
    rated_discharge_w: float = codec.number(0.0, default=0.0)

    @property
    def order(self) -> tuple[int, int]:
        """The merge key: the highest wins."""
        return (self.incarnation, self.version)


# Fields appended after ``signature``, with their defaults: left out of the signed bytes while
# they hold them (``signed_fields``).
_APPENDED_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("auth_list_version", 0), ("auth_list_hash", b""), ("rated_discharge_w", 0.0),
)


def signed_fields(record: StateRecord) -> list[object]:
    """The record's field array with an empty signature, trailing defaulted fields trimmed.

    What an author signs (under a domain tag, see ``protocol.swim.messages.signing_payload``).
    Trimming keeps a record without an auth list signed over exactly the bytes an older node
    signs and checks, so nodes on either side of the upgrade verify each other's records.
    """
    fields = codec.codec_for(StateRecord).pack(attrs.evolve(record, signature=b""))
    keep = len(fields)
    for name, default in reversed(_APPENDED_DEFAULTS):
        if getattr(record, name) != default:
            break
        keep -= 1
    return list(fields[:keep])


def newer(candidate: StateRecord, current: StateRecord | None) -> bool:
    """True when ``candidate`` should replace ``current`` (highest (incarnation, version) wins).

    Equal keys keep the current record: the author never publishes two different records
    under one key, so an equal key is a duplicate (or a forgery, refused by its signature).
    """
    return current is None or candidate.order > current.order


class ScopeKind(enum.Enum):
    ALL = 0
    SITE = 1
    TRANSFORMER = 2
    FREQUENCY = 3  # a site's frequency response: its members, apart from the site's load spikes


@attrs.frozen
class Scope:
    """Which members a message or a sum is about: everyone, one site or one transformer."""

    kind: ScopeKind = ScopeKind.ALL
    id: str = codec.text(64, default="")

    @classmethod
    def everyone(cls) -> Scope:
        return cls(ScopeKind.ALL, "")

    @classmethod
    def site(cls, site_id: str) -> Scope:
        return cls(ScopeKind.SITE, site_id)

    @classmethod
    def transformer(cls, transformer_id: str) -> Scope:
        return cls(ScopeKind.TRANSFORMER, transformer_id)

    @classmethod
    def frequency(cls, site_id: str) -> Scope:
        return cls(ScopeKind.FREQUENCY, site_id)

    def contains(self, site_id: str, transformer_id: str) -> bool:
        if self.kind is ScopeKind.ALL:
            return True
        if self.kind in (ScopeKind.SITE, ScopeKind.FREQUENCY):
            return site_id == self.id
        return transformer_id == self.id


@attrs.frozen
class Capacity:
    """Aggregate of live members' records in one scope."""

    scope: Scope
    discharge_available_w: float
    energy_above_min_soc_wh: float
    nodes: int  # live members in scope with a record
    nodes_with_faults: int
    oldest_updated_at_ms: int | None  # staleness bound of the sum


def capacity_sum(
    records: Iterable[StateRecord],
    is_live: Callable[[str], bool],
    scope: Scope | None = None,
) -> Capacity:
    """Sum the discharge capacity of live members in ``scope`` (everyone by default).

    Derating is already folded into ``discharge_available_w`` by its author (it is "what I
    can give now"); a member with active faults still counts what it says it can give, and
    is counted in ``nodes_with_faults`` so a caller can discount it.
    """
    scope = scope or Scope.everyone()
    watts = 0.0
    energy = 0.0
    nodes = 0
    faulty = 0
    oldest: int | None = None
    for r in records:
        if not scope.contains(r.site_id, r.transformer_id) or not is_live(r.node_id):
            continue
        nodes += 1
        watts += r.discharge_available_w
        energy += r.energy_above_min_soc_wh
        if r.faults:
            faulty += 1
        if oldest is None or r.updated_at_ms < oldest:
            oldest = r.updated_at_ms
    return Capacity(scope, watts, energy, nodes, faulty, oldest)
