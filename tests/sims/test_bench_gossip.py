"""``bench gossip``'s spread row: ours and memberlist's rules computed on the same seed."""

from __future__ import annotations

from sims.bench.gossip import spread_side_by_side


def test_spread_reports_ours_and_memberlists_rules_side_by_side():
    row = spread_side_by_side(100, seed=5)
    assert row["reached"] == 99 and row["memberlist_model_reached"] == 99
    # LAN preset: 3 peers every 200 ms reach 99.9% of 100 nodes well within a second
    assert 0.1 < row["p999_s"] < 1.0
    assert 0.1 < row["memberlist_model_s"] < 1.0
