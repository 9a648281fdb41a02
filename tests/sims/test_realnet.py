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
import time

import pytest
import trio

from meshagent.cli.main import main
from sims import netns
from sims.agentprocs import AREA_DT_S, charger_unit, refreshing_site
from sims.procs import Child, stop_all
from sims.realnet import (
    RunFailed,
    area_without_response,
    frequency_of,
    join_timeout_for,
    member_control,
    mesh_knobs,
    run_real,
    spike_of,
)
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
    report = run_real("workplace-surge", mode="real-network", nodes=6, workers=1, hold_s=3.0, out=tmp_path)
    assert "the detector in a process of its own and the other 5 in 1 worker processes" in report["runner"]
    assert report["level"] == "packet" and report["nodes"] == 6
    _check_mesh_answered(report)
    assert all(live == 6 for live in report["live_members_seen_at_end"].values())
    # why a mesh would have missed, read from the run: nobody faulted, every loop cycled, and
    # each process's share of a CPU and the site's Modbus load were measured
    assert report["faults_at_end"] == {}
    assert set(report["control_loops"]) == {"agent-000", "agent-001"}
    assert all(loop["cycles"] > 10 for loop in report["control_loops"].values())
    assert set(report["cpu_share"]) == {"site", "agents-0", "agents-1"}
    assert all(0 < share["join"] < 2 and 0 < share["spike"] < 2 for share in report["cpu_share"].values())
    assert report["modbus_requests_per_s"] > 50  # the detector alone polls the meter every 10 ms
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


def test_the_site_meter_refreshes_like_a_meter_not_per_read() -> None:
    now = [100.0]
    site = refreshing_site(lambda: now[0], "s", 10_000.0, refresh_s=0.005)
    site.add_charger()
    first = site.snapshot()
    now[0] += 0.004
    assert site.snapshot() is first  # within one refresh: the same registers
    now[0] += 0.002
    second = site.snapshot()
    assert second.taken_at_s == 100.006 and second.sample_count == first.sample_count + 1
    site.step_load(5_000.0)  # a step shows at the next read, not a refresh later
    assert site.snapshot().active_power_w == second.active_power_w + 5_000.0


def test_past_236_chargers_the_site_serves_them_from_a_second_modbus_server_and_trips_its_area() -> None:
    assert [charger_unit(i) for i in (0, 235, 236, 471, 472)] == [(0, 11), (0, 246), (1, 11), (1, 246), (2, 11)]
    site = Child("site", "sims.agentprocs", ["site", "127.0.0.1", "240", "10000.0", "60.0"])
    try:
        host, ports = site.expect("ready", time.monotonic() + 30)
        assert len(ports.split(",")) == 2

        async def read() -> tuple[float, float]:
            from hardware.connect import open_charger, open_site_meter

            meter = open_site_meter(f"modbus+tcp://{host}:{ports.split(',')[1]}/1")
            charger = open_charger(f"modbus+tcp://{host}:{ports.split(',')[1]}/14")  # charger 240
            try:
                return (await meter.read()).active_power_w, (await charger.inverter.status()).limits.max_discharge_w
            finally:
                await meter.aclose()
                await charger.aclose()

        load_w, discharge_w = trio.run(read)
        assert load_w >= 10_000.0 and discharge_w > 0  # the meter sees the site; the charger its vehicle
        # a generator trip: the area model drives the frequency the meter serves; with no agent
        # answering, its steps are those of the model with no response
        plan = spike_of(load_scenario("generator-trip").with_overrides(nodes=240))
        site.send("trip " + " ".join(repr(x) for x in (plan.trip_mw, *plan.area)))
        site.expect("tripped", time.monotonic() + 10)
        time.sleep(0.3)
        site.send("area")
        steps = [f for f, _late in json.loads(site.read_line(time.monotonic() + 10).split(" ", 1)[1])]
        assert len(steps) >= 5 and steps == sorted(steps, reverse=True) and steps[-1] < 60.0
        k = len(steps)
        assert frequency_of(60.0, steps) == area_without_response(plan, k * AREA_DT_S)
    finally:
        stop_all([site])


def test_join_timeout_and_member_settings_scale_with_n() -> None:
    assert join_timeout_for(6) == 66.0 and join_timeout_for(100) == 160.0 and join_timeout_for(300) == 360.0
    assert member_control(40) == {"period": "100ms", "timeout": "1s"} and mesh_knobs(40) == ""
    assert member_control(100)["period"] == "500ms" and "gossip_interval" in mesh_knobs(100)


def test_the_spike_of_each_scenario() -> None:
    ws = spike_of(load_scenario("workplace-surge").with_overrides(nodes=6))
    assert (ws.limit_w, ws.building_w, ws.step_w, ws.partition_groups) == (50_000.0, 18_000.0, 44_000.0, 1)
    assert ws.detectors() == [0]
    part = spike_of(load_scenario("partition").with_overrides(nodes=4))
    assert part.partition_groups == 2 and part.detectors() == [0, 2]
    assert spike_of(load_scenario("node-deaths").with_overrides(nodes=10)).kill_fraction == 0.2
    trip = spike_of(load_scenario("generator-trip").with_overrides(nodes=6))
    assert (trip.trip_mw, trip.step_w, trip.area[0]) == (12.0, 0.0, 50.0)
    with pytest.raises(ScenarioError, match="no surge or generator trip"):
        spike_of(load_scenario("csms-outage-day"))


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
    assert main(["sim", "csms-outage-day", "--real-network"]) == 1
    assert "no surge or generator trip" in capsys.readouterr().err
