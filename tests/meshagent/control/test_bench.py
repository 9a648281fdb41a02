"""`meshagent bench control --quick --json`: the command runs and reports the issue's keys."""

from __future__ import annotations

import json

from meshagent.cli.main import main


def test_bench_control_quick(capsys):
    assert main(["bench", "control", "--quick", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    data = json.loads(out[-1])
    for key in ("cycle_p99_ms", "jitter_p99_ms", "detect_ms", "predict_lead_ms", "modbus_cycle_p99_ms"):
        assert key in data
    assert data["cycles"] == 300 and data["spikes"] >= 1
    assert 10.0 <= data["detect_ms"] < 200.0  # the 20 ms minimum duration, less the first wake-up's lateness
    # virtual time: deterministic
    assert data["predict_lead_ms"] == 620.0 and data["threshold_armed_at_s"] == 2.38
    assert out[0] == "meshagent bench control"
