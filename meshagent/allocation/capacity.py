"""Transformer-aware capacity: each transformer counts at most its headroom.

What every capacity answer (CLI, signed mesh query, API) adds to the plain sum of offers:
the sum over transformers of ``min(C_k, sum of u_i)`` (``protocol.allocation.plan``), with
the breakdown per transformer, so a utility never counts discharge a feeder cannot carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.mesh.node import MeshNode
from protocol.allocation.plan import CapacityBreakdown, transformer_capacity
from protocol.state import Scope


def transformer_aware(node: MeshNode, scope: Scope | None, headroom_w: Mapping[str, float]) -> CapacityBreakdown:
    core = node.core
    scope = scope or Scope.everyone()
    offers = [
        (r.transformer_id, r.discharge_available_w)
        for r in node.records.records()
        if scope.contains(r.site_id, r.transformer_id) and core.is_live(r.node_id)
    ]
    return transformer_capacity(offers, headroom_w)


def breakdown_json(b: CapacityBreakdown) -> dict[str, Any]:
    return {
        "transformer_aware_w": b.total_w,
        "transformers": [
            {
                "transformer_id": r.transformer_id,
                "headroom_w": r.headroom_w,
                "available_w": r.available_w,
                "counted_w": r.planned_w,
                "limited_by_headroom": r.binding,
            }
            for r in b.transformers
        ],
    }
