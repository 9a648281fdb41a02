"""The hardware commands through the real console script, in a subprocess, against a real
Modbus server in this process (and the emulator in another)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

from hardware.simulated.serve import SimServer, site_units
from tests.hardware.conftest import BASE_LOAD_W, make_site

MESHAGENT = str(Path(sys.executable).with_name("meshagent"))


async def run(*args: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process([MESHAGENT, *args], capture_stdout=True, capture_stderr=True, check=False,
                                      env={**os.environ, "PYTHONWARNINGS": "error"})


async def test_read_dumps_a_modbus_meter_and_charger() -> None:
    site = make_site()
    async with SimServer(site_units(site)) as server:
        done = await run("read", server.url(1), "--json")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert out["meter"]["active_power_w"] == BASE_LOAD_W
        assert out["unit"]["models"] == "1 64901 213"
        done = await run("read", server.url(11))
        assert done.returncode == 0, done.stderr
        text = done.stdout.decode()
        assert "[vehicle]" in text and "EVMaximumDischargePower = 7000 W" in text and "PresentSOC = " in text
        assert "discharge caps in force = none" in text


async def test_read_shows_the_vehicle_discharge_caps_in_force() -> None:
    from hardware.simulated import SimulatedSite, VehicleConfig

    # an F-150 Lightning on old firmware (50 % of its 19.2 kW charge) behind a charger whose
    # MAX_DISCHARGE_AMPS of 12 A at its 400 V battery allows 4800 W
    site = SimulatedSite.with_chargers(time.monotonic, 1, vehicles=[
        VehicleConfig.of("ford-f150-lightning-er", firmware="old", max_discharge_amps=12)])
    spec = site.chargers[0].snapshot()
    async with SimServer(site_units(site)) as server:
        done = await run("read", server.url(11), "--json")
        assert done.returncode == 0, done.stderr
        vehicle = json.loads(done.stdout.decode().strip().splitlines()[-1])["vehicle"]
    caps = {c["cap"]: c for c in vehicle["discharge_caps"]}
    assert caps["old_firmware"]["limit_w"] == 0.5 * spec.ev_charge_spec_w
    assert caps["MAX_DISCHARGE_AMPS"]["limit_w"] == round(12 * spec.ev_nominal_v, 1)
    binding = min(caps["old_firmware"]["limit_w"], caps["MAX_DISCHARGE_AMPS"]["limit_w"])
    assert vehicle["EVMaximumDischargePower"] == f"{binding:g} W"
    assert [c["cap"] for c in caps.values() if c["binding"]] == [
        "old_firmware" if binding == caps["old_firmware"]["limit_w"] else "MAX_DISCHARGE_AMPS"]
    assert "limits EVMaximumDischargePower" in vehicle["discharge caps in force"]


async def test_clear_faults_is_idempotent_and_refuses_with_a_reason() -> None:
    site = make_site()
    charger = site.chargers[0]
    async with SimServer(site_units(site)) as server:
        url = server.url(11)
        charger.open_enclosure()
        charger.close_enclosure()
        first = await run("clear-faults", "--device", url)
        second = await run("clear-faults", "--device", url)
        assert (first.returncode, second.returncode) == (0, 0), (first.stderr, second.stderr)
        assert "cleared tamper" in first.stdout.decode()
        assert "nothing to clear" in second.stdout.decode()
        charger.contactor_cycle_budget = 0
        charger.set_power(1000)
        charger.advance()
        refused = await run("clear-faults", "--device", url)
        assert refused.returncode == 1
        err = refused.stderr.decode()
        assert err.count("\n") == 1 and "contactor_welded" in err and "Traceback" not in err


async def test_bad_url_is_a_usage_error() -> None:
    done = await run("read", "modbus+tcp://127.0.0.1:5020/999")
    assert done.returncode == 2
    assert "unit id must be in 1..247" in done.stderr.decode()


async def test_test_discharge_passes_on_a_simulated_inverter() -> None:
    done = await run("test-discharge", "--rate", "5kW", "--duration", "0s", "--device", "sim://site-a/inverter")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "result:      PASS" in out and "transition:" in out


async def test_emulator_serves_vehicles_over_modbus() -> None:
    proc = await trio.lowlevel.open_process(
        [MESHAGENT, "emulator", "--mode", "iso15118-20", "--vehicles", "2", "--old-firmware",
         "--model", "nissan-leaf-40", "--model", "mitsubishi-outlander-phev",
         "--listen", "modbus+tcp://127.0.0.1:0", "--duration", "20s"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = b""
        with trio.fail_after(20):
            while b"charger 2:" not in lines or not lines.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "emulator exited"
                lines += chunk
        text = lines.decode()
        url = next(line.split()[2] for line in text.splitlines() if line.startswith("charger 2:"))
        done = await run("read", url, "--json")
    finally:
        proc.terminate()
        with trio.fail_after(10):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert out["vehicle"]["connected"] is True
    assert out["vehicle"]["vehicle_id"] == "EV002-mitsubishi-outlander-phev"
    # old firmware: discharge capped at 50 % of the Outlander's 7.4 kW charge power
    assert out["vehicle"]["parameters"]["ev_maximum_discharge_power_w"] == 3700.0
    assert out["vehicle"]["EVMaximumDischargePower"] == "3700 W"
    assert [c["cap"] for c in out["vehicle"]["discharge_caps"] if c["binding"]] == ["old_firmware"]
