"""``bench wire`` in quick mode: envelope size exactly, round trip against the in-run floor."""

from __future__ import annotations

from sims.bench import run_benchmark
from tests.sims.conftest import within

REFERENCE_FLOOR_US = 72.1  # libsodium sign + verify on the quiet reference run (BENCHMARKS.md)
TARGET_ROUND_TRIP_US = 90.0  # on that machine


def test_wire_bench_meets_its_targets():
    data = run_benchmark("wire", quick=True).data
    assert data["messages"] == 2000
    assert data["overhead_bytes"] <= 100  # a size: no noise
    assert data["packet_bytes"] == data["body_bytes"] + data["overhead_bytes"]
    # the round-trip target scaled by how fast this machine's libsodium is right now
    target = TARGET_ROUND_TRIP_US * data["libsodium_floor_us"] / REFERENCE_FLOOR_US
    assert within(data["round_trip_us"], target, noise=1.5), data
