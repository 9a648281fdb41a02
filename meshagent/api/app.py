"""The node's HTTP API and operator page: a starlette app over what the agent holds in memory.

Theory of operation
-------------------
``build_app(view)`` returns an ASGI app; ``meshagent.api.server.serve_api`` runs it with
hypercorn's trio worker inside the agent's nursery (one process, no thread). Every handler
reads the node's in-memory view and never blocks, so a request costs a few hundred
microseconds even with 1,000 members in view (``meshagent bench api``).

Each route declares who may call it, in one table (``ROUTES``):

- ``read``: a bearer token of the ``utility-reader`` or ``operator`` role;
- ``write``: the ``operator`` token;
- ``loopback``: no token, but only from a loopback address (``/healthz``, ``/readyz``,
  ``/metrics``: probes and a local scraper);
- ``public``: the page itself and ``/openapi.json``, which carry no data.

With ``[api] tls`` configured, a second listener speaks TLS and requires a client certificate
from the operator's X.509 CA (``api.client_ca``); its requests are the ``operator`` role
without a token (``client_cert_app``). Hypercorn does not hand the certificate to the app, so
the listener, not the certificate's fields, decides the role: keep that CA for operators.

A missing token is a 401, a wrong one a 401, a right one of the wrong role a 403, a probe from
afar a 403; each is JSON ``{"error": ..., "reason": ...}`` and counted by reason
(``meshagent_api_denied_total``). A bad request is a 400 naming the field
(``{"error": ..., "field": ...}``); an unexpected exception is a 500 JSON without traceback.

The allocation hook: ``AgentView.spikes`` is ``None`` until the agent has an allocation; then
it is a callable returning the recent spikes, newest first, as attrs instances or dicts
(plans, what each member applied, residual). ``GET /v1/spikes`` answers
``{"allocation": false, "spikes": []}`` before that.

``GET /v1/events`` is a server-sent-event stream: ``membership`` events as the node sees them,
and ``faults`` / ``spikes`` when their snapshot changes (checked every second). One task per
app fans the node's events out (``EventHub``), so a browser that goes away costs the node
nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshagent.api.auth import READERS, WRITERS, Tokens
from meshagent.api.faults import describe

log = logging.getLogger("meshagent.api")

SNAPSHOT_PERIOD_S = 1.0
KEEPALIVE_S = 15.0
MAX_BODY_BYTES = 16 * 1024


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@attrs.define
class AgentView:
    """What the API reads and acts on; the agent fills it in (see ``meshagent.agent``)."""

    node: Any  # MeshNode
    tokens: Tokens
    on_join: Callable[[list[tuple[str, int]]], None] = lambda seeds: None
    on_leave: Callable[[], None] = lambda: None
    auth: Any = None  # AuthListKeeper or None
    stats_sources: dict[str, Callable[[], Any]] = attrs.field(factory=dict)
    # The allocation hook (see the module doc): None until the agent has an allocation.
    spikes: Callable[[], Sequence[Any]] | None = None
    tls: Any = None  # ApiSection with tls set, or None: the client-certificate listener
    # transformer ratings known here ([allocation].transformers): transformer-aware capacity
    headroom_w: Callable[[], Mapping[str, float]] | None = None


CERT_ROLE_KEY = "meshagent.client_cert_role"


def client_cert_app(app: Any, role: str = "operator") -> Any:
    """The app behind the TLS listener that requires a client certificate from the operator's
    CA: the handshake has verified it, so the request carries ``role`` without a token."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, CERT_ROLE_KEY: role}
        await app(scope, receive, send)

    return wrapped


# --- the event hub ------------------------------------------------------------------------------


@attrs.define
class EventHub:
    """One subscription to the node, fanned out to every open event stream."""

    listeners: set[trio.MemorySendChannel[dict[str, Any]]] = attrs.field(factory=set)
    dropped: int = 0

    def listen(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](256)
        self.listeners.add(send)
        return receive

    def publish(self, event: dict[str, Any]) -> None:
        for ch in list(self.listeners):
            try:
                ch.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1  # a slow browser loses events; it refetches on the next one
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.listeners.discard(ch)

    async def run(self, view: AgentView, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        channel = view.node.subscribe()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._snapshots, view)
            async for ev in channel:
                member = getattr(ev, "member", None)
                node_id = member.node_id if member is not None else getattr(ev, "node_id", None)
                kind = type(ev).__name__
                if kind == "Delivered":
                    continue
                self.publish({"event": "membership", "data": {"kind": kind, "node_id": node_id}})
            nursery.cancel_scope.cancel()

    async def _snapshots(self, view: AgentView) -> None:
        last: dict[str, str] = {}
        while True:
            for name, body in (("faults", _faults(view)), ("spikes", _spikes(view))):
                text = json.dumps(body, sort_keys=True, default=str)
                if last.get(name) != text:
                    if name in last:
                        self.publish({"event": name, "data": body})
                    last[name] = text
            await trio.sleep(SNAPSHOT_PERIOD_S)


# --- what the routes read -------------------------------------------------------------------------


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


def _faults(view: AgentView) -> dict[str, Any]:
    node = view.node
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


def _spikes(view: AgentView) -> dict[str, Any]:
    if view.spikes is None:
        return {"allocation": False, "spikes": []}
    return {"allocation": True, "spikes": [_jsonable(s) for s in view.spikes()]}


def stats_body(view: AgentView, api_stats: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"node": attrs.asdict(view.node.statistics())}
    body.update({name: _plain(fn()) for name, fn in sorted(view.stats_sources.items())})
    body["api"] = api_stats
    return body


def _plain(stats: Any) -> Any:
    return attrs.asdict(stats) if attrs.has(type(stats)) else stats


# --- metrics ----------------------------------------------------------------------------------------

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _flatten(prefix: str, value: Any, out: list[tuple[str, dict[str, str], float]]) -> None:
    """Numbers become samples; a dict of numbers becomes one metric labelled by ``key``."""
    if attrs.has(type(value)):  # a record: one metric per field
        for field in attrs.fields(type(value)):
            _flatten(f"{prefix}_{field.name}", getattr(value, field.name), out)
        return
    if isinstance(value, bool):
        out.append((prefix, {}, float(value)))
    elif isinstance(value, int | float):
        if math.isfinite(value):
            out.append((prefix, {}, float(value)))
    elif isinstance(value, dict):
        numeric = [isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()]
        if value and all(numeric):  # e.g. drops by reason: one metric, labelled
            for key, sub in value.items():
                if math.isfinite(sub):
                    out.append((prefix, {"key": str(key)}, float(sub)))
        else:
            for key, sub in value.items():
                _flatten(f"{prefix}_{_NAME.sub('_', str(key))}", sub, out)


class _StatsCollector:
    """Renders every ``statistics()`` the agent holds, generically: counters other parts add
    appear in /metrics without this file changing."""

    def __init__(self, view: AgentView) -> None:
        self.view = view

    def collect(self) -> Any:
        node = self.view.node
        s = node.statistics()
        m = s.membership
        members = GaugeMetricFamily("meshagent_members", "Members in this node's view by state", labels=["status"])
        for status in ("alive", "suspect", "dead", "left"):
            members.add_metric([status], getattr(m, status))
        yield members
        yield GaugeMetricFamily("meshagent_health_score", "Local health (awareness) score; 0 is healthy", value=m.health_score)
        dropped = CounterMetricFamily("meshagent_dropped", "Datagrams dropped, by reason", labels=["reason"])
        for reason, count in sorted(s.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        sources: list[tuple[str, Any]] = [("node", s)]
        for name, fn in sorted(self.view.stats_sources.items()):
            try:
                sources.append((name, fn()))
            except Exception:  # a broken source must not take /metrics down
                log.exception("statistics source %s failed", name)
        families: dict[str, GaugeMetricFamily] = {}
        for name, stats in sources:
            samples: list[tuple[str, dict[str, str], float]] = []
            _flatten(f"meshagent_{_NAME.sub('_', name)}", stats, samples)
            for metric, labels, value in samples:
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = GaugeMetricFamily(metric, f"{name} statistics", labels=sorted(labels))
                fam.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


# --- the app ------------------------------------------------------------------------------------------


@attrs.frozen
class RouteSpec:
    method: str
    path: str
    access: str  # read, write, loopback, public
    summary: str
    params: tuple[tuple[str, str, bool], ...] = ()  # (name, in, required)


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/", "public", "The operator's web page (no data without a token)."),
    RouteSpec("GET", "/openapi.json", "public", "This description."),
    RouteSpec("GET", "/healthz", "loopback", "Liveness: the process serves requests."),
    RouteSpec("GET", "/readyz", "loopback", "Readiness: the mesh node is running."),
    RouteSpec("GET", "/metrics", "loopback", "Prometheus metrics (every statistics() of the agent)."),
    RouteSpec("GET", "/v1/members", "read", "This node's view of the mesh."),
    RouteSpec("GET", "/v1/capacity", "read", "Aggregate discharge capacity of live members in a scope.",
              (("scope", "query", False),)),
    RouteSpec("GET", "/v1/transformers", "read", "Capacity per transformer in view."),
    RouteSpec("GET", "/v1/spikes", "read", "Recent spikes, plans, applied shares and residual (when the allocation runs)."),
    RouteSpec("GET", "/v1/faults", "read", "Active fault codes in the mesh, with meaning and what clears them."),
    RouteSpec("GET", "/v1/stats", "read", "Every statistics() record of the agent, as JSON."),
    RouteSpec("GET", "/v1/authorize/{token}", "read", "Local authorization decision for an id token.",
              (("token", "path", True), ("type", "query", False))),
    RouteSpec("GET", "/v1/authorize", "read", "As /v1/authorize/{token}, with id_token= in the query.",
              (("id_token", "query", True), ("type", "query", False))),
    RouteSpec("GET", "/v1/events", "read", "Server-sent events: membership, faults, spikes."),
    RouteSpec("POST", "/v1/join", "write", "Join through seeds (remembered across restarts).", (("seeds", "query", True),)),
    RouteSpec("POST", "/v1/leave", "write", "Leave the mesh gracefully and stop the agent."),
    RouteSpec("POST", "/v1/revoke", "write", "Apply and spread a CA-signed revocation (hex).", (("record", "query", True),)),
    RouteSpec("POST", "/v1/revocations", "write", "Old name of /v1/revoke.", (("record", "query", True),)),
    RouteSpec("POST", "/v1/control/clear-faults", "write",
              "Ask the control loop to clear its latched faults; answers 202 with the request's id."),
    RouteSpec("GET", "/v1/control/clear-faults", "write",
              "The control loop's answer to a clear-faults request: each code cleared or refused, with the cause.",
              (("id", "query", True),)),
)


def openapi_document(routes: Sequence[RouteSpec] = ROUTES) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "responses": {"200": {"description": "OK"}}}
        if r.access in ("read", "write"):
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = {"description": "missing or wrong token", "content": {"application/json": {}}}
            op["responses"]["403"] = {"description": "token of a role that may not do this", "content": {"application/json": {}}}
            op["x-roles"] = sorted(READERS if r.access == "read" else WRITERS)
        elif r.access == "loopback":
            op["x-access"] = "loopback only, no token"
            op["responses"]["403"] = {"description": "asked from a non-loopback address"}
        if r.params:
            op["parameters"] = [{"name": n, "in": where, "required": req, "schema": {"type": "string"}} for n, where, req in r.params]
            op["responses"]["400"] = {"description": "bad request; JSON names the field", "content": {"application/json": {}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "meshagent node API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def build_app(view: AgentView, hub: EventHub | None = None) -> Starlette:
    hub = hub if hub is not None else EventHub()
    registry = CollectorRegistry(auto_describe=False)
    requests_total = Counter("meshagent_api_requests", "API requests by route and status", ["route", "status"], registry=registry)
    denied_total = Counter("meshagent_api_denied", "API requests refused by reason", ["reason"], registry=registry)
    registry.register(_StatsCollector(view))
    counts: dict[str, Any] = {"requests": 0, "denied": {}, "errors": 0}
    page = resources.files("meshagent.api").joinpath("static/index.html").read_text()
    openapi = openapi_document()

    def deny(status: int, reason: str, message: str) -> JSONResponse:
        denied_total.labels(reason).inc()
        counts["denied"][reason] = counts["denied"].get(reason, 0) + 1
        return JSONResponse({"error": message, "reason": reason}, status_code=status,
                            headers={"www-authenticate": "Bearer"} if status == 401 else None)

    def check(request: Request, access: str) -> JSONResponse | None:
        if access == "public":
            return None
        if access == "loopback":
            return None if _is_loopback(request) else deny(403, "not_loopback", "this path answers on loopback only")
        role = request.scope.get(CERT_ROLE_KEY)
        if role is None:
            header = request.headers.get("authorization", "")
            scheme, _, presented = header.partition(" ")
            if not header:
                return deny(401, "missing_token", "give a token: Authorization: Bearer TOKEN")
            if scheme.lower() != "bearer" or not presented.strip():
                return deny(401, "bad_scheme", "the Authorization header must be 'Bearer TOKEN'")
            role = view.tokens.role_of(presented.strip())
            if role is None:
                return deny(401, "wrong_token", "token not accepted")
        allowed = READERS if access == "read" else WRITERS
        if role not in allowed:
            return deny(403, "forbidden_role", f"role {role} may not do this (needs {' or '.join(sorted(allowed))})")
        return None

    async def params(request: Request) -> dict[str, str]:
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

    def endpoint(spec: RouteSpec, fn: Callable[[Request, dict[str, str]], Any]) -> Route:
        async def handle(request: Request) -> Response:
            counts["requests"] += 1
            refused = check(request, spec.access)
            if refused is not None:
                requests_total.labels(spec.path, str(refused.status_code)).inc()
                return refused
            try:
                result = fn(request, await params(request))
                if hasattr(result, "__await__"):
                    result = await result
            except BadRequest as exc:
                result = JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)
            except Exception:
                counts["errors"] += 1
                log.exception("API %s %s failed", spec.method, spec.path)
                result = JSONResponse({"error": "internal error (logged by the agent)"}, status_code=500)
            response = result if isinstance(result, Response) else JSONResponse(result[1], status_code=result[0])
            requests_total.labels(spec.path, str(response.status_code)).inc()
            return response

        return Route(spec.path, handle, methods=[spec.method])

    node = view.node

    def index(_r: Request, _p: dict[str, str]) -> Response:
        return HTMLResponse(page, headers={"cache-control": "no-store",
                                           "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    def openapi_json(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, openapi

    def healthz(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, {"ok": True, "node_id": node.node_id}

    def readyz(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        ready = node.membership is not None
        return (200 if ready else 503), {"ready": ready, "node_id": node.node_id}

    def metrics(_r: Request, _p: dict[str, str]) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    def members(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, members_body(node)

    def capacity(_r: Request, p: dict[str, str]) -> tuple[int, Any]:
        return 200, capacity_body(node, p.get("scope", "all"), view.headroom_w)

    def transformers(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, {"transformers": transformers_body(node), "answered_by": node.node_id}

    def spikes(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, _spikes(view)

    def faults(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, _faults(view)

    def stats(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, stats_body(view, {**counts, "events_dropped": hub.dropped})

    def authorize(token: str, token_type: str) -> tuple[int, Any]:
        from meshagent.csms.authsync import local_decision

        if view.auth is None:
            return 404, {"error": "no authorization list on this agent"}
        if not token:
            raise BadRequest("id_token", "give id_token=TOKEN (and type=, default ISO14443)")
        auth_list = view.auth.auth_list
        decision = local_decision(auth_list, token, token_type, node.endpoint.wall_clock_ms())
        return 200, {
            "id_token": token, "type": token_type, "accepted": decision.accepted,
            "status": decision.status, "source": decision.source,
            "list_version": auth_list.version, "answered_by": node.node_id,
        }

    def authorize_path(r: Request, p: dict[str, str]) -> tuple[int, Any]:
        return authorize(r.path_params.get("token", ""), p.get("type", "ISO14443"))

    def authorize_query(_r: Request, p: dict[str, str]) -> tuple[int, Any]:
        return authorize(p.get("id_token", ""), p.get("type", "ISO14443"))

    def join(_r: Request, p: dict[str, str]) -> tuple[int, Any]:
        from meshagent.mesh.config import parse_host_port
        from meshagent.transport.udp import format_address

        try:
            seeds = [parse_host_port(s) for s in p.get("seeds", "").split(",") if s]
        except ValueError as exc:
            raise BadRequest("seeds", str(exc)) from None
        if not seeds:
            raise BadRequest("seeds", "give seeds=HOST[:PORT][,HOST[:PORT]...]")
        view.on_join(seeds)
        return 202, {"joining": [format_address(s) for s in seeds]}

    def leave(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        view.on_leave()
        return 202, {"leaving": node.node_id}

    def revoke(_r: Request, p: dict[str, str]) -> tuple[int, Any]:
        try:
            record = bytes.fromhex(p.get("record", ""))
        except ValueError:
            raise BadRequest("record", "record must be hex") from None
        if not record:
            raise BadRequest("record", "give record=HEX (a revocation from `meshagent ca revoke`)")
        from protocol.errors import BadPacket

        try:
            revoked = node.revoke(record)
        except BadPacket as exc:
            raise BadRequest("record", f"not a usable revocation: {exc}") from None
        return 200, {"revoked": revoked}

    def events(_r: Request, _p: dict[str, str]) -> Response:
        channel = hub.listen()

        async def stream() -> AsyncIterator[str]:
            with channel:
                yield "retry: 2000\n\n"
                while True:
                    with trio.move_on_after(KEEPALIVE_S) as idle:
                        ev = await channel.receive()
                    if idle.cancelled_caught:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: {ev['event']}\ndata: {json.dumps(ev['data'], sort_keys=True, default=str)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    from meshagent.control.operator import clear_answer, clear_request

    def control_loop() -> Any:  # the control loop registers its statistics(); the method knows its loop
        return getattr(view.stats_sources.get("control"), "__self__", None)

    handlers: dict[tuple[str, str], Callable[[Request, dict[str, str]], Any]] = {
        ("GET", "/"): index, ("GET", "/openapi.json"): openapi_json, ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz, ("GET", "/metrics"): metrics, ("GET", "/v1/members"): members,
        ("GET", "/v1/capacity"): capacity, ("GET", "/v1/transformers"): transformers,
        ("GET", "/v1/spikes"): spikes, ("GET", "/v1/faults"): faults, ("GET", "/v1/stats"): stats,
        ("GET", "/v1/authorize/{token}"): authorize_path, ("GET", "/v1/authorize"): authorize_query,
        ("GET", "/v1/events"): events, ("POST", "/v1/join"): join, ("POST", "/v1/leave"): leave,
        ("POST", "/v1/revoke"): revoke, ("POST", "/v1/revocations"): revoke,
        ("POST", "/v1/control/clear-faults"): lambda _r, _p: clear_request(control_loop),
        ("GET", "/v1/control/clear-faults"): lambda _r, p: clear_answer(control_loop, p.get("id", "")),
    }
    routes = [endpoint(spec, handlers[(spec.method, spec.path)]) for spec in ROUTES]

    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        message = {404: "no such path", 405: "method not allowed"}.get(status, "bad request")
        return JSONResponse({"error": message}, status_code=status)

    async def server_error(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal error (logged by the agent)"}, status_code=500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 400: not_found, 500: server_error})
    app.state.hub = hub
    app.state.counts = counts
    return app


if __name__ == "__main__":  # python -m meshagent.api.app > docs/openapi.json
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
