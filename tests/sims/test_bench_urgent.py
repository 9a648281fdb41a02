"""``bench urgent`` on real sockets: a real message type, a true p99, and its target."""

from __future__ import annotations

import pytest

from protocol.messages import MESSAGE_TYPES
from protocol.stats import enough_for
from protocol.swim import SwimConfig
from sims.bench.urgent import UrgentProbe, _run
from tests.sims.conftest import within

GOSSIP_INTERVAL_S = SwimConfig.lan().gossip_interval_s
TARGET_P99_MS = 20.0  # spike to all shares applied, 100 nodes; urgent delivery is its first half


def test_the_probe_is_a_registered_message_outside_the_allocation_range():
    assert MESSAGE_TYPES[0x7F] is UrgentProbe
    assert not any(0x40 <= t <= 0x4F and cls is UrgentProbe for t, cls in MESSAGE_TYPES.items())


@pytest.mark.slow
async def test_urgent_bench_delivers_to_everyone_with_a_true_p99():
    trials = enough_for(0.99)  # 100: the p99 is the 99th sample, not the maximum
    result = await _run(10, trials)
    assert result["nodes"] == 10 and result["trials"] == trials
    assert result["undelivered"] == 0, result
    assert result["all_delivered_p50_ms"] <= result["all_delivered_p99_ms"] <= result["all_delivered_max_ms"]
    # members hear it straight from the origin, not from gossip (a relay can win a race now
    # and then on a loaded machine; a lost fast path makes this about 0)
    assert result["direct_fraction"] >= 0.9, result
    # 10 agents in one process: the median well inside the 100-node budget; the p99 inside
    # one gossip interval (200 ms), the floor of the slow path, however loaded the machine
    assert within(result["all_delivered_p50_ms"], TARGET_P99_MS), result
    assert result["all_delivered_p99_ms"] < 1000 * GOSSIP_INTERVAL_S, result
