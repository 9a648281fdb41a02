"""``meshagent bench sunspec``: a charger with only the standard SunSpec models, driven as the
agent drives it.

Method: one simulated site behind a real pymodbus server in this process (its own thread),
the charger unit implementing only models 1, 701, 702, 704 and 713 (no 64900).

* ``setpoint_to_power_p50_ms`` / ``_p99_ms``: the production driver's ``set_power`` (one FC16
  write of WSetEna, WSetMod, WSet, WSetRvrt, then the reversion timer renewed) until the
  device's own 701 ``W`` reads within 1 % of the target; alternating +/-5 kW swings
  (the simulated power stage ramps a full swing in 80 ms). True percentiles over all swings.
* ``reversion_after_kill_s``: a real ``meshagent run`` (separate process, config on disk,
  ``[devices].setpoint_reversion = "2s"``) drives the charger into discharge (an
  under-frequency at the meter), then gets SIGKILL; the time until the charger's power is 0 W
  with nobody writing to it (SunSpec 704 reversion timer). Bounded: 30 s for the agent to
  start discharging, reversion time + 3 s for the fall.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from sims.bench import BenchResult, machine

REVERSION_S = 2


def _percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _wait(pred: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.002)
    return False


async def _setpoints(n: int) -> list[float]:
    from hardware.connect import open_charger
    from hardware.simulated import SimulatedSite, VehicleConfig
    from hardware.simulated.serve import SimServer, site_units

    site = SimulatedSite.with_chargers(time.monotonic, 1, vehicles=[VehicleConfig.of("nissan-leaf-40")])
    samples: list[float] = []
    async with (SimServer(site_units(site, standard=True)) as server,
                open_charger(server.url(11), clock=time.monotonic, timeout_s=1.0) as ch):
        await ch.inverter.status()
        with trio.fail_after(max(30.0, n * 0.5)):
            for i in range(n):
                target = 5000.0 if i % 2 else -5000.0
                t0 = time.perf_counter()
                applied = await ch.inverter.set_power(target)
                while abs((await ch.inverter.status()).actual_power_w - applied) > abs(applied) * 0.01:
                    pass
                samples.append((time.perf_counter() - t0) * 1e3)
            await ch.inverter.set_power(0.0)
    return samples


def _reversion_after_kill() -> float | None:
    from hardware.simulated import SimulatedSite, VehicleConfig
    from hardware.simulated.serve import SimServer, site_units
    from meshagent.trust import keystore

    host = f"127.76.{os.getpid() % 250}.1"
    site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=40_000.0,
                                       vehicles=[VehicleConfig.of("nissan-leaf-40")])
    site.set_grid(frequency_hz=60.0)
    charger = site.chargers[0]
    server = SimServer(site_units(site, standard=True))
    server.start_sync()
    script = Path(sys.executable).with_name("meshagent")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca = keystore.ca_init(d / "ca")
        keystore.enroll(ca, "bench-1", d / "bench-1", site_id="site-1", transformer_id="tx-1")
        cfg = d / "bench-1" / "node.toml"
        cfg.write_text(f'[node]\nid = "bench-1"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\n'
                       f'api = "{host}:7947"\n\n[devices]\nmeter = "{server.url(1)}"\ncharger = "{server.url(11)}"\n'
                       f'setpoint_reversion = "{REVERSION_S}s"\n')
        agent = subprocess.Popen([str(script), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            site.set_grid(frequency_hz=59.5)
            if not _wait(lambda: charger.snapshot().actual_power_w < -500, 30):
                return None
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            killed = time.monotonic()
            if not _wait(lambda: charger.snapshot().actual_power_w == 0.0, REVERSION_S + 3):
                return None
            return time.monotonic() - killed
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
            server.stop_sync()


def run(quick: bool = False) -> BenchResult:
    samples = trio.run(_setpoints, 40 if quick else 400)
    reversion = _reversion_after_kill()
    data: dict[str, Any] = {
        "setpoint_to_power_p50_ms": round(_percentile(samples, 0.5), 2),
        "setpoint_to_power_p99_ms": round(_percentile(samples, 0.99), 2),
        "setpoint_swings": len(samples),
        "reversion_after_kill_s": None if reversion is None else round(reversion, 2),
        "reversion_setting_s": REVERSION_S,
    }
    rows = [
        ("setpoint write -> power reached, p50 / p99 (standard SunSpec, TCP)",
         f"{data['setpoint_to_power_p50_ms']} / {data['setpoint_to_power_p99_ms']} ms over {len(samples)} swings"),
        ("agent killed (SIGKILL) while discharging -> charger at 0 W",
         "did not happen within bounds" if reversion is None else
         f"{data['reversion_after_kill_s']} s (setpoint_reversion {REVERSION_S} s)"),
    ]
    return BenchResult("sunspec", rows, {**data, "machine": machine()})
