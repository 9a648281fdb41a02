"""Sweeps: local processes by default, a Dask cluster when given one, the same results."""

from __future__ import annotations

import json

import pytest

from meshagent.cli.main import main
from sims.scenario import ScenarioError
from sims.sweep import parse_sets, sweep

CASE = {"nodes": 6, "duration_s": 60.0}


def _small(address: str | None = None) -> list[dict[str, object]]:
    return sweep("node-deaths", [1, 2], sets={"site.limit_kw": [400.0, 500.0], "scenario.dt_s": [0.5]}, address=address, workers=2, **CASE)  # type: ignore[arg-type]


@pytest.mark.slow
def test_local_processes_and_a_local_dask_cluster_agree() -> None:
    distributed = pytest.importorskip("distributed")
    local = _small()
    assert len(local) == 4 and {r["seed"] for r in local} == {1, 2}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        remote = _small(cluster.scheduler_address)
    assert remote == local


def test_bad_set_is_one_line() -> None:
    with pytest.raises(ScenarioError, match=r"expected section\.key=v1,v2"):
        parse_sets(("limit=3",))
    with pytest.raises(ScenarioError, match=r"--set site.nope: no such key"):
        sweep("node-deaths", [1], sets={"site.nope": [1.0]}, workers=1, **CASE)  # type: ignore[arg-type]


def test_cli_sweep_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "sweep", "node-deaths", "--seeds", "1", "--nodes", "6", "--duration", "30",
                 "--workers", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["cases"][0]["baselines"]["mesh"]["limits_violated"] == 0
