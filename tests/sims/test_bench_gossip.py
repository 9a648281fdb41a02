"""``bench gossip`` in quick pieces: spread, detection and false positives in virtual time
(seeded, so no timing noise), and the real-UDP size search at small sizes."""

from __future__ import annotations

import pytest

from meshagent.mesh.stats import LATE_WAKEUP_FRACTION
from protocol.swim import SwimConfig
from sims.bench.gossip import detection, false_positives, spread_side_by_side
from sims.bench.gossip_realtime import run_realtime, sizes_to_try
from tests.sims.conftest import within


def test_spread_reports_ours_and_memberlists_rules_side_by_side():
    row = spread_side_by_side(100, seed=5)
    assert row["reached"] == 99 and row["memberlist_model_reached"] == 99
    # LAN preset: 3 peers every 200 ms reach 99.9% of 100 nodes well within a second
    assert 0.1 < row["p999_s"] < 1.0
    assert 0.1 < row["memberlist_model_s"] < 1.0
    # ours is no slower than memberlist's own rules on the same seed (computed, not quoted)
    assert row["p999_s"] <= row["memberlist_model_s"] * 1.05, row


def test_first_detection_is_near_swims_prediction():
    r = detection(100, trials=3)
    # SWIM predicts e/(e-1) = 1.58 periods to the detecting probe; ours adds the wait for the
    # first ping (about 0.9 periods): measured 1.9. Three trials: allow the spread of a few.
    assert r["first_detect_periods"] <= 2.5, r
    assert r["all_dead_p99_s"] < 20.0, r  # suspicion timeout 8 s + last-chance probes + spread


@pytest.mark.slow
def test_no_false_deaths_under_20_percent_loss():
    r = false_positives(100, 0.20, 0.0, 0.01)
    assert r["suspicions"] > 0  # the loss does bite
    assert r["count"] == 0, r


def test_the_size_search_grows_to_its_cap():
    assert sizes_to_try(50, 50, 300) == [50, 100, 150, 200, 250, 300]
    assert sizes_to_try(25, 25, 60) == [25, 50]
    with pytest.raises(ValueError, match="bad size search"):
        sizes_to_try(50, 0, 300)
    with pytest.raises(ValueError, match="join_interval_s"):
        run_realtime(50, 50, 50, window_s=1.0, join_interval_s=-0.1)


@pytest.mark.slow
def test_small_meshes_keep_their_probe_rounds_on_time_on_real_udp():
    r = run_realtime(20, 20, 20, window_s=2.0, converge_timeout_s=30.0)
    if r.get("realtime_skipped"):
        pytest.skip(r["realtime_skipped"])
    (trial,) = r["realtime_trials"]
    assert trial["converge_s"] is not None and trial["suspicions"] == 0, trial
    # on time = tick lateness p99 under 10 % of the probe timeout (5 ms); a loaded CI machine
    # delays every tick by its scheduler, so the noise allowance applies here
    limit_ms = 1000 * SwimConfig.lan().probe_timeout_s * LATE_WAKEUP_FRACTION
    assert within(trial["lateness_p99_ms"], limit_ms), trial
    assert r["realtime_largest_on_time_nodes"] in (0, 20)  # the figure is a size that held, or none
