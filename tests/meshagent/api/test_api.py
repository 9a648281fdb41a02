"""The node's API on hypercorn + starlette, served by a real agent (in process) on loopback TCP.

Authentication per role, loopback-only probes, JSON errors naming the field, the metrics
exposition, the event stream and the OpenAPI document checked against docs/openapi.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from meshagent.agent import run_agent
from meshagent.api.auth import ensure_token, read_token_file, token_path
from meshagent.api.http import get_json
from meshagent.api.routes import ROUTES, openapi_document
from meshagent.config import load_config
from meshagent.errors import MeshagentError
from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, READER_TOKEN, make_bundle

ROOT = Path(__file__).resolve().parents[3]
HOST = f"127.81.{os.getpid() % 250}.1"
HOST2 = f"127.81.{os.getpid() % 250}.2"


async def _raw(host: str, port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and b"event: membership" in reply:
                    break
    return reply


@pytest.fixture
def bundle(tmp_path):
    if not (port_free(HOST) and port_free(HOST, 7947) and port_free(HOST2) and port_free(HOST2, 7947)):
        pytest.skip(f"ports 7946/7947 are taken on {HOST} or {HOST2}")
    ca = keystore.ca_init(tmp_path / "ca")
    return make_bundle(tmp_path, ca, "api-1", HOST, [], devices=False)


async def test_roles_probes_errors_metrics_and_events(bundle):
    config = load_config(bundle)
    op, rd = OPERATOR_TOKEN, READER_TOKEN
    async with trio.open_nursery() as nursery:
        node = await nursery.start(run_agent, config)
        port = 7947
        # no token, wrong token, a reader writing: 401, 401, 403, all JSON and counted
        status, body = await get_json(HOST, port, "/v1/members")
        assert status == 401 and body["reason"] == "missing_token"
        status, body = await get_json(HOST, port, "/v1/members", token="nope")
        assert status == 401 and body["reason"] == "wrong_token"
        status, body = await get_json(HOST, port, "/v1/join?seeds=127.0.0.1:1", method="POST", token=rd)
        assert status == 403 and body["reason"] == "forbidden_role"
        # reads with either role
        status, body = await get_json(HOST, port, "/v1/members", token=rd)
        assert status == 200 and body["members"][0]["node_id"] == node.node_id == "api-1"
        status, body = await get_json(HOST, port, "/v1/capacity?scope=transformer:tx-1", token=op)
        assert status == 200 and body["scope"] == {"kind": "transformer", "id": "tx-1"} and body["answered_by"] == "api-1"
        # a bad request names its field
        status, body = await get_json(HOST, port, "/v1/capacity?scope=galaxy:1", token=rd)
        assert status == 400 and body["field"] == "scope"
        status, body = await get_json(HOST, port, "/v1/join?seeds=bad:host:x", method="POST", token=op)
        assert status == 400 and body["field"] == "seeds"
        status, body = await get_json(HOST, port, "/v1/revoke?record=zz", method="POST", token=op)
        assert status == 400 and body["field"] == "record"
        assert (await get_json(HOST, port, "/v1/nope", token=op))[0] == 404
        assert (await get_json(HOST, port, "/v1/members", method="POST", token=op))[0] == 405
        # the allocation hook: nothing yet
        assert await get_json(HOST, port, "/v1/spikes", token=rd) == (200, {"allocation": False, "spikes": []})
        assert await get_json(HOST, port, "/v1/faults", token=rd) == (200, {"faults": []})
        status, body = await get_json(HOST, port, "/v1/authorize/ALICE", token=rd)
        assert status == 200 and body["accepted"] is False and body["id_token"] == "ALICE"
        # probes and metrics: open on loopback, no token
        assert (await get_json(HOST, port, "/healthz"))[0] == 200
        assert await get_json(HOST, port, "/readyz") == (200, {"ready": True, "node_id": "api-1"})
        status, metrics = await get_json(HOST, port, "/metrics")
        assert status == 200
        assert 'meshagent_members{status="alive"} 0.0' in metrics
        assert 'meshagent_api_denied_total{reason="missing_token"} 1.0' in metrics
        assert 'meshagent_api_denied_total{reason="forbidden_role"} 1.0' in metrics
        assert "meshagent_authsync_" in metrics and "meshagent_queries_" in metrics  # generic sources
        status, stats = await get_json(HOST, port, "/v1/stats", token=op)
        assert stats["api"]["denied"] == {"missing_token": 1, "wrong_token": 1, "forbidden_role": 1}
        # garbage is a 400 and the server lives on
        reply = await _raw(HOST, port, b"NOT HTTP AT ALL\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
        # the event stream: a membership event when a member joins
        await _check_events(HOST, port, op, nursery, bundle)
        # the openapi document is served, public, and the checked-in copy is up to date
        status, doc = await get_json(HOST, port, "/openapi.json")
        assert status == 200 and doc == openapi_document()
        assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == doc, \
            "docs/openapi.json is stale: python -m meshagent.api.routes > docs/openapi.json"
        assert {(r.method.lower(), r.path) for r in ROUTES} == {(m, p) for p, ops in doc["paths"].items() for m in ops}
        # an operator write: leave stops the agent
        assert (await get_json(HOST, port, "/v1/leave", method="POST", token=op))[0] == 202
        nursery.cancel_scope.cancel()


async def _check_events(host, port, token, nursery, bundle) -> None:
    """A second agent joins; the first one's event stream says so."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode())
        reply = b""
        with trio.fail_after(5):
            while b"retry:" not in reply:
                reply += await stream.receive_some(65536)
        assert b"text/event-stream" in reply
        ca = keystore.ca_load(bundle.parent.parent / "ca")
        second = make_bundle(bundle.parent.parent, ca, "api-2", HOST2, [f"{HOST}:7946"], devices=False)
        await nursery.start(run_agent, load_config(second))
        with trio.fail_after(10):
            while b"event: membership" not in reply:
                reply += await stream.receive_some(65536)
        assert b'"node_id": "api-2"' in reply


def test_token_files(tmp_path):
    value, made = ensure_token(tmp_path, "operator")
    path = token_path(tmp_path, "operator")
    assert made and path.stat().st_mode & 0o777 == 0o600 and read_token_file(path) == value
    assert ensure_token(tmp_path, "operator") == (value, False)
    assert ensure_token(tmp_path, "operator", rotate=True)[0] != value
    path.chmod(0o644)
    with pytest.raises(MeshagentError, match="readable by others"):
        read_token_file(path)
    with pytest.raises(MeshagentError, match="role must be"):
        token_path(tmp_path, "admin")


def test_api_token_command_and_token_file(tmp_path, capsys):
    from meshagent.cli.main import main

    ca = keystore.ca_init(tmp_path / "ca")
    keystore.enroll(ca, "tok-1", tmp_path / "tok-1", site_id="s", transformer_id="t")
    cfg = tmp_path / "tok-1" / "node.toml"
    assert main(["api", "token", "--config", str(cfg), "--role", "utility-reader"]) == 0
    printed = capsys.readouterr().out.strip()
    path = tmp_path / "tok-1" / "state" / "api" / "utility-reader.token"
    assert path.stat().st_mode & 0o777 == 0o600 and read_token_file(path) == printed
    assert main(["api", "token", "--config", str(cfg), "--role", "utility-reader"]) == 0
    assert capsys.readouterr().out.strip() == printed  # the same token until --rotate
    assert main(["api", "token", "--config", str(cfg), "--role", "admin"]) == 2
    assert "--role" in capsys.readouterr().err
    # a token file others may read is refused in one line, before any request
    path.chmod(0o644)
    assert main(["members", "--token-file", str(path), "--api", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "readable by others" in err


async def test_spikes_hook_and_generic_statistics():
    """The allocation's hook and a statistics source the API has never heard of, on a stand-in node."""
    import attrs

    from meshagent.api.app import AgentView, build_app
    from meshagent.api.auth import Tokens
    from meshagent.api.server import serve_app
    from sims.bench.api import _Node, _Records, _records

    @attrs.frozen
    class SpikeSummary:  # what the allocation might keep
        spike_id: int
        deficit_w: float
        applied_w: dict[str, float]
        residual_w: float

    @attrs.frozen
    class NewStats:
        plans_sent: int
        drops: dict[str, int]

    spikes = [SpikeSummary(7, 12000.0, {"a": 7000.0, "b": 5000.0}, 0.0)]
    view = AgentView(_Node("stand-in", _Records(_records(10))), Tokens({"operator": OPERATOR_TOKEN}),
                     stats_sources={"allocation": lambda: NewStats(3, {"stale_plan": 2})})
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_app, build_app(view), "127.0.0.1", 0)
        assert await get_json(host, port, "/v1/spikes", token=OPERATOR_TOKEN) == (200, {"allocation": False, "spikes": []})
        view.spikes = lambda: spikes
        status, body = await get_json(host, port, "/v1/spikes", token=OPERATOR_TOKEN)
        assert status == 200 and body == {"allocation": True, "spikes": [
            {"spike_id": 7, "deficit_w": 12000.0, "applied_w": {"a": 7000.0, "b": 5000.0}, "residual_w": 0.0}]}
        status, body = await get_json(host, port, "/v1/capacity", token=OPERATOR_TOKEN)
        assert status == 200 and body["nodes"] == 10 and body["discharge_available_w"] == 70000.0
        nursery.cancel_scope.cancel()
    # /metrics renders the unknown source field by field, a dict of counts as one labelled metric
    view.node = _WithStats(view.node.node_id, view.node.records)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_app, build_app(view), "127.0.0.1", 0)
        status, metrics = await get_json(host, port, "/metrics")
        assert status == 200
        assert "meshagent_allocation_plans_sent 3.0" in metrics
        assert 'meshagent_allocation_drops{key="stale_plan"} 2.0' in metrics
        assert 'meshagent_dropped_total{reason="replay"} 4.0' in metrics
        assert 'meshagent_members{status="alive"} 9.0' in metrics
        nursery.cancel_scope.cancel()


def _stand_in_stats():
    import attrs

    @attrs.frozen
    class Membership:
        alive: int = 9
        suspect: int = 0
        dead: int = 1
        left: int = 0
        health_score: int = 0

    @attrs.frozen
    class Stats:
        membership: Membership
        dropped: dict[str, int]

    return Stats(Membership(), {"replay": 4})


def _with_stats_class():
    from sims.bench.api import _Node

    class WithStats(_Node):
        def statistics(self):
            return _stand_in_stats()

    return WithStats


_WithStats = _with_stats_class()
