"""Authorization of a known token with the CSMS down, on a charger that got the list only from a peer.

Everything real: three ``meshagent run`` processes on their own 127.x addresses (port 7946),
the development CSMS as ``meshagent csms`` in its own process. Agent 0 is the only one with a
``[csms]`` section; it ends the transaction its previous (crashed) life left open, the CSMS
pushes it a list at boot, and the CSMS is then stopped. Agents 1 and 2 never
talk to a CSMS: they pull the list from a peer over the mesh, keep it in their own SQLite
file, and authorize from it (``meshagent authorize`` / ``GET /v1/authorize``).
Processes cannot share a virtual clock: the test polls the APIs with a deadline.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshagent.api.http import get_json
from meshagent.csms.client import ClientSettings, CsmsClient
from meshagent.csms.store import CsmsStore
from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, write_token
from tests.meshagent.csms.helpers import CsmsProcess

SCRIPT = Path(sys.executable).with_name("meshagent")
BASE = f"127.86.{os.getpid() % 250}"


def make_agent(tmp: Path, ca, i: int, seeds: list[str], csms_url: str | None) -> tuple[Path, str]:
    node_id = f"charger-{i}"
    host = f"{BASE}.{i + 1}"
    keystore.enroll(ca, node_id, tmp / node_id, site_id="site-1", transformer_id="tx-1")
    text = (f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\n'
            f'api = "{host}:7947"\nseeds = {json.dumps(seeds)}\n')
    if csms_url is not None:
        text += (f'\n[csms]\nurl = "{csms_url}"\ncall_timeout = "2s"\nreconnect_min = "50ms"\n'
                 f'reconnect_max = "500ms"\n')
    cfg = tmp / node_id / "node.toml"
    cfg.write_text(text)
    write_token(tmp / node_id / "state", "operator", OPERATOR_TOKEN)  # the API asks for a token
    return cfg, host


def spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT)


async def ask(host: str, token: str) -> dict:
    try:
        status, body = await get_json(host, 7947, f"/v1/authorize?id_token={token}", timeout_s=3,
                                      token=OPERATOR_TOKEN)
    except (OSError, trio.TooSlowError):
        return {}
    return body if status == 200 else {}


async def wait_for(predicate, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not await predicate():  # noqa: ASYNC110 (polls other processes)
            await trio.sleep(0.1)


@pytest.mark.slow
async def test_a_charger_that_got_the_list_only_from_a_peer_authorizes_with_the_csms_down(tmp_path: Path, monkeypatch) -> None:
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    token_file.chmod(0o600)
    monkeypatch.setenv("MESHAGENT_TOKEN_FILE", str(token_file))
    hosts = [f"{BASE}.{i + 1}" for i in range(3)]
    if not all(port_free(h) for h in hosts):
        pytest.skip(f"port 7946 is taken on {BASE}.x")
    auth = {"version": 7, "entries": [
        {"idToken": "ALICE", "type": "ISO14443", "status": "Accepted"},
        {"idToken": "CAROL", "type": "ISO14443", "status": "Accepted", "expiry": "2099-01-01T00:00:00Z"},
        {"idToken": "MALLORY", "type": "ISO14443", "status": "Blocked"},
        {"idToken": "OLDCARD", "type": "ISO14443", "status": "Accepted", "expiry": "2025-01-01T00:00:00Z"},
    ]}
    (tmp_path / "auth.json").write_text(json.dumps(auth))
    csms = CsmsProcess(tmp_path, "--auth-list", str(tmp_path / "auth.json"), via_cli=True)
    await csms.start()
    ca = keystore.ca_init(tmp_path / "ca")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # charger 0 "crashed" in a previous life with a transaction open (recorded offline)
        keystore_dir = tmp_path / "charger-0" / "state"
        with CsmsStore(keystore_dir / "csms.sqlite3") as store:
            before = CsmsClient(ClientSettings(url=csms.url, station_id="charger-0"), store)
            tx = await before.start_transaction(evse_id=1, connector_id=1, id_token="ALICE",
                                                energy_import_wh=0, energy_export_wh=0)
            await before.update_transaction(tx, energy_import_wh=1200, energy_export_wh=300)
        for i in range(3):
            cfg, _host = make_agent(tmp_path, ca, i, [] if i == 0 else [f"{hosts[0]}:7946"],
                                    csms.url if i == 0 else None)
            procs.append(await trio.to_thread.run_sync(spawn, cfg, tmp_path / f"agent-{i}.log"))

        # agent 0 boots at the CSMS, which pushes list version 7
        async def zero_has_it() -> bool:
            return (await ask(hosts[0], "ALICE")).get("list_version") == 7

        await wait_for(zero_has_it, 20)

        # at start it ended the interrupted transaction: PowerLoss, with the last registers
        async def ended_at_csms() -> bool:
            return len(csms.events()) == 3

        await wait_for(ended_at_csms, 20)
        assert csms.events() == [(tx, 0, "Started", 1), (tx, 1, "Updated", 1), (tx, 2, "Ended", 1)]
        with csms.query() as db:  # as the ocpp package hands it over (snake_case)
            trigger, imported, exported, payload = db.execute(
                "SELECT trigger_reason, energy_import_wh, energy_export_wh, payload FROM transaction_events"
                " WHERE seq_no = 2").fetchone()
        stopped = json.loads(payload)["transaction_info"]["stopped_reason"]
        assert (trigger, stopped, imported, exported) == ("AbnormalCondition", "PowerLoss", 1200, 300)
        with csms.query() as db:
            stations = {row[0] for row in db.execute("SELECT station_id FROM boots")}
        assert stations == {"charger-0"}  # the others never talked to the CSMS
        csms.stop()

        # chargers 1 and 2 authorize from the list they pulled over the mesh
        async def others_have_it() -> bool:
            return all([(await ask(h, "ALICE")).get("list_version") == 7 for h in hosts[1:]])

        await wait_for(others_have_it, 20)
        for host in hosts[1:]:
            assert await ask(host, "ALICE") == {
                "id_token": "ALICE", "type": "ISO14443", "accepted": True, "status": "Accepted",
                "source": "local_list", "list_version": 7, "answered_by": f"charger-{hosts.index(host)}"}
            carol = await ask(host, "CAROL")
            assert (carol["accepted"], carol["status"]) == (True, "Accepted")
            blocked = await ask(host, "MALLORY")
            assert (blocked["accepted"], blocked["status"]) == (False, "Blocked")
            expired = await ask(host, "OLDCARD")
            assert (expired["accepted"], expired["status"]) == (False, "Expired")
            unknown = await ask(host, "BOB")
            assert (unknown["accepted"], unknown["status"], unknown["source"]) == (False, "Unknown", "unavailable")

        status, body = await get_json(hosts[2], 7947, "/v1/authorize", timeout_s=3, token=OPERATOR_TOKEN)
        assert status == 400 and "id_token" in body["error"]

        # the command-line face: exit 0 for a known token, 3 for a refused one
        ok = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [str(SCRIPT), "authorize", "ALICE", "--api", f"{hosts[2]}:7947"],
            capture_output=True, text=True, timeout=20))
        assert ok.returncode == 0 and "ALICE (ISO14443): accepted, Accepted (local list version 7 on charger-2)" in ok.stdout
        no = await trio.to_thread.run_sync(functools.partial(
            subprocess.run, [str(SCRIPT), "authorize", "MALLORY", "--api", f"{hosts[2]}:7947"],
            capture_output=True, text=True, timeout=20))
        assert no.returncode == 3 and "refused, Blocked" in no.stdout, no.stdout + no.stderr

        # durable on a charger that only ever heard of the list from its peers
        for p in procs:
            p.terminate()
        for p in procs:
            assert await trio.to_thread.run_sync(p.wait, 10) == 0
        with CsmsStore(tmp_path / "charger-2" / "state" / "csms.sqlite3") as store:
            kept = store.load_auth_list()
        assert kept.version == 7 and kept.lookup("ALICE", "ISO14443") is not None
    finally:
        csms.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
