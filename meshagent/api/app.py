"""The node's HTTP API and operator page: a starlette app over what the agent holds in memory.

Theory of operation
-------------------
``build_app(view)`` returns an ASGI app; ``meshagent.api.server.serve_api`` runs it with
hypercorn's trio worker inside the agent's nursery (one process, no thread). Every handler
reads the node's in-memory view and never blocks, so a request costs a few hundred
microseconds even with 1,000 members in view (``meshagent bench api``).

The app is put together from one module per job:

- ``meshagent.api.routes``: the routes as one table (``ROUTES``: method, path, who may call
  it, summary, parameters) and the OpenAPI document rendered from it;
- ``meshagent.api.bodies``: what each route answers (and the parser of what a caller sends);
- ``meshagent.api.metrics``: ``/metrics``, every ``statistics()`` of the agent;
- this module: ``AgentView`` (what the API reads and acts on), the access check, the
  handlers bound to the table's rows, and the event hub.

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
and ``faults`` / ``spikes`` when their snapshot changes (checked every second while a stream is
open; with none, nothing is rendered). One task per
app fans the node's events out (``EventHub``), so a browser that goes away costs the node
nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshagent.api.auth import READERS, WRITERS, Tokens
from meshagent.api.bodies import (
    BadRequest,
    capacity_body,
    faults_body,
    members_body,
    request_params,
    spikes_body,
    stats_body,
    transformers_body,
)
from meshagent.api.metrics import ApiMetrics
from meshagent.api.routes import ROUTES, RouteSpec, openapi_document

log = logging.getLogger("meshagent.api")

SNAPSHOT_PERIOD_S = 1.0
KEEPALIVE_S = 15.0


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
            self.listeners = {ch for ch in self.listeners if ch.statistics().open_receive_channels}
            if not self.listeners:
                # nobody listens: render nothing (every member's faults as JSON each second was
                # 7-9 % of a member's CPU at 100 agents); a stream that opens later gets the
                # changes after its first snapshot, and GET /v1/faults, /v1/spikes for the state
                last.clear()
                await trio.sleep(SNAPSHOT_PERIOD_S)
                continue
            for name, body in (("faults", faults_body(view.node)), ("spikes", spikes_body(view.spikes))):
                text = json.dumps(body, sort_keys=True, default=str)
                if last.get(name) != text:
                    if name in last:
                        self.publish({"event": name, "data": body})
                    last[name] = text
            await trio.sleep(SNAPSHOT_PERIOD_S)


# --- the app ------------------------------------------------------------------------------------------


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def build_app(view: AgentView, hub: EventHub | None = None) -> Starlette:
    hub = hub if hub is not None else EventHub()
    metrics_ = ApiMetrics(view.node, view.stats_sources)
    counts: dict[str, Any] = {"requests": 0, "denied": {}, "errors": 0}
    page = resources.files("meshagent.api").joinpath("static/index.html").read_text()
    openapi = openapi_document()

    def deny(status: int, reason: str, message: str) -> JSONResponse:
        metrics_.denied_total.labels(reason).inc()
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

    def endpoint(spec: RouteSpec, fn: Callable[[Request, dict[str, str]], Any]) -> Route:
        async def handle(request: Request) -> Response:
            counts["requests"] += 1
            refused = check(request, spec.access)
            if refused is not None:
                metrics_.requests_total.labels(spec.path, str(refused.status_code)).inc()
                return refused
            try:
                result = fn(request, await request_params(request))
                if hasattr(result, "__await__"):
                    result = await result
            except BadRequest as exc:
                result = JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)
            except Exception:
                counts["errors"] += 1
                log.exception("API %s %s failed", spec.method, spec.path)
                result = JSONResponse({"error": "internal error (logged by the agent)"}, status_code=500)
            response = result if isinstance(result, Response) else JSONResponse(result[1], status_code=result[0])
            metrics_.requests_total.labels(spec.path, str(response.status_code)).inc()
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
        return Response(metrics_.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def members(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, members_body(node)

    def capacity(_r: Request, p: dict[str, str]) -> tuple[int, Any]:
        return 200, capacity_body(node, p.get("scope", "all"), view.headroom_w)

    def transformers(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, {"transformers": transformers_body(node), "answered_by": node.node_id}

    def spikes(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, spikes_body(view.spikes)

    def faults(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, faults_body(node)

    def stats(_r: Request, _p: dict[str, str]) -> tuple[int, Any]:
        return 200, stats_body(node, view.stats_sources, {**counts, "events_dropped": hub.dropped})

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
