"""The connector's OCPP life from its devices: the sans-IO logic, then a real ``meshagent run``
with ``[csms]`` and Modbus devices (a charger with only the standard SunSpec models, served
by pymodbus in this process) against the CSMS built on the ``ocpp`` package
(``sims/csms_server.py``): a vehicle arriving and leaving is a billed session there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hardware.simulated import SimulatedCharger, SimulatedSite, VehicleConfig
from hardware.simulated.serve import SimServer, site_units
from meshagent.csms.session import Kind, Observation, SessionLogic
from meshagent.transport.udp import port_free
from sims.csms_server import billing_report
from tests.meshagent.csms.helpers import CsmsProcess, agent_config, wait_until


def kinds(actions) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(a.kind.value, a.status or a.trigger or a.stopped_reason) for a in actions]


def obs(at: float, **kw: object) -> Observation:
    return Observation(at, True, **kw)  # type: ignore[arg-type]


def test_plug_in_updates_and_unplug() -> None:
    logic = SessionLogic(sampled_interval_s=10)
    assert kinds(logic.observe(obs(0))) == [("status", "Available")]
    acts = logic.observe(obs(1, connected=True, energy_import_wh=5))
    assert kinds(acts) == [("status", "Occupied"), ("start", "CablePluggedIn")]
    assert acts[1].energy_import_wh == 5 and acts[1].id_token is None
    assert logic.observe(obs(5, connected=True)) == []
    acts = logic.observe(obs(11, connected=True, energy_import_wh=5, energy_export_wh=700))
    assert kinds(acts) == [("update", "MeterValuePeriodic")] and acts[0].energy_export_wh == 700  # a discharge share
    acts = logic.observe(obs(12, connected=False, energy_import_wh=5, energy_export_wh=710))
    assert [(a.kind, a.stopped_reason, a.trigger) for a in acts] == [
        (Kind.STATUS, "", ""), (Kind.END, "EVDisconnected", "EVDeparted")]
    assert acts[1].energy_export_wh == 710


def test_already_plugged_at_start_starts_a_transaction() -> None:
    logic = SessionLogic()
    assert kinds(logic.observe(obs(0, connected=True))) == [("status", "Occupied"), ("start", "CablePluggedIn")]


def test_fault_ends_it_and_reports_faulted() -> None:
    logic = SessionLogic()
    logic.observe(obs(0, connected=True))
    acts = logic.observe(obs(1, connected=True, faulted=True))
    assert [(a.kind, a.status or a.stopped_reason) for a in acts] == [(Kind.STATUS, "Faulted"), (Kind.END, "Other")]
    assert acts[1].trigger == "AbnormalCondition"


def test_devices_lost_is_unavailable_and_ends_it() -> None:
    logic = SessionLogic(lost_after_s=5)
    logic.observe(obs(0, connected=True))
    assert logic.observe(Observation(2, readable=False)) == []
    acts = logic.observe(Observation(6, readable=False))
    assert kinds(acts) == [("end", "EVCommunicationLost"), ("status", "Unavailable")]


def test_accepted_token_starts_with_it() -> None:
    logic = SessionLogic()
    logic.observe(obs(0))
    acts = logic.observe(obs(1, connected=True, vehicle_id="EVCC01"))
    assert kinds(acts) == [("status", "Occupied"), ("authorize", "")]
    acts = logic.authorized("EVCC01", "Accepted", 1.1)
    assert kinds(acts) == [("start", "Authorized")] and acts[0].id_token == "EVCC01"
    assert logic.energy_allowed


@pytest.mark.parametrize("status", ["Invalid", "Blocked", "Expired"])
def test_refused_token_stops_energy_and_ends_per_stop_tx_on_invalid_id(status: str) -> None:
    logic = SessionLogic()
    logic.observe(obs(0, connected=True, vehicle_id="EVCC01"))
    acts = logic.authorized("EVCC01", status, 0.1)
    assert [(a.kind, a.stopped_reason) for a in acts] == [(Kind.START, ""), (Kind.END, "DeAuthorized")]
    assert acts[1].trigger == "Deauthorized" and not logic.energy_allowed
    assert logic.observe(obs(5, connected=True, vehicle_id="EVCC01")) == []  # no new transaction while plugged
    logic.observe(obs(6))
    assert logic.energy_allowed  # the vehicle left


def test_refused_by_the_csms_during_the_transaction() -> None:
    logic = SessionLogic()
    logic.observe(obs(0, connected=True))
    acts = logic.deauthorize(None, 3)
    assert [(a.kind, a.stopped_reason) for a in acts] == [(Kind.END, "DeAuthorized")] and not logic.energy_allowed


SCRIPT = Path(sys.executable).with_name("meshagent")
HOST = f"127.77.{os.getpid() % 250}.1"


def _statuses(csms: CsmsProcess) -> list[str]:
    with csms.query() as db:
        return [s for (s,) in db.execute("SELECT status FROM statuses ORDER BY rowid")]


@attrs.define
class FieldAgent:
    """One charger's site served over Modbus TCP in this process, the development CSMS (its
    own process) and a real ``meshagent run`` (its own process) driving the charger for it."""

    site: SimulatedSite
    charger: SimulatedCharger
    csms: CsmsProcess


@pytest.fixture
async def field_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[FieldAgent]]]:
    """``await field_agent(node_id, station_id, standard=..., csms_args=..., csms_lines=...)``
    starts the rig: the grid at 60 Hz, no vehicle plugged in yet; ``standard``: the charger
    implements only the SunSpec Alliance's models (else ours, 64900, too). Stopped at the
    test's end, whatever happened."""
    running: list[Any] = []  # what to stop, in order of starting

    async def start(node_id: str, station_id: str, *, standard: bool, csms_args: Sequence[str] = (),
                    csms_lines: str = "") -> FieldAgent:
        if not port_free(HOST):
            pytest.skip(f"port 7946 is taken on {HOST}")
        site = SimulatedSite.with_chargers(time.monotonic, 1, base_load_w=40_000.0,
                                           vehicles=[VehicleConfig.of("nissan-leaf-40")])
        site.set_grid(frequency_hz=60.0)
        charger = site.chargers[0]
        charger.disconnect_vehicle()  # it arrives later
        csms = CsmsProcess(tmp_path, *csms_args)
        running.append(csms)
        await csms.start()
        server = SimServer(site_units(site, standard=standard))
        running.append(server)
        await server.start()
        cfg = agent_config(tmp_path, node_id, HOST, f'meter = "{server.url(1)}"\ncharger = "{server.url(11)}"',
                           csms.url, station_id=station_id, csms_lines=csms_lines,
                           # the droop's open-loop response at its 0.2 s minimum (5 s by default): a
                           # discharge shows within a second, so a second without one means something
                           extra='[control]\nresponse_time = "200ms"\n')
        running.append(await trio.lowlevel.open_process([str(SCRIPT), "run", "--config", str(cfg)],
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return FieldAgent(site, charger, csms)

    yield start
    for thing in reversed(running):
        if isinstance(thing, trio.Process):
            thing.kill()
            with trio.move_on_after(10):
                await thing.wait()
        elif isinstance(thing, SimServer):
            await thing.stop()
        else:
            thing.stop()


async def test_a_vehicle_arriving_and_leaving_is_a_billed_session(field_agent: Any) -> None:
    rig = await field_agent("field-2", "CP-FIELD", standard=True, csms_lines='sampled_data_interval = "0.5s"\n')
    site, charger, csms = rig.site, rig.charger, rig.csms

    def statuses() -> list[str]:
        return _statuses(csms)

    with trio.fail_after(30):
        await wait_until(lambda: statuses()[-1:] == ["Available"])
        charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40"))
        await wait_until(lambda: any(kind == "Started" for _, _, kind, _ in csms.events()))
        site.set_grid(frequency_hz=59.0)  # under-frequency: the agent discharges (a share of a spike)
        await wait_until(lambda: charger.snapshot().energy_out_wh > 2)  # 701 TotWhInj counts whole Wh here
        updates = sum(kind == "Updated" for _, _, kind, _ in csms.events())
        await wait_until(lambda: sum(kind == "Updated" for _, _, kind, _ in csms.events()) >= updates + 2)
        site.set_grid(frequency_hz=60.0)
        charger.disconnect_vehicle()
        await wait_until(lambda: any(kind == "Ended" for _, _, kind, _ in csms.events()))
        await wait_until(lambda: statuses()[-1:] == ["Available"])
    assert "Occupied" in statuses()
    report = billing_report(csms.db)
    assert len(report.transactions) == 1
    bill = report.transactions[0]
    assert bill.ended and bill.energy_exported_wh > 0  # the discharge shows in the meter values
    with csms.query() as db:
        (payload,) = db.execute("SELECT payload FROM transaction_events WHERE event_type = 'Ended'").fetchone()
    assert json.loads(payload)["transaction_info"]["stopped_reason"] == "EVDisconnected"
    done = await trio.run_process([str(SCRIPT), "csms", "billing", "--db", str(csms.db)], capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert done.returncode == 0 and bill.transaction_id in done.stdout.decode(), done.stderr


async def test_a_blocked_vehicle_gets_no_energy_and_its_transaction_ends_deauthorized(
    field_agent: Any, tmp_path: Path
) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"version": 1, "entries": [
        {"idToken": "EVBLOCKED", "type": "MacAddress", "status": "Blocked"}]}))
    # our charger image (64900) this time
    rig = await field_agent("field-3", "CP-FIELD3", standard=False, csms_args=("--auth-list", str(auth)))
    site, charger, csms = rig.site, rig.charger, rig.csms
    with trio.fail_after(30):
        await wait_until(lambda: _statuses(csms)[-1:] == ["Available"])
        site.set_grid(frequency_hz=59.5)  # the droop would discharge a vehicle that may transfer energy
        charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40", vehicle_id="EVBLOCKED"))
        await wait_until(lambda: any(kind == "Ended" for _, _, kind, _ in csms.events()))
    await trio.sleep(1.0)  # the control loop keeps running: it must still not move energy
    assert charger.snapshot().energy_out_wh == 0.0 and charger.snapshot().actual_power_w == 0.0
    with csms.query() as db:
        rows = db.execute("SELECT event_type, id_token, payload, trigger_reason FROM transaction_events"
                          " ORDER BY seq_no").fetchall()
    assert [r[0] for r in rows] == ["Started", "Ended"] and rows[0][1] == "EVBLOCKED"
    ended = json.loads(rows[1][2])
    assert ended["transaction_info"]["stopped_reason"] == "DeAuthorized"
    assert rows[1][3] == "Deauthorized"


async def test_simulated_vehicle_arriving_and_leaving_makes_a_session(tmp_path: Path) -> None:
    """sim:// devices (no Modbus) drive the same session logic through a real CsmsClient."""
    from hardware.connect import open_charger
    from hardware.simulated.site import SimWorld
    from meshagent.csms.client import CsmsClient
    from meshagent.csms.session import SessionDriver
    from meshagent.csms.store import CsmsStore
    from tests.meshagent.csms.helpers import fast_settings

    world = SimWorld(clock=trio.current_time)
    site = world.site("site-s")
    charger = site.chargers[0]
    charger.disconnect_vehicle()
    csms = CsmsProcess(tmp_path)
    await csms.start()
    try:
        with CsmsStore(tmp_path / "q.sqlite3") as store:
            client = CsmsClient(fast_settings(csms.url), store)
            async with open_charger("sim://site-s/charger-1", world=world) as ch, trio.open_nursery() as nursery:
                driver = SessionDriver(client, ch, SessionLogic(sampled_interval_s=0.2), poll_s=0.05)
                await nursery.start(client.run)
                await nursery.start(driver.run)
                with trio.fail_after(20):
                    await wait_until(lambda: _statuses(csms)[-1:] == ["Available"])
                    charger.connect_vehicle(VehicleConfig.of("nissan-leaf-40"))
                    await wait_until(lambda: any(kind == "Started" for _, _, kind, _ in csms.events()))
                    assert driver.transaction_id is not None
                    await driver.gate(ch.inverter).set_power(-5000.0)  # inside the transaction: allowed
                    await trio.sleep(0.5)
                    charger.disconnect_vehicle()
                    await wait_until(lambda: any(kind == "Ended" for _, _, kind, _ in csms.events()))
                    await client.wait_drained()
                nursery.cancel_scope.cancel()
        bill = billing_report(csms.db).transactions[0]
        assert bill.ended and bill.energy_exported_wh > 0
        assert _statuses(csms)[-2:] == ["Occupied", "Available"]
    finally:
        csms.stop()


async def test_client_reports_the_id_token_status_of_a_transaction_event_answer(tmp_path: Path) -> None:
    from meshagent.csms.client import CsmsClient
    from meshagent.csms.store import CsmsStore
    from tests.meshagent.csms.helpers import fast_settings

    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"version": 1, "entries": [{"idToken": "BOB", "status": "Expired"},
                                                          {"idToken": "ALICE", "status": "Accepted"}]}))
    csms = CsmsProcess(tmp_path, "--auth-list", str(auth))
    await csms.start()
    try:
        with CsmsStore(tmp_path / "q.sqlite3") as store:
            client = CsmsClient(fast_settings(csms.url), store)
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                txs = {token: await client.start_transaction(evse_id=1, connector_id=1, energy_import_wh=0,
                                                             energy_export_wh=0, id_token=token)
                       for token in ("BOB", "ALICE", "CAROL")}
                with trio.fail_after(20):
                    await client.wait_drained()
                nursery.cancel_scope.cancel()
        assert client.id_token_status(txs["BOB"]) == "Expired"
        assert client.id_token_status(txs["ALICE"]) == "Accepted"
        assert client.id_token_status(txs["CAROL"]) is None  # the CSMS gave no idTokenInfo
    finally:
        csms.stop()
