"""``bench allocation``'s dispatch rows in quick mode: mesh over processes vs. central OCPP.

Structure and sanity, not speed: the machine that runs the tests is shared, and the speed
targets (p99 at most 20 ms at 100 agents, 4x and 10x the central dispatch) are the full run's,
recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import math

import pytest

from sims.bench.allocation import (
    CENTRAL_DEADLINE_S,
    DEADLINE_S,
    QUICK_SPIKES,
    STATION_PROCESSES,
    WORKERS,
    dispatch,
    latency_summary,
)


def test_a_missed_spike_makes_the_p99_unbounded():
    assert latency_summary([1.0, 2.0, 3.0], 3) == {"missed": 0, "p50": 2.0, "p99": 3.0, "max": 3.0}
    assert latency_summary([1.0, math.inf, 3.0], 3) == {"missed": 1, "p50": 3.0, "p99": None, "max": None}
    # a side that stopped part-way: the spikes it never ran are missed too
    assert latency_summary([1.0], 3) == {"missed": 2, "p50": None, "p99": None, "max": None}


@pytest.mark.slow
def test_the_same_spikes_split_by_the_mesh_over_processes_and_dispatched_by_a_csms():
    result = dispatch(10, QUICK_SPIKES, WORKERS, STATION_PROCESSES)
    mesh, central, speedup = result["mesh"], result["central"], result["speedup"]
    assert mesh["error"] is None and central["error"] is None, result
    assert mesh["nodes"] == central["nodes"] == speedup["nodes"] == 10
    assert mesh["trials"] == central["trials"] == QUICK_SPIKES
    assert mesh["processes"] == WORKERS >= 2 and central["station_processes"] == STATION_PROCESSES
    # every agent applied its share, and every station answered, within the deadline
    assert mesh["missed"] == 0 and central["missed"] == 0 and mesh["held"], result
    assert 0 < mesh["p50"] <= mesh["p99"] <= mesh["max"] < 1000 * DEADLINE_S, result
    assert 0 < central["p50"] <= central["p99"] <= central["max"] < 1000 * CENTRAL_DEADLINE_S, result
    assert speedup["ratio"] == round(central["p99"] / mesh["p99"], 1)
    # the shares summed to each deficit no later than the last member applied its own
    covered = mesh["covered_ms"]
    assert covered["missed"] == 0 and 0 < covered["p99"] <= mesh["max"] + 1e-6, result
