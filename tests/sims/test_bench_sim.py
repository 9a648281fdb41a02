"""``meshagent bench sim --quick`` runs end to end and reports its keys."""

from __future__ import annotations

import json

import pytest

from meshagent.cli.main import main


@pytest.mark.slow
def test_bench_sim_quick(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHAGENT_EV2GYM_PYTHON", raising=False)
    assert main(["bench", "sim", "--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["rows"][0]["nodes"] == 20 and data["rows"][0]["sim_s_per_wall_s"] > 0
    assert data["rows"][0]["agent"].startswith("membership only") and data["rows"][0]["start"] == "join"
    assert data["join_rows"][0]["nodes"] == 20 and data["join_rows"][0]["join_wall_s"] > 0
    assert data["join_rows"][-1] == {"nodes": 1000, "join_wall_s": None, "skipped": "--quick"}
    complete = data["complete_agent_rows"][0]
    assert complete["nodes"] == 10 and complete["sim_s_per_wall_s"] > 0 and complete["agent"].startswith("complete")
    assert complete["limits_violated"] == 0 and complete["spike_to_applied_max_ms"] is not None
    assert data["fleet_1000_1min_sim_s_per_wall_s"] > 1000
    assert data["fleet_day"]["runs_sim_s_per_wall_s"] == [data["fleet_1000_1min_sim_s_per_wall_s"]]
    assert data["ev2gym"]["run"] is False and "not installed" in data["ev2gym"]["reason"]


def test_the_fleet_day_figure_is_the_median_of_its_runs() -> None:
    from sims.bench.sim import fleet_day_rate

    day = fleet_day_rate(3, 0.05)
    runs = day["runs_sim_s_per_wall_s"]
    assert day["runs"] == 3 and len(runs) == 3 and runs == sorted(runs)
    assert day["sim_s_per_wall_s"] == runs[1] and day["days"] == 0.05
