"""Signed capacity queries: only utility-reader/operator certificates get an answer."""

from __future__ import annotations

import random

import trio

from meshagent.mesh.queries import serve_queries
from meshagent.transport.memory import open_memory_network
from meshagent.trust.endpoint import SecureEndpoint
from protocol.query import CapacityAnswer, CapacityQuery, TransformerCapacity
from protocol.state import Scope
from protocol.wire import Sealer
from tests.conftest import NOW_MS
from tests.meshagent.mesh.test_node import mesh, statuses, wait_until


def clock() -> int:
    return NOW_MS + int(trio.current_time() * 1000)


async def test_a_utility_reader_gets_a_signed_answer_others_get_nothing(pki, autojump_clock):
    async with open_memory_network(random.Random(12)) as net, mesh(pki, 3, net=net) as nodes:
        await wait_until(lambda: all(len(statuses(n)) == 2 for n in nodes), timeout_s=30)
        for i, n in enumerate(nodes):
            n.publish_record(discharge_available_w=7000.0 + i, energy_above_min_soc_wh=15600.0, soc=0.6)
        await wait_until(lambda: nodes[2].capacity().nodes == 3, timeout_s=10)
        stats = serve_queries(nodes[2])

        async def ask(ident) -> CapacityAnswer | None:
            ep = SecureEndpoint(net.endpoint(), Sealer(ident, 1), pki.trust(), wall_clock_ms=clock)
            await ep.send(nodes[2].address, CapacityQuery(query_id=42, scope=Scope.everyone()), attach_certificate=True)
            with trio.move_on_after(2):
                got = await ep.receive()
                assert got.envelope.sender_id == "n02"  # signed by the node that answered
                return got.envelope.message
            return None

        answer = await ask(pki.identity("grid-operator", roles=("utility-reader",)))
        assert answer == CapacityAnswer(
            42, Scope.everyone(), 21003.0, 46800.0, 3, 0, answer.oldest_updated_at_ms,
            21003.0, (TransformerCapacity("tx-1", -1.0, 21003.0, 21003.0),),  # no rating known here
        )
        assert answer.oldest_updated_at_ms > 0
        assert await ask(pki.identity("curious-charger")) is None  # no role: no answer
        assert (stats.answered, stats.refused) == (1, 1)
