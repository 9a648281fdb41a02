"""The event hub renders fault and spike snapshots only while a stream listens (autojump clock)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import attrs
import trio

from meshagent.api.app import SNAPSHOT_PERIOD_S, AgentView, EventHub


@attrs.define
class _Record:
    faults: list[str]
    updated_at_ms: int = 0


@attrs.define
class _Node:
    """What the hub reads of a node: its subscription, members and records (counted)."""

    faults: list[str] = attrs.field(factory=list)
    reads: int = 0
    node_id: str = "n-1"
    endpoint: Any = attrs.field(factory=lambda: SimpleNamespace(wall_clock_ms=lambda: 0))
    _send: Any = None

    def subscribe(self) -> trio.MemoryReceiveChannel[object]:
        self._send, receive = trio.open_memory_channel[object](8)
        return receive

    def members(self) -> list[object]:
        return []

    def record(self, node_id: str) -> _Record:
        self.reads += 1
        return _Record(list(self.faults))



async def test_snapshots_are_rendered_only_while_a_stream_listens(autojump_clock):
    node = _Node()
    hub = EventHub()
    view = AgentView(node=node, tokens=None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run, view)
        await trio.sleep(10 * SNAPSHOT_PERIOD_S)
        assert node.reads == 0  # nobody listens: nothing rendered
        events = hub.listen()
        await trio.sleep(2.5 * SNAPSHOT_PERIOD_S)
        assert node.reads > 0
        node.faults.append("ERR_SENSOR_LOST")
        with trio.fail_after(2 * SNAPSHOT_PERIOD_S):
            event = await events.receive()
        assert event["event"] == "faults" and event["data"]["faults"][0]["node_id"] == "n-1"
        await events.aclose()  # the browser went away: rendering stops
        await trio.sleep(1.5 * SNAPSHOT_PERIOD_S)
        reads = node.reads
        await trio.sleep(10 * SNAPSHOT_PERIOD_S)
        assert node.reads == reads and not hub.listeners
        nursery.cancel_scope.cancel()
