"""The packet level in virtual time: complete agents (mesh, control loop, allocation, devices).

Small and cheap: 6 agents, 2.5 simulated seconds of scenario after a 1.5 s settle.
"""

from __future__ import annotations

from typing import Any

import pytest

from sims.scenario import parse_scenario
from sims.virtual import run_packet

# A site of 6 chargers whose building sits under its 60 kW limit until 3 vehicles arrive at
# once (33 kW) 0.5 s into the run: without a response the meter would read about 73 kW.
SMALL = parse_scenario({
    "scenario": {"name": "small-surge", "duration_s": 2.5, "dt_s": 0.05, "nodes": 6, "seed": 5},
    "site": {"limit_kw": 60, "base_load_kw": 40, "charger_kw": 11, "transformers": 2, "transformer_kva": 60},
    "events": [{"kind": "surge", "at_s": 0.5, "count": 3, "window_s": 0}],
}, "test")


def _run() -> dict[str, Any]:
    return run_packet(SMALL, settle_s=1.5)


@pytest.fixture(scope="module")
def first() -> dict[str, Any]:
    return _run()


def _without_wall(report: dict[str, Any]) -> dict[str, Any]:
    mesh = {k: v for k, v in report["baselines"]["mesh"].items()
            if k not in ("wall_s", "join_wall_s", "sim_s_per_wall_s")}
    return {**{k: v for k, v in report.items() if k not in ("wall_s", "baselines")}, "mesh": mesh}


def test_the_spike_is_covered_by_the_detectors_plan_over_the_others(first: dict[str, Any]) -> None:
    assert first["level"] == "packet" and first["runner"].startswith("virtual: complete agents")
    mesh = first["baselines"]["mesh"]
    assert mesh["peak_uncontrolled_kw"] > mesh["site_limit_kw"] + 5  # the surge needs a response
    assert mesh["final_site_kw"] <= mesh["site_limit_kw"]  # the meter is back under the limit
    assert mesh["limits_violated"] == 0
    assert mesh["spike_to_response_s"]["episodes"] >= 1
    assert mesh["spike_to_response_s"]["covered"] == mesh["spike_to_response_s"]["episodes"]
    applied = mesh["spike_to_applied_ms"]["per_episode"][0]
    assert applied["members"] >= 5  # the detector planned over the others, who wrote their shares
    assert 0 < applied["max_ms"] < 200  # detection (20 ms), delivery, the members' next 10 ms cycle
    assert mesh["plans"] >= 1 and mesh["messages_per_node"] > 0 and mesh["bytes_per_node"] > 0


def test_a_run_repeats_exactly_for_its_seed(first: dict[str, Any]) -> None:
    assert _without_wall(_run()) == _without_wall(first)
