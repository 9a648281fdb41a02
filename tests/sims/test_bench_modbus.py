"""``bench modbus`` in quick mode, and its settle waits are bounded."""

from __future__ import annotations

import pytest

from meshagent.errors import MeshagentError
from sims.bench import modbus, run_benchmark
from tests.sims.conftest import within


@pytest.mark.slow
def test_modbus_bench_meets_its_targets():
    data = run_benchmark("modbus", quick=True).data
    assert data["reads"] == 300
    assert within(data["setpoint_settled_ms"], 100.0), data  # target: power there within 100 ms
    # a 10 ms poll wants the median read under a quarter of the period
    assert within(data["tcp_read_p50_ms"], 2.5), data
    assert data["tcp_read_p50_ms"] <= data["tcp_read_p99_ms"]
    assert data["poll_10ms_polls"] >= 100


async def test_a_setpoint_that_never_arrives_fails_after_the_bound(monkeypatch):
    monkeypatch.setattr(modbus, "SETTLE_TIMEOUT_S", 0.05)
    reads = 0

    async def stuck() -> float:
        nonlocal reads
        reads += 1
        return 4999.0 - 2.0  # 2 W off: more than the tolerance

    with pytest.raises(MeshagentError, match=r"setpoint still 4997\.0 W after 0\.05 s"):
        await modbus._until("setpoint", stuck, 4999.0)
    assert reads >= 2

    async def close() -> float:
        return 4999.4  # within 1 W: no exact float equality needed

    await modbus._until("setpoint", close, 4999.0)
