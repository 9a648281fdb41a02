"""The agent killed with SIGKILL mid-send and restarted; TLS (security profile 2) with our own CA."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshagent.csms.client import CsmsClient
from meshagent.csms.store import CsmsStore
from sims.csms_server import billing_report
from tests.meshagent.csms.helpers import (
    REPO,
    CsmsProcess,
    WallClock,
    assert_nothing_lost,
    fast_settings,
    kill_tree,
    wait_until,
)


def _agent(db: Path, url: str, phase: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.meshagent.csms.agent_proc", "--db", str(db), "--url", url, "--phase", phase,
         "--transactions", "4", "--updates", "8"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})


async def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return await trio.to_thread.run_sync(proc.stdout.readline)


async def test_sigkill_mid_send_then_restart_loses_and_doubles_nothing(tmp_path: Path) -> None:
    # The CSMS records the first event and never answers it: at the kill the agent is
    # provably in the middle of a send, with everything else recorded and unconfirmed.
    csms = CsmsProcess(tmp_path, "--fault-silent", "1")
    await csms.start()
    db = tmp_path / "agent.sqlite3"
    agent = _agent(db, csms.url, "generate")
    try:
        with trio.fail_after(40):
            recorded = 0
            while (line := await _read_line(agent)) != "generated\n":
                assert line.startswith("recorded "), line
                recorded += 1
            await wait_until(lambda: len(csms.events()) >= 1)
            kill_tree(agent)
            assert agent.returncode == -9
            assert agent.stdout is not None
            agent.stdout.close()
            with CsmsStore(db) as store:
                assert store.statistics().pending == recorded == 4 * 9 + 3
                assert len(store.open_transactions()) == 1
            agent = _agent(db, csms.url, "finish")
            assert await _read_line(agent) == "drained\n"
            agent.wait(10)
        with CsmsStore(db) as store:
            assert_nothing_lost(csms, store, offline=set())
        assert csms.duplicates() == 1  # the event in flight at the kill, sent again
        report = billing_report(csms.db)
        assert len(report.transactions) == 4
        for bill in report.transactions:
            assert (bill.energy_imported_wh, bill.energy_exported_wh, bill.ended) == (800, 320, True)
    finally:
        kill_tree(agent)
        if agent.stdout is not None:
            agent.stdout.close()
        csms.stop()


async def test_sigkill_while_draining_re_sends_a_bounded_number(tmp_path: Path) -> None:
    # The CSMS answers 25 events, then records the 26th and never answers: at the kill the
    # agent has 25 answered events, of which only those not yet deleted are sent again.
    from meshagent.csms.client import CONFIRM_EVERY

    csms = CsmsProcess(tmp_path, "--fault-silent-after", "25")
    await csms.start()
    db = tmp_path / "agent.sqlite3"
    agent = _agent(db, csms.url, "generate")
    try:
        with trio.fail_after(40):
            while (line := await _read_line(agent)) != "generated\n":
                assert line.startswith("recorded "), line
            await wait_until(lambda: len(csms.events()) >= 26)
            kill_tree(agent)
            assert agent.stdout is not None
            agent.stdout.close()
            agent = _agent(db, csms.url, "finish")
            assert await _read_line(agent) == "drained\n"
            agent.wait(10)
        with CsmsStore(db) as store:
            assert_nothing_lost(csms, store, offline=set())
        resent = csms.duplicates()
        print(f"events re-sent after SIGKILL while draining: {resent} (bound {CONFIRM_EVERY} + 1 in flight)")
        assert 1 <= resent <= CONFIRM_EVERY + 1  # was 26: the whole unconfirmed batch
        assert len(billing_report(csms.db).transactions) == 4
    finally:
        kill_tree(agent)
        if agent.stdout is not None:
            agent.stdout.close()
        csms.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca_and_server_cert(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name} test CA", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", f"{name}-server.key", "-out", f"{name}-server.csr", cwd=d)
    (d / f"{name}-ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}-server.pem", "-extfile", f"{name}-ext.cnf", cwd=d)
    return d / f"{name}-ca.pem", d / f"{name}-server.pem", d / f"{name}-server.key"


@pytest.mark.parametrize("case", ["ok", "unknown-ca", "wrong-password"])
async def test_tls_profile_2_with_server_certificate_validation(tmp_path: Path, case: str) -> None:
    ca, cert, key = _make_ca_and_server_cert(tmp_path, "good")
    trusted = ca
    if case == "unknown-ca":
        trusted, _, _ = _make_ca_and_server_cert(tmp_path, "other")
    csms = CsmsProcess(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--password", "s3cret")
    await csms.start()
    assert csms.scheme == "wss"
    try:
        with CsmsStore(tmp_path / "q.sqlite3") as store, trio.fail_after(30):
            client = CsmsClient(
                fast_settings(csms.url, ca_bundle=str(trusted),
                              password="s3cret" if case != "wrong-password" else "guess"),
                store, rng=random.Random(3), wall_clock_ms=WallClock())
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                if case == "ok":
                    await client.wait_online()
                tx = await client.start_transaction(evse_id=1, connector_id=1, energy_import_wh=0,
                                                    energy_export_wh=0, id_token="ALICE")
                await client.end_transaction(tx, energy_import_wh=42, energy_export_wh=7)
                if case == "ok":
                    await client.wait_drained()
                else:
                    await client.wait_statistics(lambda st: st.connection_failures >= 3)
                nursery.cancel_scope.cancel()
            if case == "ok":
                assert_nothing_lost(csms, store, offline=set())
                (bill,) = billing_report(csms.db).transactions
                assert (bill.energy_imported_wh, bill.energy_exported_wh) == (42, 7)
            else:
                assert client.statistics().connections == 0 and client.statistics().boots == 0
                assert csms.events() == [] and store.statistics().pending == 2
                assert all(e.payload["offline"] for e in store.pending())
    finally:
        csms.stop()

