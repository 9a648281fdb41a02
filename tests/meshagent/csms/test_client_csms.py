"""The trio client against the development CSMS in its own process, over real WebSockets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import trio

from meshagent.csms.client import CsmsClient
from meshagent.csms.store import CsmsStore
from sims.csms_server import billing_report
from tests.meshagent.csms.helpers import (
    CsmsProcess,
    WallClock,
    assert_nothing_lost,
    fast_settings,
    tokens,
    wait_until,
)


@pytest.fixture
def csms_dir(tmp_path: Path) -> Path:
    (tmp_path / "auth.json").write_text(json.dumps(tokens([("ALICE", "Accepted"), ("MALLORY", "Blocked")], 4)))
    return tmp_path


async def test_charge_and_discharge_billed_correctly(csms_dir: Path) -> None:
    csms = CsmsProcess(csms_dir, "--auth-list", str(csms_dir / "auth.json"), via_cli=True)
    await csms.start()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(30):
            client = CsmsClient(fast_settings(csms.url), store, rng=random.Random(1), wall_clock_ms=WallClock())
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await client.wait_online()
                tx = await client.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                    energy_import_wh=10_000, energy_export_wh=2_000)
                await client.update_transaction(tx, energy_import_wh=11_500, energy_export_wh=2_000,
                                                charging_state="Charging")
                await client.update_transaction(tx, energy_import_wh=11_500, energy_export_wh=2_700)
                await client.end_transaction(tx, energy_import_wh=11_600, energy_export_wh=2_750)
                tx2 = await client.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                     energy_import_wh=11_600, energy_export_wh=2_750)
                await client.end_transaction(tx2, energy_import_wh=11_700, energy_export_wh=3_750)
                await client.meter_values(1, energy_import_wh=11_700, energy_export_wh=3_750)
                client.set_status(1, 1, "Available")
                await client.wait_drained()
                nursery.cancel_scope.cancel()
            assert_nothing_lost(csms, store, offline=set())
            report = billing_report(csms.db)
            bills = {b.transaction_id: b for b in report.transactions}
            assert (bills[tx].energy_imported_wh, bills[tx].energy_exported_wh) == (1_600, 750)
            assert (bills[tx2].energy_imported_wh, bills[tx2].energy_exported_wh) == (100, 1_000)
            assert bills[tx].id_token == "ALICE" and bills[tx].ended
            (alice,) = report.tokens
            assert (alice.id_token, alice.transactions, alice.energy_imported_wh, alice.energy_exported_wh) == (
                "ALICE", 2, 1_700, 1_750)
            assert report.duplicates == 0
            # The CSMS pushed its list at boot: version 4 is now local and durable.
            assert client.auth_summary().version == 4
            assert store.load_auth_list().version == 4
            assert client.statistics().boots == 1
    finally:
        csms.stop()


async def _run_client(nursery: trio.Nursery, csms: CsmsProcess, store: CsmsStore, **kw: object) -> CsmsClient:
    wall = kw.pop("wall", None) or WallClock()
    client = CsmsClient(fast_settings(csms.url, **kw), store, rng=random.Random(2), wall_clock_ms=wall)
    await nursery.start(client.run)
    return client


async def test_long_outage_queued_offline_then_delivered(csms_dir: Path) -> None:
    csms = CsmsProcess(csms_dir)
    await csms.start()
    wall = WallClock()
    offline: set[tuple[str, int]] = set()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                client = await _run_client(nursery, csms, store, wall=wall)
                await client.wait_online()
                tx1 = await client.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                     energy_import_wh=0, energy_export_wh=0)
                await client.wait_drained()
                csms.stop()
                await client.wait_offline()
                # Three days without the CSMS: tx1 goes on and ends, tx2 starts, runs and ends,
                # tx3 starts; the clock the events carry moves by hours, reconnects keep failing.
                seq = await client.update_transaction(tx1, energy_import_wh=5_000, energy_export_wh=0)
                offline.add((tx1, seq))
                wall.advance_s(86_400)
                offline.add((tx1, await client.end_transaction(tx1, energy_import_wh=7_000, energy_export_wh=1_000)))
                tx2 = await client.start_transaction(evse_id=2, connector_id=1, id_token="ALICE",
                                                     energy_import_wh=100, energy_export_wh=100)
                offline.add((tx2, 0))
                for hour in range(1, 25):
                    wall.advance_s(3600)
                    offline.add((tx2, await client.update_transaction(
                        tx2, energy_import_wh=100 + 200 * hour, energy_export_wh=100 + 50 * hour)))
                offline.add((tx2, await client.end_transaction(tx2, energy_import_wh=5_000, energy_export_wh=1_300)))
                tx3 = await client.start_transaction(evse_id=1, connector_id=1, id_token="BOB",
                                                     energy_import_wh=7_000, energy_export_wh=1_000)
                offline.add((tx3, 0))
                await client.wait_statistics(lambda st: st.connection_failures >= 5)
                assert store.statistics().pending == len(offline)
                await csms.start()  # same port, same database
                await client.wait_online()
                # Back online: new events are not offline.
                await client.update_transaction(tx3, energy_import_wh=7_500, energy_export_wh=1_000)
                await client.end_transaction(tx3, energy_import_wh=8_000, energy_export_wh=3_000)
                await client.wait_drained()
                nursery.cancel_scope.cancel()
            assert_nothing_lost(csms, store, offline)
            bills = {b.transaction_id: b for b in billing_report(csms.db).transactions}
            assert (bills[tx1].energy_imported_wh, bills[tx1].energy_exported_wh) == (7_000, 1_000)
            assert (bills[tx2].energy_imported_wh, bills[tx2].energy_exported_wh) == (4_900, 1_200)
            assert (bills[tx3].energy_imported_wh, bills[tx3].energy_exported_wh) == (1_000, 2_000)
            assert bills[tx2].offline_events == 26 and bills[tx3].offline_events == 1
            assert csms.duplicates() == 0
    finally:
        csms.stop()


async def test_callerror_retried_then_dead_lettered_then_retried_from_the_cli(csms_dir: Path) -> None:
    from meshagent.cli.main import main as cli_main

    # CALLERROR for the first 3 TransactionEvents: the head event uses its 3 attempts and is
    # dead-lettered; the queue moves on; `csms-queue retry` sends it again.
    csms = CsmsProcess(csms_dir, "--fault-callerror", "3")
    await csms.start()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                client = await _run_client(nursery, csms, store, message_attempts=3)
                await client.wait_online()
                tx = await client.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                    energy_import_wh=0, energy_export_wh=0)
                await client.update_transaction(tx, energy_import_wh=300, energy_export_wh=0)
                await client.end_transaction(tx, energy_import_wh=300, energy_export_wh=120)
                await client.wait_drained()
                stats = client.statistics()
                assert (stats.failed_attempts, stats.dead_lettered) == (3, 1)
                (dead,) = store.dead_letters()
                assert (dead.transaction_id, dead.seq_no, dead.attempts) == (tx, 0, 3)
                assert "InternalError" in (dead.last_error or "")
                assert [e[1] for e in csms.events()] == [1, 2]  # the queue did not stall behind it
                assert cli_main(["csms-queue", "--db", str(store.path)]) == 0
                assert cli_main(["csms-queue", "--db", str(store.path), "retry"]) == 0
                await client.wait_statistics(lambda st: st.events_confirmed >= 3)  # the queue poll
                nursery.cancel_scope.cancel()
            assert store.dead_letters() == []
            assert_nothing_lost(csms, store, offline=set())
            (bill,) = billing_report(csms.db).transactions
            assert (bill.energy_imported_wh, bill.energy_exported_wh, bill.id_token) == (300, 120, "ALICE")
    finally:
        csms.stop()


@pytest.mark.parametrize("fault", ["--fault-silent", "--fault-close"])
async def test_lost_response_means_duplicate_delivery_billed_once(csms_dir: Path, fault: str) -> None:
    # The CSMS records the first two events but its answer never arrives (it stays silent, or
    # it drops the connection): the client times out or reconnects and sends them again.
    csms = CsmsProcess(csms_dir, fault, "2")
    await csms.start()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                client = await _run_client(nursery, csms, store, call_timeout_s=0.5, message_attempts=5)
                await client.wait_online()
                tx = await client.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                    energy_import_wh=50, energy_export_wh=10)
                await client.update_transaction(tx, energy_import_wh=150, energy_export_wh=10)
                await client.end_transaction(tx, energy_import_wh=150, energy_export_wh=60)
                await client.wait_drained()
                nursery.cancel_scope.cancel()
            assert client.statistics().connections >= 3
            assert csms.duplicates() == 2
            assert_nothing_lost(csms, store, offline=set())
            (bill,) = billing_report(csms.db).transactions
            assert (bill.energy_imported_wh, bill.energy_exported_wh) == (100, 50)
    finally:
        csms.stop()


async def test_authorize_from_the_local_list_with_the_csms_down(csms_dir: Path) -> None:
    from protocol.authlist import AuthListAssembler, LocalAuthList, chunks_for

    auth = tokens([("ALICE", "Accepted"), ("MALLORY", "Blocked")], 4)
    auth["entries"].append({"idToken": "OLDCARD", "type": "ISO14443", "status": "Accepted",
                            "expiry": "2025-01-01T00:00:00Z"})
    (csms_dir / "auth.json").write_text(json.dumps(auth))
    csms = CsmsProcess(csms_dir, "--auth-list", str(csms_dir / "auth.json"))
    await csms.start()
    try:
        with CsmsStore(csms_dir / "a.sqlite3") as store_a, CsmsStore(csms_dir / "b.sqlite3") as store_b, \
                trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                a = await _run_client(nursery, csms, store_a)
                await a.wait_online()
                await a.wait_statistics(lambda st: st.auth_list_version == 4)  # pushed after boot
                online = await a.authorize("BOB")  # not on the list: the CSMS is asked
                assert (online.accepted, online.source) == (False, "csms")
                csms.stop()
                await a.wait_offline()
                # Charger B never reached the CSMS: it gets A's list core to core (the mesh
                # carries these chunks in a later step) and stores it durably.
                b = CsmsClient(fast_settings("ws://127.0.0.1:9/none", station_id="station-2"), store_b,
                               wall_clock_ms=WallClock())
                assembler = AuthListAssembler(LocalAuthList())
                for chunk in chunks_for(a.auth_list, max_entries=1):
                    got = assembler.offer_untrusted(chunk)
                assert got is not None
                await b.install_auth_list(got)
                for client in (a, b):
                    assert await client.authorize("ALICE") == client_decision(True, "Accepted", "local_list")
                    assert await client.authorize("MALLORY") == client_decision(False, "Blocked", "local_list")
                    assert await client.authorize("OLDCARD") == client_decision(False, "Expired", "local_list")
                    assert await client.authorize("BOB") == client_decision(False, "Unknown", "unavailable")
                nursery.cancel_scope.cancel()
        with CsmsStore(csms_dir / "b.sqlite3") as reopened:
            assert reopened.load_auth_list().summary() == a.auth_summary()
    finally:
        csms.stop()


def client_decision(accepted: bool, status: str, source: str) -> object:
    from meshagent.csms.client import AuthDecision

    return AuthDecision(accepted, status, source)


async def test_calls_from_the_csms(csms_dir: Path) -> None:
    set_vars = {"setVariableData": [
        {"attributeValue": "7", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"attributeValue": "5", "component": {"name": "OCPPCommCtrlr"},
         "variable": {"name": "MessageAttempts", "instance": "TransactionEvent"}},
        {"attributeValue": "1", "component": {"name": "Toaster"}, "variable": {"name": "Crumbs"}},
    ]}
    diff = {"versionNumber": 5, "updateType": "Differential", "localAuthorizationList": [
        {"idToken": {"idToken": "BOB", "type": "ISO14443"}, "idTokenInfo": {"status": "Accepted"}},
        {"idToken": {"idToken": "MALLORY", "type": "ISO14443"}}]}
    csms = CsmsProcess(csms_dir, "--auth-list", str(csms_dir / "auth.json"),
                       "--call", "SetVariables=" + json.dumps(set_vars),
                       "--call", "SendLocalList=" + json.dumps(diff),
                       "--call", "GetLocalListVersion={}",
                       "--call", "ClearCache={}")
    await csms.start()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                client = await _run_client(nursery, csms, store)
                await wait_until(lambda: len(csms.calls()) >= 5)
                nursery.cancel_scope.cancel()
        calls = csms.calls()
        assert [(a, o) for a, o, _ in calls] == [
            ("SendLocalList", "result"), ("SetVariables", "result"), ("SendLocalList", "result"),
            ("GetLocalListVersion", "result"), ("ClearCache", "error")]
        statuses = [r["attribute_status"] for r in calls[1][2]["set_variable_result"]]
        assert statuses == ["Accepted", "Accepted", "UnknownComponent"]
        assert calls[2][2]["status"] == "Accepted" and calls[3][2]["version_number"] == 5
        assert calls[4][2]["code"] == "NotImplemented"
        stats = client.statistics()
        assert stats.heartbeat_interval_s == 7 and stats.not_implemented == 1
        assert client.auth_list.lookup("BOB", "ISO14443") is not None
        assert client.auth_list.lookup("MALLORY", "ISO14443") is None
    finally:
        csms.stop()


async def test_reset_from_the_csms_restarts_the_session(csms_dir: Path) -> None:
    csms = CsmsProcess(csms_dir, "--call", 'Reset={"type": "Immediate"}')
    await csms.start()
    try:
        with CsmsStore(csms_dir / "queue.sqlite3") as store, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                client = await _run_client(nursery, csms, store)
                await client.wait_statistics(lambda st: st.boots >= 2)  # the session restarts
                nursery.cancel_scope.cancel()
        assert [(a, o, r["status"]) for a, o, r in csms.calls()] == [("Reset", "result", "Accepted")]
        with csms.query() as db:
            reasons = [r for (r,) in db.execute("SELECT reason FROM boots ORDER BY rowid")]
        assert reasons == ["PowerUp", "RemoteReset"]
    finally:
        csms.stop()
