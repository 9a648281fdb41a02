"""The API's routes as one table, and the OpenAPI document generated from it.

Each route declares who may call it (``access``):

- ``read``: a bearer token of the ``utility-reader`` or ``operator`` role;
- ``write``: the ``operator`` token;
- ``loopback``: no token, but only from a loopback address (``/healthz``, ``/readyz``,
  ``/metrics``: probes and a local scraper);
- ``public``: the page itself and ``/openapi.json``, which carry no data.

The app (``meshagent.api.app``) builds one handler per row and checks ``access`` before it;
``docs/openapi.json`` is this table rendered (``python -m meshagent.api.routes``), and a test
keeps the checked-in copy current.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from meshagent.api.auth import READERS, WRITERS


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


if __name__ == "__main__":  # python -m meshagent.api.routes > docs/openapi.json
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
