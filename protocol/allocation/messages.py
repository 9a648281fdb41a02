"""PLAN and ACK (type bytes 0x40-0x4F), and the filter a PLAN carries of silent members.

Wire layout of ``Plan`` (0x40), a msgpack array in this order (see ``protocol.codec``):

    0 scope          [kind, id]  which members the plan is for (site or transformer)
    1 epoch          int >= 0    a new detection after a lost proposer starts a new epoch
    2 seq            int >= 1    rounds (and spike updates) within an epoch
    3 base_seq       int >= 0    0: shares are absolute, from the member's own offer;
                                 b > 0: shares are increments over the member's ACK of seq b
    4 deficit_w      float >= 0  what this plan covers (0 with no levels: release)
    5 view_since_ms  int         oldest offer the proposer planned from (wall clock, ms)
    6 view_digest    bytes <= 8  hash of the view (node id, record version): diagnostics
    7 levels         [Level] <= 24 one per transformer: [id, level, cut_frac, cut_key]
    8 silent         bytes <= 256 Bloom filter of members planned in seq b that did not answer
    9 ttl_ms         int         shares lapse this long after the plan unless renewed
    10 spike_id      str <= 64   the detector's spike id (for ``meshagent spikes``)
    11 trim          bool        an absolute plan that only lowers shares of its chain:
                                 share = min(from the levels, what the member applies now
                                 from this (epoch, proposer)); the proposer's re-base of
                                 over-delivery (default false; older senders omit it)
    12 droop_pu      float 0..1  a frequency event's plan: shares are planned over what is
                                 left of each member's limit after its own droop at this
                                 per unit of its rating (``limit - droop_pu * rated``)

The proposer is the urgent broadcast's origin (its signature covers the message), so no
field names it. ``Ack`` (0x41) answers one plan with what the member applied and its fresh
limits, which is what round 2 plans from.
"""

from __future__ import annotations

import hashlib

import attrs

from protocol import codec
from protocol.allocation.plan import Level
from protocol.messages import message
from protocol.state import Scope

U63_MAX = 2**63 - 1
MAX_LEVELS = 24
SILENT_MAX_BYTES = 256
_BLOOM_HASHES = 3


@message(0x40)
@attrs.frozen
class Plan:
    scope: Scope = codec.field()
    epoch: int = codec.integer(0, U63_MAX)
    seq: int = codec.integer(1, 2**31 - 1)
    base_seq: int = codec.integer(0, 2**31 - 1)
    deficit_w: float = codec.number(0.0)
    view_since_ms: int = codec.integer(0, U63_MAX)
    view_digest: bytes = codec.blob(8)
    levels: tuple[Level, ...] = codec.items(MAX_LEVELS)
    silent: bytes = codec.blob(SILENT_MAX_BYTES, default=b"")
    ttl_ms: int = codec.integer(1, 600_000, default=5_000)
    spike_id: str = codec.text(64, default="")
    trim: bool = codec.field(default=False)
    droop_pu: float = codec.number(0.0, 1.0, default=0.0)

    def level_of(self, transformer_id: str) -> Level | None:
        for lv in self.levels:
            if lv.transformer_id == transformer_id:
                return lv
        return None


@message(0x41)
@attrs.frozen
class Ack:
    scope: Scope = codec.field()
    epoch: int = codec.integer(0, U63_MAX)
    seq: int = codec.integer(1, 2**31 - 1)
    applied_w: float = codec.number(0.0)
    limit_w: float = codec.number(0.0)  # fresh: the tightest clamp now
    weight: float = codec.number(0.0)
    transformer_id: str = codec.text(64)


# --- a Bloom filter of node ids (no false negatives: a silent member always finds itself) ----


def _positions(node_id: str, bits: int) -> list[int]:
    d = hashlib.blake2b(node_id.encode(), digest_size=8 * _BLOOM_HASHES, person=b"silent").digest()
    return [int.from_bytes(d[8 * i : 8 * i + 8], "big") % bits for i in range(_BLOOM_HASHES)]


def silent_filter(node_ids: list[str]) -> bytes:
    """A Bloom filter of ``node_ids``: ~10 bits each, at most ``SILENT_MAX_BYTES``.

    A false positive tells an answering member it was silent: it releases its share, which
    only under-delivers (the next round covers it); never the other way round.
    """
    if not node_ids:
        return b""
    nbytes = min(SILENT_MAX_BYTES, max(8, (10 * len(node_ids) + 7) // 8))
    bits = bytearray(nbytes)
    for n in node_ids:
        for p in _positions(n, nbytes * 8):
            bits[p // 8] |= 1 << (p % 8)
    return bytes(bits)


def in_silent(node_id: str, silent: bytes) -> bool:
    if not silent:
        return False
    return all(silent[p // 8] & (1 << (p % 8)) for p in _positions(node_id, len(silent) * 8))
