"""The packet level in virtual time: complete agents (mesh, control loop, allocation, devices).

Small and cheap: 6 agents, 2.5 simulated seconds of scenario after a 1.5 s settle, on links
that lose and duplicate 5 % of datagrams.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshagent.transport.memory import LinkConditions
from sims.scenario import parse_scenario
from sims.virtual import run_packet

# A site of 6 chargers whose building sits under its 60 kW limit until 3 vehicles arrive at
# once (33 kW) 0.5 s into the run: without a response the meter would read about 73 kW.
SMALL = parse_scenario({
    "scenario": {"name": "small-surge", "duration_s": 2.5, "dt_s": 0.05, "nodes": 6, "seed": 5},
    "site": {"limit_kw": 60, "base_load_kw": 40, "charger_kw": 11, "transformers": 2, "transformer_kva": 60},
    "events": [{"kind": "surge", "at_s": 0.5, "count": 3, "window_s": 0}],
}, "test")


# the in-memory network's faults on every link: loss, duplicates, 0.2-1 ms one way
LOSSY = LinkConditions(loss=0.05, duplicate=0.05, delay_s=0.0002, jitter_s=0.0008)


def _run() -> dict[str, Any]:
    return run_packet(SMALL, settle_s=1.5, link=LOSSY)


@pytest.fixture(scope="module")
def first() -> dict[str, Any]:
    return _run()


def _without_wall(report: dict[str, Any]) -> dict[str, Any]:
    mesh = {k: v for k, v in report["baselines"]["mesh"].items()
            if k not in ("wall_s", "join_wall_s", "sim_s_per_wall_s", "sim_s_per_cpu_s")}
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
    assert mesh["network"]["lost"] > 0 and mesh["network"]["duplicated"] > 0  # the faults were on


def test_a_run_repeats_exactly_for_its_seed(first: dict[str, Any]) -> None:
    assert _without_wall(_run()) == _without_wall(first)


def test_cli_packet_runs_complete_agents_and_errs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshagent.cli.main import main

    toml = tmp_path / "small.toml"
    toml.write_text(
        '[scenario]\nname = "small"\nduration_s = 2\ndt_s = 0.05\nnodes = 4\nseed = 2\n'
        '[site]\nlimit_kw = 40\nbase_load_kw = 30\ntransformer_kva = 60\n'
        '[[events]]\nkind = "generator_trip"\nat_s = 0.2\nmw = 8\n'
    )
    # --warm: the agents start from one verified membership (the cold join is the other tests')
    assert main(["sim", str(toml), "--packet", "--warm", "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["level"] == "packet" and report["nodes"] == 4
    assert report["baselines"]["mesh"]["start"] == "warm"
    mesh = report["baselines"]["mesh"]
    # the trip drives the area frequency the site meter reports; the agents' droop answers it
    assert mesh["frequency_nadir_hz"] < 59.8 and mesh["rocof_hz_per_s"] < 0
    assert mesh["energy_discharged_per_vehicle_kwh"]["mean"] > 0 and mesh["limits_violated"] == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["level"] == "packet"
    # the plots the fleet level draws, from the series the packet runner sampled
    plot = Path(report["files"]["plots"])
    assert plot == tmp_path / "out" / "summary.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert main(["sim", str(toml), "--packet", "--nodes", "1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "meshagent: error: --nodes: the packet level needs at least 2 agents (a detector and a member)")
    assert main(["sim", str(toml), "--packet", "--virtual"]) == 1
    assert capsys.readouterr().err.strip().startswith("meshagent: error: --virtual with --packet: choose one of")
    assert main(["sim", str(toml), "--warm"]) == 1
    assert capsys.readouterr().err.strip() == (
        "meshagent: error: --warm: only with --packet (the other runners join for real or have no join)")
    assert main(["sim", str(toml), "--packet", "--dt", "0.1"]) == 1
    assert capsys.readouterr().err.strip().startswith("meshagent: error: --dt: --packet runs every agent")
