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

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from protocol.stats import percentile
from sims.bench import BenchResult, machine

REVERSION_S = 2


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` every 2 ms (it reads state another thread moves) for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
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


@attrs.define(eq=False)
class KilledAgentRig:
    """A simulated site whose one charger implements only the standard SunSpec models, served
    by pymodbus in this process (its own thread), and a real ``meshagent run`` (its own
    process, config on disk, ``[devices].setpoint_reversion = REVERSION_S``) driving it.
    Used by this benchmark and by ``tests/hardware/test_agent_reversion.py``."""

    site: Any  # SimulatedSite, grid at 60 Hz: the agent's droop asks for nothing yet
    charger: Any  # its SimulatedCharger
    unit: Any  # its ChargerUnit (the register image the agent writes)
    server: Any  # SimServer
    agent: subprocess.Popen[bytes]

    def kill(self) -> float:
        """SIGKILL the agent; when it was dead (``time.monotonic``)."""
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(10)
        return time.monotonic()


@contextlib.contextmanager
def killed_agent_rig(directory: Path, host: str, node_id: str) -> Iterator[KilledAgentRig]:
    """Start the rig (files in ``directory``, the agent on ``host``:7946); on exit the agent
    is killed if still running and the server stopped."""
    from hardware.simulated import SimulatedSite, VehicleConfig
    from hardware.simulated.images import ChargerUnit
    from hardware.simulated.serve import SimServer, site_units
    from meshagent.trust import keystore

    site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=40_000.0,
                                       vehicles=[VehicleConfig.of("nissan-leaf-40")])
    site.set_grid(frequency_hz=60.0)
    server = SimServer(site_units(site, standard=True))
    server.start_sync()
    try:
        unit = server.units[11]
        assert isinstance(unit, ChargerUnit)
        ca = keystore.ca_init(directory / "ca")
        keystore.enroll(ca, node_id, directory / node_id, site_id="site-1", transformer_id="tx-1")
        cfg = directory / node_id / "node.toml"
        cfg.write_text(f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\n'
                       f'api = "{host}:7947"\n\n[devices]\nmeter = "{server.url(1)}"\ncharger = "{server.url(11)}"\n'
                       f'setpoint_reversion = "{REVERSION_S}s"\n')
        script = Path(sys.executable).with_name("meshagent")
        agent = subprocess.Popen([str(script), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            yield KilledAgentRig(site, site.chargers[0], unit, server, agent)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
    finally:
        server.stop_sync()


def _reversion_after_kill() -> float | None:
    host = f"127.76.{os.getpid() % 250}.1"
    with tempfile.TemporaryDirectory() as tmp, killed_agent_rig(Path(tmp), host, "bench-1") as rig:
        rig.site.set_grid(frequency_hz=59.5)
        if not wait_for(lambda: rig.charger.snapshot().actual_power_w < -500, 30):
            return None
        killed = rig.kill()
        if not wait_for(lambda: rig.charger.snapshot().actual_power_w == 0.0, REVERSION_S + 3):
            return None
        return time.monotonic() - killed


def run(quick: bool = False) -> BenchResult:
    samples = trio.run(_setpoints, 40 if quick else 400)
    reversion = _reversion_after_kill()
    data: dict[str, Any] = {
        "setpoint_to_power_p50_ms": round(percentile(samples, 0.5), 2),
        "setpoint_to_power_p99_ms": round(percentile(samples, 0.99), 2),
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
