"""Signed queries over the mesh port (type bytes 0x60-0x6F): a utility asks any peer.

A utility holds a certificate from the operator's CA with the ``utility-reader`` role (or
``operator``). It sends a ``CapacityQuery`` to any member's mesh port (7946, UDP) in the
ordinary signed envelope, its certificate attached; the member checks the role on the
verified certificate and answers with a ``CapacityAnswer``, signed by itself, computed from
its local copy of every member's state record. Nobody without such a certificate gets an
answer, and every answer says which node gave it and how stale its sum can be.
"""

from __future__ import annotations

import attrs

from protocol import codec
from protocol.allocation.plan import CapacityBreakdown
from protocol.messages import message
from protocol.state import Capacity, Scope

QUERY_ROLES = frozenset({"utility-reader", "operator"})
U63_MAX = 2**63 - 1


@message(0x60)
@attrs.frozen
class CapacityQuery:
    query_id: int = codec.integer(0, 2**32 - 1)
    scope: Scope = codec.field()


@attrs.frozen
class TransformerCapacity:
    """One transformer in a capacity answer: what its members offer, what counts."""

    transformer_id: str = codec.text(64)
    headroom_w: float = codec.number(-1.0)  # -1: no rating known, not constrained
    available_w: float = codec.number(0.0)
    counted_w: float = codec.number(0.0)


@message(0x61)
@attrs.frozen
class CapacityAnswer:
    query_id: int = codec.integer(0, 2**32 - 1)
    scope: Scope = codec.field()
    discharge_available_w: float = codec.number(0.0)
    energy_above_min_soc_wh: float = codec.number(0.0)
    nodes: int = codec.integer(0, 2**31 - 1)
    nodes_with_faults: int = codec.integer(0, 2**31 - 1)
    oldest_updated_at_ms: int = codec.integer(0, U63_MAX)  # 0: no record in the sum
    # appended (older decoders ignore them): each transformer counted at most its headroom
    transformer_aware_w: float = codec.number(0.0, default=0.0)
    transformers: tuple[TransformerCapacity, ...] = codec.items(24, default=())

    @classmethod
    def from_capacity(
        cls, query_id: int, capacity: Capacity, breakdown: CapacityBreakdown | None = None
    ) -> CapacityAnswer:
        rows: tuple[TransformerCapacity, ...] = ()
        aware = capacity.discharge_available_w
        if breakdown is not None:
            aware = breakdown.total_w
            rows = tuple(
                TransformerCapacity(
                    r.transformer_id, -1.0 if r.headroom_w is None else r.headroom_w,
                    r.available_w, r.planned_w,
                )
                for r in breakdown.transformers[:24]
            )
        return cls(
            query_id=query_id,
            scope=capacity.scope,
            discharge_available_w=capacity.discharge_available_w,
            energy_above_min_soc_wh=capacity.energy_above_min_soc_wh,
            nodes=capacity.nodes,
            nodes_with_faults=capacity.nodes_with_faults,
            oldest_updated_at_ms=capacity.oldest_updated_at_ms or 0,
            transformer_aware_w=aware,
            transformers=rows,
        )


def may_query(roles: tuple[str, ...]) -> bool:
    return any(r in QUERY_ROLES for r in roles)
