"""A real ``meshagent run`` drives a charger that implements only the standard SunSpec models
(pymodbus server in this process), then is killed with SIGKILL: the charger must return to
no discharge by itself within ``[devices].setpoint_reversion``, through SunSpec 704's
reversion timer, with nobody writing to it. The rig is the one ``meshagent bench sunspec``
measures with (``sims.bench.sunspec.killed_agent_rig``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from meshagent.transport.udp import port_free
from sims.bench.sunspec import REVERSION_S, killed_agent_rig, wait_for

HOST = f"127.78.{os.getpid() % 250}.1"


def test_killed_agent_leaves_a_charger_that_reverts_to_no_discharge(tmp_path: Path) -> None:
    if not port_free(HOST):
        pytest.skip(f"port 7946 is taken on {HOST}")
    with killed_agent_rig(tmp_path, HOST, "field-1") as rig:
        unit, charger = rig.unit, rig.charger
        assert wait_for(lambda: unit.reversion.wset_rvrt_tms == REVERSION_S, 20), \
            "the agent never armed the reversion timer"
        rig.site.set_grid(frequency_hz=59.5)  # under-frequency: the droop asks for discharge
        assert wait_for(lambda: charger.snapshot().actual_power_w < -500, 15), charger.snapshot()
        assert unit.wset_ena == 1 and unit.wset_w > 500  # SunSpec sign: + generation
        killed_at = rig.kill()
        assert wait_for(lambda: charger.snapshot().actual_power_w == 0.0, REVERSION_S + 2)
        reverted_after_s = time.monotonic() - killed_at
        print(f"\nreversion after SIGKILL: {reverted_after_s:.2f} s (WSetRvrtTms {REVERSION_S} s, "
              f"renewed every 1 s)")
        assert REVERSION_S - 1.1 <= reverted_after_s <= REVERSION_S + 0.5
        assert unit.reversion.reversions == 1 and unit.wset_ena == 0
