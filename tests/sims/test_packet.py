"""Packet-level runs: signed agents measure the delivery latency the fleet's mesh then uses."""

from __future__ import annotations

import pytest

import sims
from sims.packet import measure_delivery
from sims.testpki import Pki


def test_virtual_delivery_is_measured_and_deterministic() -> None:
    a = measure_delivery("virtual", n=6, seed=3, trials=3)
    b = measure_delivery("virtual", n=6, seed=3, trials=3)
    assert a["samples"] == 5 * 3
    assert 0.0002 <= a["p50_s"] <= a["p99_s"] < 0.01  # the in-memory LAN's 0.2-1 ms one way
    assert a["samples_s"] == b["samples_s"]


@pytest.mark.slow
def test_real_udp_delivery_on_loopback() -> None:
    r = measure_delivery("real-network", n=4, seed=1, trials=3)
    assert r["samples"] == 3 * 3 and 0 < r["p50_s"] < 1.0


def test_the_report_says_where_the_mesh_latency_came_from() -> None:
    report = sims.run("node-deaths", nodes=6, duration_s=90, dt_s=0.25, mesh_latency="virtual",
                      baselines=("none", "mesh"))
    assert report["calibration"]["mesh_delivery"]["mode"] == "virtual"
    assert report["calibration"]["mesh_delivery"]["source"].startswith("measured in this run")
    assert report["baselines"]["mesh"]["limits_violated"] == 0


def test_the_test_pki_is_deterministic() -> None:
    assert Pki(seed=4).identity("a").certificate == Pki(seed=4).identity("a").certificate
