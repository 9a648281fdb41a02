"""Vehicles arriving and leaving make billed sessions, through the real console scripts: the
emulator (``meshagent emulator --arrivals``), the agent (``meshagent run`` with ``[csms]``) and
the development CSMS (``meshagent csms``) in three processes, over real Modbus TCP and real
WebSockets; ``meshagent csms billing`` lists each completed visit with its energy. The
grid runs at 59 Hz so the droop discharges the vehicles and the sessions carry energy.

The same through the agent's own ``sim://`` world (``[devices].sim_arrivals``), no emulator.
Real clock: three processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from meshagent.transport.udp import port_free
from sims.csms_server import billing_report
from tests.meshagent.csms.helpers import CsmsProcess, agent_config, wait_until

SCRIPT = Path(sys.executable).with_name("meshagent")
HOST = f"127.76.{os.getpid() % 250}.201"
EMULATOR_PORT = 5020
CAR = "nissan-leaf-40"


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Callable[[str], BinaryIO]]:
    """Opens the processes' log files in ``tmp_path``; closed after the test (the processes
    are gone by then)."""
    with contextlib.ExitStack() as stack:
        yield lambda name: stack.enter_context((tmp_path / name).open("wb"))


def _node_config(tmp_path: Path, node_id: str, devices: str, csms: CsmsProcess) -> Path:
    return agent_config(tmp_path, node_id, HOST, devices, csms.url, csms_lines='sampled_data_interval = "1s"\n')


def _ended_then_another(csms: CsmsProcess) -> bool:
    """A visit billed with energy, and a later vehicle's session started."""
    report = billing_report(csms.db)
    ended = [i for i, t in enumerate(report.transactions) if t.ended and t.energy_exported_wh > 0]
    return bool(ended) and len(report.transactions) > ended[0] + 1


async def _billing(csms: CsmsProcess) -> str:
    done = await trio.run_process([str(SCRIPT), "csms", "billing", "--db", str(csms.db)], capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


async def test_emulated_vehicles_arriving_and_leaving_are_billed_sessions(tmp_path: Path,
                                                                        logs: Callable[[str], BinaryIO]) -> None:
    if not (port_free(HOST) and port_free(HOST, EMULATOR_PORT)):
        pytest.skip(f"port 7946 or {EMULATOR_PORT} is taken on {HOST}")
    auth = tmp_path / "auth.json"  # every visiting vehicle's EVCCID is known: each session bills its idToken
    auth.write_text(json.dumps({"version": 1, "entries": [
        {"idToken": f"EV{k:03d}-{CAR}", "type": "MacAddress", "status": "Accepted"} for k in range(1, 6)]}))
    csms = CsmsProcess(tmp_path, "--auth-list", str(auth), via_cli=True)
    await csms.start()
    emulator = await trio.lowlevel.open_process(
        [str(SCRIPT), "emulator", "--mode", "iso15118-20", "--listen", f"modbus+tcp://{HOST}:{EMULATOR_PORT}",
         "--model", CAR, "--frequency", "59Hz", "--arrivals", "8s/2s"],
        stdout=subprocess.PIPE, stderr=logs("emulator.log"))
    agent = None
    try:
        assert emulator.stdout is not None
        out = b""
        with trio.fail_after(30):
            while b"charger 1:" not in out:
                chunk = await emulator.stdout.receive_some(4096)
                assert chunk, f"emulator ended: {(tmp_path / 'emulator.log').read_text()[-2000:]}"
                out += chunk
        lines = out.decode().splitlines()
        meter = next(line.split()[-1] for line in lines if line.startswith("site meter:"))
        charger = next(line.split()[2] for line in lines if line.startswith("charger 1:"))
        cfg = _node_config(tmp_path, "emu-1", f'meter = "{meter}"\ncharger = "{charger}"', csms)
        agent = await trio.lowlevel.open_process([str(SCRIPT), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                                 stderr=logs("agent.log"))
        with trio.fail_after(60):
            await wait_until(lambda: _ended_then_another(csms))
        report = billing_report(csms.db)
        first = next(t for t in report.transactions if t.ended)
        with csms.query() as db:
            (payload,) = db.execute("SELECT payload FROM transaction_events WHERE transaction_id = ? AND "
                                    "event_type = 'Ended'", (first.transaction_id,)).fetchone()
        assert json.loads(payload)["transaction_info"]["stopped_reason"] == "EVDisconnected"
        assert first.id_token == f"EV001-{CAR}" and first.energy_exported_wh > 0
        later = report.transactions[report.transactions.index(first) + 1]
        assert later.id_token == f"EV002-{CAR}"  # another vehicle, its own session
        text = await _billing(csms)
        row = next(line for line in text.splitlines() if first.transaction_id in line)
        assert f"EV001-{CAR}"[:12] in row and row.endswith("yes")
        print(f"\nemulator visit billed: {first.transaction_id} {first.id_token} exported "
              f"{first.energy_exported_wh:.1f} Wh, imported {first.energy_imported_wh:.1f} Wh; next: {later.id_token}"
              f"\n`meshagent csms billing`:\n{text}")
    finally:
        for proc in (agent, emulator):
            if proc is not None:
                proc.kill()
                with trio.move_on_after(10):
                    await proc.wait()
        csms.stop()


async def test_sim_world_vehicles_arriving_and_leaving_are_billed_sessions(tmp_path: Path,
                                                                          logs: Callable[[str], BinaryIO]) -> None:
    if not port_free(HOST):
        pytest.skip(f"port 7946 is taken on {HOST}")
    csms = CsmsProcess(tmp_path, via_cli=True)
    await csms.start()
    cfg = _node_config(tmp_path, "sim-1", 'meter = "sim://site-s/meter"\ncharger = "sim://site-s/charger-1"\n'
                                          'sim_arrivals = "3s/1s"', csms)
    agent = await trio.lowlevel.open_process([str(SCRIPT), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                             stderr=logs("agent.log"))
    try:
        with trio.fail_after(60):
            await wait_until(lambda: any(t.ended for t in billing_report(csms.db).transactions)
                             and len(billing_report(csms.db).transactions) >= 2)
        report = billing_report(csms.db)
        first = next(t for t in report.transactions if t.ended)
        with csms.query() as db:  # ended by the vehicle leaving (not as a transaction of a previous life)
            (payload,) = db.execute("SELECT payload FROM transaction_events WHERE transaction_id = ? AND "
                                    "event_type = 'Ended'", (first.transaction_id,)).fetchone()
        assert json.loads(payload)["transaction_info"]["stopped_reason"] == "EVDisconnected"
        assert first.transaction_id in await _billing(csms)
        print(f"\nsim:// visit billed: {first.transaction_id} exported {first.energy_exported_wh:.1f} Wh, "
              f"imported {first.energy_imported_wh:.1f} Wh; {len(report.transactions)} sessions so far")
    finally:
        agent.kill()
        with trio.move_on_after(10):
            await agent.wait()
        csms.stop()
