"""``meshagent bench api``: the figures the issue names, as the last line with --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("meshagent")


def test_bench_api_quick_json():
    r = subprocess.run([str(SCRIPT), "bench", "api", "--quick", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["members_in_view"] == 1000
    assert 0 < data["capacity_p50_ms"] <= data["capacity_p99_ms"] <= data["capacity_max_ms"]
    assert data["requests_per_s"] > 0
    assert "GET /v1/capacity p99" in r.stdout
