"""``meshagent bench ocpp``: billing throughput of one station to the local development CSMS.

``events_per_s``: TransactionEvents per second one station sustains end to end with durable
queueing: each event committed to SQLite (WAL, synchronous=FULL) before it counts, sent over
a real WebSocket on 127.0.0.1 to the development CSMS in its own process (the ``ocpp``
package's ChargePoint, schema validation on, its own SQLite commit), and deleted from the
queue when confirmed. Measured from the first record to the last confirmation, with
recording and sending running concurrently.

``drain_10k_s``: seconds to deliver 10,000 events queued while the CSMS was down, from the
moment the station is back online (BootNotification accepted) to an empty queue.

One call is outstanding at a time (OCPP), so both figures are round-trip bound; the
machine's fsync latency is reported beside them (``fsync_commit_ms``: one recorded event).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from meshagent.csms.client import ClientSettings, CsmsClient
from meshagent.csms.store import CsmsStore
from sims.bench import BenchResult, machine

REPO = Path(__file__).resolve().parents[2]


def _start_csms(directory: Path, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sims.csms_server", "--listen", f"127.0.0.1:{port}",
         "--db", str(directory / "csms.sqlite3")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"development CSMS did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _settings(port: int) -> ClientSettings:
    return ClientSettings(url=f"ws://127.0.0.1:{port}/ocpp", station_id="bench-1", call_timeout_s=30,
                          reconnect_min_s=0.01, reconnect_max_s=0.05, message_attempts=10,
                          message_attempt_interval_s=0.01)


async def _record(client: CsmsClient, events: int, per_transaction: int = 50) -> None:
    done = 0
    while done < events:
        tx = await client.start_transaction(evse_id=1, connector_id=1, id_token="BENCH",
                                            energy_import_wh=0, energy_export_wh=0)
        done += 1
        k = 0
        while done < events and k < per_transaction - 2:
            k += 1
            await client.update_transaction(tx, energy_import_wh=10 * k, energy_export_wh=3 * k)
            done += 1
        if done < events:
            await client.end_transaction(tx, energy_import_wh=10 * k, energy_export_wh=3 * k)
            done += 1


async def _throughput(directory: Path, events: int) -> tuple[float, float]:
    proc, port = _start_csms(directory)
    try:
        with CsmsStore(directory / "sustained.sqlite3") as store:
            client = CsmsClient(_settings(port), store, rng=random.Random(1))
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await client.wait_online()
                t0 = time.perf_counter()
                await _record(client, events)
                recorded_s = time.perf_counter() - t0
                await client.wait_drained()
                elapsed = time.perf_counter() - t0
                nursery.cancel_scope.cancel()
            if client.statistics().events_confirmed != events:
                raise RuntimeError("benchmark events were not all confirmed")
    finally:
        _stop(proc)
    return events / elapsed, recorded_s / events


async def _drain(directory: Path, events: int) -> float:
    with CsmsStore(directory / "drain.sqlite3") as store:
        client = CsmsClient(_settings(9), store, rng=random.Random(2))  # nothing listens: offline
        await _record(client, events)
    proc, port = _start_csms(directory)
    try:
        with CsmsStore(directory / "drain.sqlite3") as store:
            client = CsmsClient(_settings(port), store, rng=random.Random(3))
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await client.wait_online()
                t0 = time.perf_counter()
                await client.wait_drained()
                elapsed = time.perf_counter() - t0
                nursery.cancel_scope.cancel()
            if client.statistics().events_confirmed != events:
                raise RuntimeError("queued events were not all delivered")
    finally:
        _stop(proc)
    return elapsed


def run(quick: bool = False) -> BenchResult:
    sustained_events = 500 if quick else 3000
    drain_events = 1000 if quick else 10_000
    with tempfile.TemporaryDirectory(prefix="bench-ocpp-") as tmp:
        events_per_s, record_s = trio.run(_throughput, Path(tmp), sustained_events)
        drain_s = trio.run(_drain, Path(tmp), drain_events)
    drain_10k_s = drain_s * 10_000 / drain_events
    data = {
        "events_per_s": round(events_per_s, 1),
        "drain_10k_s": round(drain_10k_s, 2),
        "drained_events": drain_events,
        "drain_events_per_s": round(drain_events / drain_s, 1),
        "sustained_events": sustained_events,
        "fsync_commit_ms": round(record_s * 1000, 3),
        "quick": quick,
        "machine": machine(),
    }
    rows = [
        ("events_per_s", f"{events_per_s:.0f} TransactionEvents/s (record + send + confirm, {sustained_events} events)"),
        ("drain_10k_s", f"{drain_10k_s:.1f} s" + ("" if drain_events == 10_000 else f" (scaled from {drain_events})")),
        ("drain rate", f"{drain_events / drain_s:.0f} events/s after reconnecting"),
        ("record one event", f"{record_s * 1000:.2f} ms (SQLite commit, WAL, synchronous=FULL)"),
    ]
    return BenchResult(name="ocpp", rows=rows, data=data)
