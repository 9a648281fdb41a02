"""A real ``meshagent run`` drives a charger that implements only the standard SunSpec models
(pymodbus server in this process), then is killed with SIGKILL: the charger must return to
no discharge by itself within ``[devices].setpoint_reversion``, through SunSpec 704's
reversion timer, with nobody writing to it. Also measures setpoint write -> power reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware.simulated import SimulatedSite, VehicleConfig
from hardware.simulated.serve import ChargerUnit, SimServer, site_units
from meshagent.transport.udp import port_free
from meshagent.trust import keystore

SCRIPT = Path(sys.executable).with_name("meshagent")
HOST = f"127.78.{os.getpid() % 250}.1"
REVERSION_S = 2


def wait_for(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_killed_agent_leaves_a_charger_that_reverts_to_no_discharge(tmp_path: Path) -> None:
    if not port_free(HOST):
        pytest.skip(f"port 7946 is taken on {HOST}")
    site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=40_000.0,
                                       vehicles=[VehicleConfig.of("nissan-leaf-40")])
    site.set_grid(frequency_hz=60.0)
    server = SimServer(site_units(site, standard=True))
    server.start_sync()
    unit = server.units[11]
    assert isinstance(unit, ChargerUnit)
    charger = site.chargers[0]
    ca = keystore.ca_init(tmp_path / "ca")
    keystore.enroll(ca, "field-1", tmp_path / "field-1", site_id="site-1", transformer_id="tx-1")
    cfg = tmp_path / "field-1" / "node.toml"
    cfg.write_text(f'[node]\nid = "field-1"\n\n[mesh]\npreset = "local"\nbind = "{HOST}:7946"\napi = "{HOST}:7947"\n\n'
                   f'[devices]\nmeter = "{server.url(1)}"\ncharger = "{server.url(11)}"\n'
                   f'setpoint_reversion = "{REVERSION_S}s"\n')
    agent = subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: unit.wset_rvrt_tms == REVERSION_S, 20), "the agent never armed the reversion timer"
        site.set_grid(frequency_hz=59.5)  # under-frequency: the droop asks for discharge
        assert wait_for(lambda: charger.snapshot().actual_power_w < -500, 15), charger.snapshot()
        assert unit.wset_ena == 1 and unit.wset_w > 500  # SunSpec sign: + generation
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        killed_at = time.monotonic()
        assert wait_for(lambda: charger.snapshot().actual_power_w == 0.0, REVERSION_S + 2)
        reverted_after_s = time.monotonic() - killed_at
        print(f"\nreversion after SIGKILL: {reverted_after_s:.2f} s (WSetRvrtTms {REVERSION_S} s, "
              f"renewed every 1 s)")
        assert REVERSION_S - 1.1 <= reverted_after_s <= REVERSION_S + 0.5
        assert unit.reversions == 1 and unit.wset_ena == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        server.stop_sync()
