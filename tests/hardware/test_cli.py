"""The hardware commands through the real console script, in a subprocess, against a real
Modbus server in this process (and the emulator in another)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


# --- operator commands on the running agent ------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_clear_faults_without_an_agent_says_what_to_pass() -> None:
    done = await run("clear-faults", "--api", f"127.0.0.1:{_free_port()}")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "no running agent" in err and "Traceback" not in err
    assert "--config" in err and "--device" in err


async def test_test_discharge_without_a_device_does_not_test_a_simulator() -> None:
    done = await run("test-discharge", "--duration", "0s")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "pass --device URL" in err and "PASS" not in done.stdout.decode()


def _loop_on_a_simulated_site(tmp_path: Path, node_id: str) -> tuple[Path, Any, Any]:
    """A control loop (not started) on a simulated site at 60 Hz, and a config naming its
    state directory, as `meshagent clear-faults --config` reads it."""
    from meshagent.control.loop import ControlLoop, Devices
    from tests.meshagent.control.conftest import section

    state = tmp_path / "state"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nid = "{node_id}"\nstate_dir = "{state}"\n')
    site = make_site()
    site.set_grid(frequency_hz=60.0)
    loop = ControlLoop(section(cycle_budget="1s"), Devices.simulated(site), node_id=node_id, state_dir=state)
    return cfg, site, loop


async def test_clear_faults_on_a_running_loop_refuses_then_clears_tamper(tmp_path: Path) -> None:
    """A running control loop with ERR_TAMPER latched, the console script through its state
    directory: refused (exit 1) with the cause and what the code needs while the enclosure
    is open, nothing released later by itself; cleared once it is shut. (The API path is
    the same loop code: test_clear_faults_with_no_flag_reaches_a_real_running_agent.)"""
    from meshagent.control.codes import Code

    cfg, site, loop = _loop_on_a_simulated_site(tmp_path, "n1")
    ch = site.chargers[0]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            ch.open_enclosure()
            for _ in range(500):  # bounded poll of the loop's state
                if Code.ERR_TAMPER in loop.logic.latched:
                    break
                await trio.sleep(0.01)
            refused = await run("clear-faults", "--config", str(cfg))
            out = refused.stdout.decode()
            assert refused.returncode == 1, (out, refused.stderr)
            assert "ERR_TAMPER: refused, enclosure still open" in out and "needs enclosure shut" in out
            assert "300 s" not in out  # that is for ERR_GRID_SYNC_LOST, not for tamper
            assert "inverter: refused" in out
            await trio.sleep(0.5)
            assert Code.ERR_TAMPER in loop.logic.latched  # the refused clear released nothing later
            ch.close_enclosure()
            await trio.sleep(0.5)
            assert Code.ERR_TAMPER in loop.logic.latched  # shut is not cleared
            cleared = await run("clear-faults", "--config", str(cfg))
            assert cleared.returncode == 0, (cleared.stdout, cleared.stderr)
            assert "ERR_TAMPER: cleared" in cleared.stdout.decode()
            assert Code.ERR_TAMPER not in loop.logic.latched
            again = await run("clear-faults", "--config", str(cfg))
            assert again.returncode == 0 and "nothing latched" in again.stdout.decode()
            nursery.cancel_scope.cancel()


async def test_clear_faults_config_answers_refused_with_the_cause(tmp_path: Path) -> None:
    from meshagent.control.codes import Code

    cfg, site, loop = _loop_on_a_simulated_site(tmp_path, "c1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            site.freeze()
            for _ in range(500):  # bounded poll of the loop's state
                if Code.ERR_SENSOR_LOST in loop.logic.latched:
                    break
                await trio.sleep(0.01)
            refused = await run("clear-faults", "--config", str(cfg))
            assert refused.returncode == 1, (refused.stdout, refused.stderr)
            assert "ERR_SENSOR_LOST: refused, no fresh meter sample" in refused.stdout.decode()
            site.unfreeze()
            await trio.sleep(0.3)
            assert Code.ERR_SENSOR_LOST in loop.logic.latched
            cleared = await run("clear-faults", "--config", str(cfg))
            assert cleared.returncode == 0, (cleared.stdout, cleared.stderr)
            assert "ERR_SENSOR_LOST: cleared" in cleared.stdout.decode()
            nursery.cancel_scope.cancel()


async def test_emulator_serves_the_agents_nominal_frequency_and_refuses_unknown_units() -> None:
    """Following docs/simulation.md must not latch ERR_GRID_SYNC_LOST at once: the emulator's
    grid defaults to the agent's 60 Hz; --frequency picks another. A request for a unit it
    does not serve: Modbus exception 0x0B to the client, one line in its log, no traceback."""
    import struct

    async def start(*extra: str) -> tuple[Any, str]:
        proc = await trio.lowlevel.open_process(
            [MESHAGENT, "emulator", "--mode", "iso15118-20", "--listen", "modbus+tcp://127.0.0.1:0",
             "--duration", "20s", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        lines = b""
        with trio.fail_after(20):
            while b"charger 1:" not in lines or not lines.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "emulator exited"
                lines += chunk
        meter = next(x.split()[2] for x in lines.decode().splitlines() if x.startswith("site meter:"))
        return proc, meter

    async def stop(proc: Any) -> bytes:
        proc.terminate()
        with trio.fail_after(10):
            await proc.wait()
        err = b""
        if proc.stderr is not None:
            with trio.move_on_after(2):
                while chunk := await proc.stderr.receive_some(65536):
                    err += chunk
        for s in (proc.stdout, proc.stderr):
            if s is not None:
                await s.aclose()
        return err

    proc, meter = await start()
    try:
        done = await run("read", meter, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.decode().strip().splitlines()[-1])["meter"]["frequency_hz"] == 60.0
        host, port = meter.removeprefix("modbus+tcp://").split("/")[0].rsplit(":", 1)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(struct.pack(">HHHBBHH", 7, 0, 6, 99, 3, 40000, 2))  # unit 99
                reply = await stream.receive_some(100)
        assert reply[6:9] == bytes([99, 0x83, 0x0B])  # exception 0x0B for unit 99
    finally:
        err = (await stop(proc)).decode()
    unit_lines = [x for x in err.splitlines() if "unit 99" in x]
    assert len(unit_lines) == 1 and "0x0B" in unit_lines[0]
    assert "Traceback" not in err and "recv:" not in err

    proc, meter = await start("--frequency", "50Hz")
    try:
        done = await run("read", meter, "--json")
        assert json.loads(done.stdout.decode().strip().splitlines()[-1])["meter"]["frequency_hz"] == 50.0
    finally:
        await stop(proc)


def test_clear_faults_with_no_flag_reaches_a_real_running_agent(tmp_path: Path) -> None:
    """`meshagent run` (control loop on a simulated charger) and `meshagent clear-faults
    --api` through the real console scripts: the agent's own route answers."""
    import socket
    import time

    import pytest

    from meshagent.transport.udp import port_free
    from meshagent.trust import keystore
    from tests.meshagent.mesh.test_agent_processes import BASE, make_node

    host = f"{BASE}.1"
    if not port_free(host):
        pytest.skip(f"port 7946 is taken on {host}")
    cfg, _host, _id = make_node(tmp_path, keystore.ca_init(tmp_path / "ca"), 0, [])
    token = subprocess.run([MESHAGENT, "api", "token", "--config", str(cfg)], capture_output=True, text=True,
                           timeout=30, check=True).stdout.strip()
    token_file = tmp_path / "operator.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    agent = subprocess.Popen([MESHAGENT, "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30  # the agent listens on its API port first: a connect costs
        while time.monotonic() < deadline:  # nothing, each command start-up about a second
            try:
                socket.create_connection((host, 7947), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        done = None
        for _ in range(60):  # the agent's start, bounded
            done = subprocess.run([MESHAGENT, "clear-faults", "--api", f"{host}:7947", "--token-file",
                                   str(token_file)], capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                break
            time.sleep(0.5)
        assert done is not None and done.returncode == 0, (done.stdout, done.stderr) if done else None
        assert done.stdout.strip() == "control loop: nothing latched, nothing to clear"
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
