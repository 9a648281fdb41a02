"""The API's request and response bodies: what each route reads from the node, as JSON.

Theory of operation
-------------------
Every function here reads the node's in-memory view (a ``MeshNode``, or the benchmark's
stand-in) and returns a JSON-ready dict; none blocks or awaits, so a route costs a few
hundred microseconds even with 1,000 members in view (``meshagent bench api``). A bad
request is ``BadRequest(field, message)``, which the app turns into a 400 naming the field.

``request_params`` is the one parser of what a caller sends: the query, and for a POST a
JSON object body (at most ``MAX_BODY_BYTES``) whose fields join the query's.

The event stream's snapshots (``faults_body``, ``spikes_body``) are the same bodies the
routes answer, so a browser sees on the stream what it would fetch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from starlette.requests import Request

from meshagent.api.faults import describe

MAX_BODY_BYTES = 16 * 1024


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def request_params(request: Request) -> dict[str, str]:
    """Query parameters, and for a POST a JSON object body's fields too."""
    out = dict(request.query_params)
    if request.method == "POST":
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("body", f"body larger than {MAX_BODY_BYTES} bytes")
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError:
                raise BadRequest("body", "body must be a JSON object") from None
            if not isinstance(data, dict):
                raise BadRequest("body", "body must be a JSON object")
            for key, value in data.items():
                if isinstance(value, list):
                    value = ",".join(map(str, value))
                out[str(key)] = str(value)
    return out


def _record_age(node: Any, node_id: str) -> float | None:
    rec = node.record(node_id)
    if rec is None:
        return None
    return float(round(max(0, node.endpoint.wall_clock_ms() - rec.updated_at_ms) / 1000, 3))


def _member_row(node: Any, node_id: str, status: str, incarnation: int, address: Any, site_id: str,
                transformer_id: str, since_s: float | None) -> dict[str, Any]:
    from meshagent.transport.udp import format_address

    rec = node.record(node_id)
    return {
        "node_id": node_id, "status": status, "incarnation": incarnation,
        "address": format_address(address), "site_id": site_id, "transformer_id": transformer_id,
        "record_age_s": _record_age(node, node_id), "since_s": since_s,
        "discharge_available_w": None if rec is None else rec.discharge_available_w,
        "soc": None if rec is None else rec.soc,
        "faults": [] if rec is None else list(rec.faults),
    }


def members_body(node: Any) -> dict[str, Any]:
    now = trio.current_time()
    rows = [_member_row(node, node.node_id, "alive (self)", node.core.incarnation, node.address,
                        node.local.site_id, node.local.transformer_id, None)]
    for m in sorted(node.members(), key=lambda m: m.node_id):
        rows.append(_member_row(node, m.node_id, m.status.value, m.incarnation, m.address, m.site_id,
                                m.transformer_id, round(now - m.changed_at, 3)))
    return {"node_id": node.node_id, "members": rows}


def capacity_body(
    node: Any, scope_text: str, headroom_w: Callable[[], Mapping[str, float]] | None = None
) -> dict[str, Any]:
    from meshagent.agent import parse_scope
    from meshagent.allocation.capacity import breakdown_json, transformer_aware

    try:
        scope = parse_scope(scope_text)
    except ValueError as exc:
        raise BadRequest("scope", str(exc)) from None
    cap = node.capacity(scope)
    body: dict[str, Any] = {
        "scope": {"kind": cap.scope.kind.name.lower(), "id": cap.scope.id},
        "discharge_available_w": cap.discharge_available_w,
        "energy_above_min_soc_wh": cap.energy_above_min_soc_wh,
        "nodes": cap.nodes,
        "nodes_with_faults": cap.nodes_with_faults,
        "oldest_updated_at_ms": cap.oldest_updated_at_ms,
        "answered_by": node.node_id,
    }
    if hasattr(node, "core"):  # a MeshNode (the API's test doubles have no membership core)
        # each transformer counted at most its headroom, with the breakdown (docs/allocation.md)
        body.update(breakdown_json(transformer_aware(node, cap.scope, headroom_w() if headroom_w else {})))
    return body


def transformers_body(node: Any) -> list[dict[str, Any]]:
    """Capacity per transformer in view (for the page)."""
    from protocol.state import Scope

    ids = {node.local.transformer_id} | {m.transformer_id for m in node.members()}
    out = []
    for tid in sorted(ids):
        cap = node.capacity(Scope.transformer(tid))
        out.append({"transformer_id": tid, "discharge_available_w": cap.discharge_available_w,
                    "energy_above_min_soc_wh": cap.energy_above_min_soc_wh, "nodes": cap.nodes,
                    "nodes_with_faults": cap.nodes_with_faults})
    return out


def faults_body(node: Any) -> dict[str, Any]:
    """Every fault code in the records in view, with its meaning (``meshagent.api.faults``)."""
    rows = []
    ids = [node.node_id, *sorted(m.node_id for m in node.members())]
    for node_id in ids:
        rec = node.record(node_id)
        if rec is None:
            continue
        for code in rec.faults:
            rows.append({"node_id": node_id, **describe(code), "record_age_s": _record_age(node, node_id)})
    return {"faults": rows}


def _jsonable(item: Any) -> Any:
    if attrs.has(type(item)):
        return attrs.asdict(item, value_serializer=lambda _i, _a, v: v.name.lower() if hasattr(v, "name") and not isinstance(v, str | int) else v)
    return item


def spikes_body(spikes: Callable[[], Sequence[Any]] | None) -> dict[str, Any]:
    """``spikes``: the allocation hook (``AgentView.spikes``), None before the agent has one."""
    if spikes is None:
        return {"allocation": False, "spikes": []}
    return {"allocation": True, "spikes": [_jsonable(s) for s in spikes()]}


def stats_body(node: Any, stats_sources: Mapping[str, Callable[[], Any]], api_stats: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"node": attrs.asdict(node.statistics())}
    body.update({name: _plain(fn()) for name, fn in sorted(stats_sources.items())})
    body["api"] = api_stats
    return body


def _plain(stats: Any) -> Any:
    return attrs.asdict(stats) if attrs.has(type(stats)) else stats
