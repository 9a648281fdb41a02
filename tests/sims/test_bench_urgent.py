"""The urgent-broadcast benchmark runs on real sockets and reports every member delivering."""

from __future__ import annotations

from sims.bench.urgent import _run


async def test_urgent_bench_small_run():
    result = await _run(5, 3)
    assert result["nodes"] == 5 and result["trials"] == 3
    assert 0 < result["all_delivered_p50_ms"] <= result["all_delivered_max_ms"] < 10_000
