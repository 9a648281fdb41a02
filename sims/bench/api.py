"""``meshagent bench api``: GET /v1/capacity on the real app and server, 1,000 members in view.

The app (starlette) is served by hypercorn's trio worker on loopback, as in the agent; the
node behind it is a stand-in holding 1,000 members' state records on 20 transformers: it sums
them with the mesh's own ``capacity_sum`` (what ``MeshNode.capacity`` does) and the route adds
the transformer-aware breakdown (``meshagent.allocation.capacity``) as for a real node, so the
figure is the API's cost plus the real work of the answer. The client runs in the same process (one trio loop: its own cost is
in the figure) over keep-alive HTTP/1.1 connections with the operator token.

- ``capacity_p99_ms``: one connection, requests one after another, the 99th percentile of
  the round trip over ``SAMPLES`` requests (target: at most 10 ms).
- ``requests_per_s``: ``CONNECTIONS`` connections at once, ``BURST`` requests in all.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import h11
import trio

from protocol.stats import percentile
from sims.bench import BenchResult, machine

MEMBERS = 1000
SAMPLES = 3000
CONNECTIONS = 8
BURST = 4000
TOKEN = "bench-operator-token"


@attrs.define
class _Records:
    """The node's records client: what ``MeshNode.records`` offers the capacity route."""

    held: list[Any]

    def records(self) -> list[Any]:
        return self.held


class _Core:
    """The membership core as the capacity route asks it: every member alive."""

    def is_live(self, node_id: str) -> bool:
        return True


@attrs.define
class _Node:
    """What the capacity route reads of a MeshNode, with 1,000 members' records: the plain
    sum (``capacity_sum``, what ``MeshNode.capacity`` does) and, through ``core`` and
    ``records``, the transformer-aware breakdown the route adds for a real node."""

    node_id: str
    records: _Records
    core: _Core = attrs.field(factory=_Core)

    def capacity(self, scope: Any = None) -> Any:
        from protocol.state import capacity_sum

        return capacity_sum(self.records.records(), lambda _node_id: True, scope)


def _records(n: int) -> list[Any]:
    from protocol.state import StateRecord

    return [StateRecord(node_id=f"charger-{i:04d}", incarnation=1, version=1, site_id=f"site-{i // 20}",
                        transformer_id=f"tx-{i // 50}", discharge_available_w=7000.0,
                        energy_above_min_soc_wh=15600.0, soc=0.6, thermal_derating=1.0, faults=(),
                        updated_at_ms=1_700_000_000_000)
            for i in range(n)]


class _Client:
    def __init__(self, stream: trio.SocketStream, host: str, port: int) -> None:
        self.stream, self.host, self.port = stream, host, port
        self.conn = h11.Connection(h11.CLIENT)
        self.reconnects = 0

    async def get(self, path: str) -> tuple[int, bytes]:
        req = h11.Request(method="GET", target=path, headers=[("host", self.host), ("content-length", "0"),
                                                                  ("authorization", f"Bearer {TOKEN}")])
        await self.stream.send_all(self.conn.send(req) + self.conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.MUST_CLOSE:  # hypercorn's keep_alive_max_requests
                    await self.stream.aclose()
                    self.stream = await trio.open_tcp_stream(self.host, self.port)
                    self.conn = h11.Connection(h11.CLIENT)
                    self.reconnects += 1
                else:
                    self.conn.start_next_cycle()
                return status, body
            elif isinstance(event, h11.ConnectionClosed):
                raise RuntimeError("server closed the connection")


async def _measure(samples: int, burst: int) -> dict[str, Any]:
    from meshagent.api.app import AgentView, build_app
    from meshagent.api.auth import Tokens
    from meshagent.api.server import serve_app

    node = _Node("bench-0", _Records(_records(MEMBERS)))
    # 20 transformers of 50 chargers (350 kW of offers each): half rated below their offers
    ratings = {f"tx-{k}": (250_000.0 if k % 2 else 500_000.0) for k in range(MEMBERS // 50)}
    app = build_app(AgentView(node, Tokens({"operator": TOKEN}), headroom_w=lambda: ratings))
    path = "/v1/capacity"  # the whole mesh: all 1,000 members counted, 20 transformers broken down
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_app, app, "127.0.0.1", 0)
        client = _Client(await trio.open_tcp_stream(host, port), host, port)
        status, body = await client.get(path)
        answer = json.loads(body)
        if status != 200 or answer["nodes"] != MEMBERS or len(answer["transformers"]) != MEMBERS // 50:
            raise RuntimeError(f"the capacity route did not answer for {MEMBERS} members: {status} {body[:200]!r}")
        for _ in range(50):  # warm up
            await client.get(path)
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await client.get(path)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        clients = [_Client(await trio.open_tcp_stream(host, port), host, port) for _ in range(CONNECTIONS)]

        async def worker(c: _Client, n: int) -> None:
            for _ in range(n):
                s, _b = await c.get(path)
                assert s == 200

        t0 = time.perf_counter()
        async with trio.open_nursery() as load:
            for c in clients:
                load.start_soon(worker, c, burst // CONNECTIONS)
        elapsed = time.perf_counter() - t0
        for c in [client, *clients]:
            await c.stream.aclose()
        nursery.cancel_scope.cancel()
    return {
        "capacity_p50_ms": round(percentile(times, 0.5), 3),  # nearest rank, as every benchmark
        "capacity_p99_ms": round(percentile(times, 0.99), 3),
        "capacity_max_ms": round(times[-1], 3),
        "requests_per_s": round((burst // CONNECTIONS) * CONNECTIONS / elapsed, 1),
    }


def run(quick: bool = False) -> BenchResult:
    samples, burst = (300, 400) if quick else (SAMPLES, BURST)
    figures = trio.run(_measure, samples, burst)
    data = {"members_in_view": MEMBERS, "samples": samples, "connections": CONNECTIONS, **figures,
            "target_capacity_p99_ms": 10.0, "machine": machine()}
    rows = [
        ("members in view", str(MEMBERS)),
        ("GET /v1/capacity p50", f"{figures['capacity_p50_ms']:.2f} ms"),
        ("GET /v1/capacity p99", f"{figures['capacity_p99_ms']:.2f} ms  (target <= 10 ms; {samples} samples)"),
        ("GET /v1/capacity max", f"{figures['capacity_max_ms']:.2f} ms"),
        ("requests/s", f"{figures['requests_per_s']:.0f}  ({CONNECTIONS} keep-alive connections)"),
    ]
    return BenchResult(name="api", rows=rows, data=data)
