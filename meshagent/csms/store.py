"""The durable side of the CSMS client: the outbox queue, transactions, and the local auth list.

Theory of operation
-------------------
Billing must survive crashes, power loss and days offline, so nothing billable is sent
before it is on disk. Every TransactionEvent (and every billing MeterValues) is written to
one SQLite file in WAL mode with ``synchronous=FULL`` and counts as *recorded* only when its
commit has returned. In the same SQLite transaction the transaction's ``next_seq_no`` is
advanced, so ``seqNo`` is gapless: either the event and its number are both on disk, or
neither is.

The sender takes the oldest row of ``outbox`` (``head``), sends it, and deletes it only
when the CSMS has confirmed it (``confirm``). A CALLERROR or a timeout counts an attempt
(``note_failure``); after the configured number of attempts the row moves to
``dead_letters`` (``dead_letter``), which is never pruned. ``retry_dead_letters`` (the
``meshagent csms-queue retry`` command) moves rows back under their original ids, which
AUTOINCREMENT guarantees are older than any new row, so they go out first.

Storage full or unwritable: recording raises ``StorageError`` (one clear line) and rolls
back, so nothing half-written stays and nothing already recorded is touched. New
transactions are refused earlier, once the file uses more than ``1 - reserve_fraction`` of
its allowed size, so that transactions already running can still record their updates and
their end in the reserve.

All methods block (SQLite and fsync): the trio client calls them in a worker thread.
The auth list is stored as one row: its canonical msgpack bytes, checked against its hash
when loaded.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from meshagent.errors import MeshagentError
from protocol import codec
from protocol.authlist import CanonicalList, LocalAuthList
from protocol.errors import BadPacket

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY,
    id_token TEXT,
    token_type TEXT,
    evse_id INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    next_seq_no INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0,
    energy_import_wh REAL NOT NULL,
    energy_export_wh REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    transaction_id TEXT,
    seq_no INTEGER,
    payload TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    action TEXT NOT NULL,
    transaction_id TEXT,
    seq_no INTEGER,
    payload TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_list (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    list_hash BLOB NOT NULL,
    body BLOB NOT NULL
);
"""

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RESERVE_FRACTION = 0.1


class StorageError(MeshagentError):
    """The queue cannot record: full, unwritable or broken. Names the file and what to do."""


@attrs.frozen
class QueuedEvent:
    id: int
    action: str
    transaction_id: str | None
    seq_no: int | None
    payload: Mapping[str, Any]
    recorded_ms: int
    attempts: int
    last_error: str | None = None


@attrs.frozen
class OpenTransaction:
    transaction_id: str
    id_token: str | None
    token_type: str | None
    evse_id: int
    connector_id: int
    next_seq_no: int
    energy_import_wh: float
    energy_export_wh: float


@attrs.frozen
class StoreStatistics:
    pending: int
    dead_letters: int
    open_transactions: int
    used_bytes: int
    max_bytes: int


@attrs.frozen
class TransactionStart:
    """What the store keeps about a transaction when it starts."""

    transaction_id: str
    evse_id: int
    connector_id: int
    id_token: str | None = None
    token_type: str | None = None


class CsmsStore:
    """One SQLite file; see the module docstring. Not thread-safe: one worker at a time."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 reserve_fraction: float = DEFAULT_RESERVE_FRACTION) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.reserve_fraction = reserve_fraction
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"csms queue {self.path}: cannot open: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._max_pages = max(16, max_bytes // self._page_size)
            self._db.execute(f"PRAGMA max_page_count={self._max_pages}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(f"csms queue {self.path}: cannot initialise: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CsmsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One SQLite write transaction; committed on exit, rolled back on any error."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"csms queue {self.path}: cannot {what}: {exc}") from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                hint = " (queue full: free space or raise csms.max_queue)" if "full" in str(exc) else ""
                raise StorageError(f"csms queue {self.path}: cannot {what}: {exc}{hint}") from None
            raise

    # --- recording -----------------------------------------------------------------------

    def used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def accepting_transactions(self) -> bool:
        try:
            return self.used_bytes() <= self.max_bytes * (1.0 - self.reserve_fraction)
        except sqlite3.Error:
            return False

    def record_transaction_event(
        self,
        transaction_id: str,
        payload: dict[str, Any],
        recorded_ms: int,
        *,
        start: TransactionStart | None = None,
        ends: bool = False,
        energy_import_wh: float,
        energy_export_wh: float,
    ) -> int:
        """Record one TransactionEvent (``seqNo`` is filled in here); returns its seqNo.

        With ``start``, opens the transaction (refused with StorageError when the queue is
        past its reserve). Raises ``StorageError`` if the event could not be made durable,
        ``ValueError`` for an unknown or ended transaction (a caller bug).
        """
        if start is not None and not self.accepting_transactions():
            raise StorageError(
                f"csms queue {self.path} is full ({self.used_bytes()} of {self.max_bytes} bytes "
                "used): new transactions refused until the CSMS confirms queued events")
        with self._write("record a transaction event") as db:
            if start is not None:
                if start.transaction_id != transaction_id:
                    raise ValueError("start.transaction_id differs")
                seq_no = 0
                try:
                    db.execute(
                        "INSERT INTO transactions (transaction_id, id_token, token_type, evse_id,"
                        " connector_id, next_seq_no, started_ms, energy_import_wh, energy_export_wh)"
                        " VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                        (transaction_id, start.id_token, start.token_type, start.evse_id,
                         start.connector_id, recorded_ms, energy_import_wh, energy_export_wh))
                except sqlite3.IntegrityError:
                    raise ValueError(f"transaction {transaction_id} already exists") from None
            else:
                row = db.execute("SELECT next_seq_no, ended FROM transactions WHERE transaction_id = ?",
                                 (transaction_id,)).fetchone()
                if row is None:
                    raise ValueError(f"unknown transaction {transaction_id}")
                if row[1]:
                    raise ValueError(f"transaction {transaction_id} has ended")
                seq_no = int(row[0])
            body = dict(payload)
            body["seqNo"] = seq_no
            db.execute(
                "INSERT INTO outbox (action, transaction_id, seq_no, payload, recorded_ms)"
                " VALUES ('TransactionEvent', ?, ?, ?, ?)",
                (transaction_id, seq_no, json.dumps(body, separators=(",", ":"), allow_nan=False),
                 recorded_ms))
            db.execute(
                "UPDATE transactions SET next_seq_no = ?, ended = ?, energy_import_wh = ?,"
                " energy_export_wh = ? WHERE transaction_id = ?",
                (seq_no + 1, 1 if ends else 0, energy_import_wh, energy_export_wh, transaction_id))
        return seq_no

    def record_message(self, action: str, payload: Mapping[str, Any], recorded_ms: int) -> int:
        """Record a billing message outside any transaction (MeterValues); returns its id."""
        with self._write(f"record {action}") as db:
            cur = db.execute(
                "INSERT INTO outbox (action, payload, recorded_ms) VALUES (?, ?, ?)",
                (action, json.dumps(payload, separators=(",", ":"), allow_nan=False), recorded_ms))
            return int(cur.lastrowid or 0)

    # --- sending -------------------------------------------------------------------------

    _COLUMNS = "id, action, transaction_id, seq_no, payload, recorded_ms, attempts, last_error"

    @staticmethod
    def _event(row: Sequence[Any]) -> QueuedEvent:
        return QueuedEvent(int(row[0]), row[1], row[2], row[3], json.loads(row[4]), int(row[5]),
                           int(row[6]), row[7])

    def head(self) -> QueuedEvent | None:
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else self._event(row)

    def pending(self, limit: int = 1000) -> list[QueuedEvent]:
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM outbox ORDER BY id LIMIT ?", (limit,))
        return [self._event(r) for r in rows]

    def dead_letters(self, limit: int = 1000) -> list[QueuedEvent]:
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM dead_letters ORDER BY id LIMIT ?", (limit,))
        return [self._event(r) for r in rows]

    def confirm(self, event_id: int) -> None:
        """The CSMS confirmed the event: now, and only now, it leaves the queue."""
        self.confirm_many([event_id])

    def confirm_many(self, event_ids: Sequence[int]) -> None:
        """Remove several confirmed events in one commit (one fsync)."""
        if event_ids:
            with self._write("remove confirmed events") as db:
                db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in event_ids])

    def note_failure(self, event_id: int, error: str) -> int:
        """Count one failed attempt; returns the attempts so far."""
        with self._write("count an attempt") as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                       (error[:500], event_id))
            row = db.execute("SELECT attempts FROM outbox WHERE id = ?", (event_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def dead_letter(self, event_id: int, now_ms: int) -> None:
        """Move an event that used all its attempts to ``dead_letters`` (kept forever)."""
        with self._write("dead-letter an event") as db:
            db.execute(
                f"INSERT INTO dead_letters ({self._COLUMNS}, dead_ms)"
                f" SELECT {self._COLUMNS}, ? FROM outbox WHERE id = ?", (now_ms, event_id))
            db.execute("DELETE FROM outbox WHERE id = ?", (event_id,))

    def retry_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters back in the queue (attempts reset); returns how many."""
        with self._write("retry dead letters") as db:
            where, args = ("", ()) if ids is None else (
                f" WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))
            db.execute(
                f"INSERT INTO outbox ({self._COLUMNS})"
                f" SELECT id, action, transaction_id, seq_no, payload, recorded_ms, 0, last_error"
                f" FROM dead_letters{where}", args)
            cur = db.execute(f"DELETE FROM dead_letters{where}", args)
            return int(cur.rowcount)

    def open_transactions(self) -> list[OpenTransaction]:
        rows = self._db.execute(
            "SELECT transaction_id, id_token, token_type, evse_id, connector_id, next_seq_no,"
            " energy_import_wh, energy_export_wh FROM transactions WHERE ended = 0 ORDER BY started_ms")
        return [OpenTransaction(*r) for r in rows]

    def transaction_seq_counts(self) -> dict[str, int]:
        """transaction id -> how many events were recorded (seqNo 0 .. n-1)."""
        return {r[0]: int(r[1]) for r in self._db.execute(
            "SELECT transaction_id, next_seq_no FROM transactions")}

    def statistics(self) -> StoreStatistics:
        db = self._db
        return StoreStatistics(
            pending=int(db.execute("SELECT count(*) FROM outbox").fetchone()[0]),
            dead_letters=int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]),
            open_transactions=int(db.execute("SELECT count(*) FROM transactions WHERE ended = 0").fetchone()[0]),
            used_bytes=self.used_bytes(),
            max_bytes=self.max_bytes,
        )

    # --- the local authorization list ------------------------------------------------------

    def load_auth_list(self) -> LocalAuthList:
        row = self._db.execute("SELECT version, list_hash, body FROM auth_list WHERE id = 1").fetchone()
        if row is None:
            return LocalAuthList()
        try:
            canonical = codec.decode_untrusted(CanonicalList, bytes(row[2]))
            loaded = LocalAuthList(canonical.version, canonical.entries)
        except (BadPacket, ValueError) as exc:
            raise StorageError(f"csms queue {self.path}: stored auth list unreadable: {exc}") from None
        if loaded.list_hash != bytes(row[1]) or loaded.version != row[0]:
            raise StorageError(f"csms queue {self.path}: stored auth list does not match its hash")
        return loaded

    def save_auth_list(self, auth_list: LocalAuthList) -> None:
        body = codec.encode(CanonicalList(auth_list.version, auth_list.entries))
        with self._write("store the auth list") as db:
            db.execute("INSERT OR REPLACE INTO auth_list (id, version, list_hash, body) VALUES (1, ?, ?, ?)",
                       (auth_list.version, auth_list.list_hash, body))
