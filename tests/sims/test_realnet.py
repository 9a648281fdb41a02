"""The real-network runners: a scenario's spike answered by real agents in separate processes.

Small and bounded: 6 agents in 2 worker processes over loopback UDP (and the central side's
CSMS and 6 OCPP stations); 3 agents in 3 network namespaces with an nftables partition and
random loss (root only). The figures' shape and
what they must be (the limit held, messages counted) are asserted, not their speed: the
machine running the suite is shared.
"""

from __future__ import annotations

import json
import os

import pytest

from meshagent.cli.main import main
from sims import netns
from sims.realnet import RunFailed, run_real, spike_of
from sims.scenario import ScenarioError, load_scenario

MEASURED = ("spike_to_response_s", "peak_site_kw", "site_limit_kw", "limits_violated", "messages_per_node",
            "bytes_per_node")


def _check_mesh_answered(report: dict) -> None:
    mesh, none = report["baselines"]["mesh"], report["baselines"]["none"]
    assert set(MEASURED) <= set(mesh) and set(MEASURED) <= set(none)
    limit = mesh["site_limit_kw"]
    # the spike was real: with nobody answering, the meter stays over the limit the whole hold
    assert none["peak_site_kw"] > limit and none["limits_violated"] == 1
    assert none["spike_to_response_s"]["episodes"] == 0
    # the agents answered it: under the limit within the hold, never over it for 2 s
    assert mesh["limits_violated"] == 0
    assert mesh["spike_to_response_s"]["episodes"] == 1
    assert 0 < mesh["spike_to_response_s"]["p50"] < report["spike"]["hold_s"]
    assert mesh["peak_discharge_kw"] > 0
    assert mesh["messages_per_node"] > 10 and mesh["bytes_per_node"] > 1000 * mesh["messages_per_node"] / 10


@pytest.mark.slow
def test_six_agents_in_two_processes_answer_the_surge_over_loopback(tmp_path) -> None:
    report = run_real("workplace-surge", mode="real-network", nodes=6, workers=2, hold_s=3.0, out=tmp_path)
    assert report["runner"].startswith("real-network: 6 agents in 2 worker processes")
    assert report["level"] == "packet" and report["nodes"] == 6
    _check_mesh_answered(report)
    assert all(live == 6 for live in report["live_members_seen_at_end"].values())
    # the central baseline beside it: its OCPP dispatch timed for real, every station answered
    central = report["baselines"]["central"]
    assert list(report["baselines"]) == ["none", "central", "mesh"]
    assert set(MEASURED) <= set(central) and central["source"].startswith("dispatch timed for real")
    assert all(0 < ms < 10_000 for ms in central["central_dispatch_ms"]["measured"])
    assert central["limits_violated"] == 0 and central["spike_to_response_s"]["episodes"] == 1
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["runner"] == report["runner"] and (tmp_path / "summary.png").stat().st_size > 0


@pytest.mark.slow
def test_a_partitioned_spike_in_three_namespaces_with_loss() -> None:
    why = netns.available()
    if why:
        pytest.skip(why)
    report = run_real("partition", mode="netns", nodes=3, loss_pct=10, hold_s=3.0)
    assert report["runner"].startswith("netns: 3 agents, one process each in its own network namespace")
    assert list(report["baselines"]) == ["none", "mesh"]  # no central side in the namespaces
    assert report["spike"]["detectors"] == ["agent-000", "agent-002"]  # one per part: {0, 1} and {2}
    _check_mesh_answered(report)
    # the nftables rules acted between the namespaces: the cut dropped packets across it, the
    # loss rule dropped mesh datagrams
    assert report["nftables_dropped"]["cut"] > 0 and report["nftables_dropped"]["loss"] > 0
    assert netns.NetnsLab.leftovers(f"ms{os.getpid()}x") == []


def test_a_failed_netns_run_leaves_no_namespace() -> None:
    why = netns.available()
    if why:
        pytest.skip(why)
    with pytest.raises(RunFailed, match="netns"):
        run_real("workplace-surge", mode="netns", nodes=3, join_timeout_s=0.01)
    assert netns.NetnsLab.leftovers(f"ms{os.getpid()}x") == []


def test_the_spike_of_each_scenario() -> None:
    ws = spike_of(load_scenario("workplace-surge").with_overrides(nodes=6))
    assert (ws.limit_w, ws.building_w, ws.step_w, ws.partition_groups) == (50_000.0, 18_000.0, 44_000.0, 1)
    assert ws.detectors() == [0]
    part = spike_of(load_scenario("partition").with_overrides(nodes=4))
    assert part.partition_groups == 2 and part.detectors() == [0, 2]
    assert spike_of(load_scenario("node-deaths").with_overrides(nodes=10)).kill_fraction == 0.2
    with pytest.raises(ScenarioError, match="no surge event"):
        spike_of(load_scenario("generator-trip"))


@pytest.mark.parametrize(("args", "flag"), [
    (["--real-network", "--netns"], "--real-network with --netns: choose one of"),
    (["--netns", "--virtual"], "--virtual with --netns: choose one of"),
    (["--workers", "3"], "--workers: only with --real-network"),
    (["--netns", "--workers", "3"], "--workers: only with --real-network"),
    (["--real-network", "--loss", "5"], "--loss: only with --netns"),
    (["--real-network", "--dt", "0.1"], "--dt: --real-network runs on the real clock"),
    (["--real-network", "--workers", "0"], "--workers: expected 1 to 64"),
])
def test_a_malformed_flag_combination_is_one_line(capsys, args: list[str], flag: str) -> None:
    assert main(["sim", "workplace-surge", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"meshagent: error: {flag}" in err


def test_a_scenario_the_real_runners_cannot_play_is_one_line(capsys) -> None:
    assert main(["sim", "partition", "--real-network", "--nodes", "4"]) == 1
    assert "partition is made with nftables between namespaces: run it with --netns" in capsys.readouterr().err
    assert main(["sim", "generator-trip", "--real-network"]) == 1
    assert "no surge event" in capsys.readouterr().err
