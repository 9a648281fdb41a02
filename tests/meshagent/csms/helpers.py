"""The development CSMS in its own process, and what the tests check in its database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import trio

from meshagent.csms.client import ClientSettings
from meshagent.csms.store import CsmsStore

REPO = Path(__file__).resolve().parents[3]
STATION = "station-1"


def fast_settings(url: str, **kw: object) -> ClientSettings:
    """Timings compressed so that an outage of 'hours' (by the injected wall clock) takes a second."""
    base = dict(url=url, station_id=STATION, call_timeout_s=3.0, message_attempts=3,
                message_attempt_interval_s=0.02, reconnect_min_s=0.02, reconnect_max_s=0.2,
                heartbeat_interval_s=300.0, connect_timeout_s=3.0, queue_poll_s=0.1)
    base.update(kw)
    return ClientSettings(**base)  # type: ignore[arg-type]


@attrs.define
class WallClock:
    """The injected wall clock: tests move it by hours to make a long outage."""

    ms: int = 1_764_115_200_000

    def __call__(self) -> int:
        self.ms += 1
        return self.ms

    def advance_s(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def agent_config(tmp_path: Path, node_id: str, host: str, devices: str, csms_url: str, *,
                 station_id: str | None = None, csms_lines: str = "", extra: str = "") -> Path:
    """Enrol ``node_id`` (a CA in ``tmp_path / "ca"``) and write its node.toml for ``meshagent
    run``: local preset on ``host``:7946, API on 7947, ``devices`` (the [devices] lines), a
    station of the CSMS at ``csms_url`` (queue in ``tmp_path``; ``csms_lines`` more [csms]
    keys; sessions polled every 0.1 s), then ``extra`` sections."""
    from meshagent.trust import keystore

    ca = keystore.ca_init(tmp_path / "ca")
    keystore.enroll(ca, node_id, tmp_path / node_id, site_id="site-1", transformer_id="tx-1")
    cfg = tmp_path / node_id / "node.toml"
    cfg.write_text(f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\napi = "{host}:7947"\n\n'
                   f'[devices]\n{devices}\n\n'
                   f'[csms]\nurl = "{csms_url}"\nstation_id = "{station_id or f"CP-{node_id}"}"\n'
                   f'queue = "{tmp_path / "q.sqlite3"}"\n{csms_lines}session_poll = "0.1s"\n' + (f"\n{extra}" if extra else ""))
    return cfg


class CsmsProcess:
    """``python -m sims.csms_server`` on 127.0.0.1; restartable on the same port and database."""

    def __init__(self, directory: Path, *args: str, via_cli: bool = False) -> None:
        self.via_cli = via_cli  # `meshagent csms ...` instead of `python -m sims.csms_server`
        self.directory = directory
        self.db = directory / "csms.sqlite3"
        self.args = list(args)
        self.port = 0
        self.scheme = "ws"
        self.proc: subprocess.Popen[str] | None = None
        self.log = directory / "csms.log"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/ocpp"

    async def start(self, *extra: str) -> None:
        assert self.proc is None
        program = ["meshagent.cli.main", "csms"] if self.via_cli else ["sims.csms_server"]
        cmd = [sys.executable, "-m", *program, "--listen", f"127.0.0.1:{self.port}",
               "--db", str(self.db), *self.args, *extra]
        self.proc = await trio.to_thread.run_sync(self._spawn, cmd)
        assert self.proc.stdout is not None
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"CSMS did not start: {line!r}; log: {self.log.read_text()[-2000:]}")
        address = line.split()[-1]
        self.scheme = address.split(":")[0]
        self.port = int(address.rsplit(":", 1)[1])

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[str]:
        with open(self.log, "a") as err:
            return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    @contextlib.contextmanager
    def query(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db, timeout=10)
        try:
            yield db
        finally:
            db.close()

    def events(self) -> list[tuple[str, int, str, int]]:
        """(transaction id, seqNo, eventType, offline) of every recorded TransactionEvent."""
        with self.query() as db:
            return db.execute("SELECT transaction_id, seq_no, event_type, offline FROM transaction_events"
                              " ORDER BY transaction_id, seq_no").fetchall()

    def duplicates(self) -> int:
        with self.query() as db:
            return int(db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0])

    def calls(self) -> list[tuple[str, str, dict]]:
        with self.query() as db:
            return [(a, o, json.loads(r)) for a, o, r in
                    db.execute("SELECT action, outcome, response FROM csms_calls ORDER BY rowid")]


def assert_nothing_lost(csms: CsmsProcess, store: CsmsStore, offline: set[tuple[str, int]] | None = None) -> None:
    """Every recorded event is at the CSMS exactly once, seqNo gapless, offline as generated."""
    recorded = store.transaction_seq_counts()
    got: dict[str, list[int]] = {}
    for tx, seq, _kind, off in csms.events():
        got.setdefault(tx, []).append(seq)
        if offline is not None:
            assert bool(off) == ((tx, seq) in offline), f"offline flag of {tx} seqNo {seq}"
    assert set(got) == set(recorded), "transactions lost or invented"
    for tx, n in recorded.items():
        assert got[tx] == list(range(n)), f"{tx}: seqNos {got[tx]} instead of 0..{n - 1}"
    assert store.statistics().pending == 0


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll another process's database: there is no event to wait on across processes.
    Callers bound it with ``trio.fail_after``."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


def kill_tree(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def tokens(entries: Sequence[tuple[str, str]], version: int = 1) -> dict:
    return {"version": version, "entries": [{"idToken": t, "type": "ISO14443", "status": s} for t, s in entries]}
