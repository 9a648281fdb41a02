"""The durable queue on real SQLite files, the backoff, the [csms] config and the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshagent.cli.main import main as cli_main
from meshagent.config import config_from_dict
from meshagent.csms.client import Backoff, ClientSettings
from meshagent.csms.store import CsmsStore, StorageError, TransactionStart
from protocol.authlist import AuthEntry, LocalAuthList


def _start(store: CsmsStore, tx: str, now_ms: int = 1) -> int:
    return store.record_transaction_event(tx, {"eventType": "Started"}, now_ms, start=TransactionStart(tx, 1, 1),
                                          energy_import_wh=0, energy_export_wh=0)


def _update(store: CsmsStore, tx: str, wh: float) -> int:
    return store.record_transaction_event(tx, {"eventType": "Updated"}, 2, energy_import_wh=wh, energy_export_wh=0)


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    with CsmsStore(tmp_path / "q.sqlite3") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_seq_no_gapless_in_order_and_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with CsmsStore(path) as store:
        assert [_start(store, "a"), _update(store, "a", 1), _start(store, "b"), _update(store, "a", 2)] == [0, 1, 0, 2]
        with pytest.raises(ValueError, match="unknown"):
            _update(store, "zzz", 1)
        store.record_transaction_event("b", {"eventType": "Ended"}, 3, ends=True, energy_import_wh=5,
                                       energy_export_wh=1)
        with pytest.raises(ValueError, match="ended"):
            _update(store, "b", 1)
    with CsmsStore(path) as store:
        assert [(e.transaction_id, e.seq_no, e.payload["seqNo"]) for e in store.pending()] == [
            ("a", 0, 0), ("a", 1, 1), ("b", 0, 0), ("a", 2, 2), ("b", 1, 1)]
        assert [t.transaction_id for t in store.open_transactions()] == ["a"]
        assert _update(store, "a", 3) == 3


def test_confirm_removes_dead_letter_keeps_and_retry_restores_order(tmp_path: Path) -> None:
    with CsmsStore(tmp_path / "q.sqlite3") as store:
        _start(store, "a")
        _update(store, "a", 1)
        head = store.head()
        assert head is not None and head.seq_no == 0
        assert store.note_failure(head.id, "InternalError") == 1
        store.dead_letter(head.id, 99)
        assert store.head() is not None and store.head().seq_no == 1  # type: ignore[union-attr]
        store.confirm(store.head().id)  # type: ignore[union-attr]
        assert store.head() is None
        _update(store, "a", 2)
        assert [(d.seq_no, d.attempts) for d in store.dead_letters()] == [(0, 1)]
        assert store.retry_dead_letters() == 1
        assert [e.seq_no for e in store.pending()] == [0, 2]  # the retried one goes first
        assert store.dead_letters() == []


def test_full_storage_refuses_new_transactions_and_keeps_everything(tmp_path: Path) -> None:
    with CsmsStore(tmp_path / "q.sqlite3", max_bytes=64 * 1024, reserve_fraction=0.5) as store:
        big = {"eventType": "Updated", "pad": "x" * 2000}
        _start(store, "running")
        recorded = 1
        with pytest.raises(StorageError, match="new transactions refused"):
            for i in range(100):
                _start(store, f"t{i}")
                recorded += 1
                for _ in range(3):
                    store.record_transaction_event(f"t{i}", big, 2, energy_import_wh=1, energy_export_wh=0)
                    recorded += 1
        # The reserve still takes updates of a running transaction, until the file is full.
        with pytest.raises(StorageError, match="full"):
            for _ in range(100):
                store.record_transaction_event("running", big, 2, energy_import_wh=1, energy_export_wh=0)
                recorded += 1
        assert store.statistics().pending == recorded  # nothing recorded was dropped
        counts = store.transaction_seq_counts()
        assert sum(counts.values()) == recorded  # and no seqNo was consumed by a failed write
        # Confirming frees room: new transactions are accepted again.
        for e in store.pending(1000):
            store.confirm(e.id)
        _start(store, "after")


def test_unwritable_queue_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot open"):
        CsmsStore(tmp_path / "file" / "q.sqlite3")


def test_auth_list_stored_and_checked(tmp_path: Path) -> None:
    lst = LocalAuthList.build(3, [AuthEntry("A", "ISO14443"), AuthEntry("B", "KeyCode")])
    with CsmsStore(tmp_path / "q.sqlite3") as store:
        assert store.load_auth_list() == LocalAuthList()
        store.save_auth_list(lst)
    with CsmsStore(tmp_path / "q.sqlite3") as store:
        assert store.load_auth_list() == lst
        store._db.execute("UPDATE auth_list SET list_hash = zeroblob(32)")
        with pytest.raises(StorageError, match="hash"):
            store.load_auth_list()


def test_backoff_doubles_with_jitter_and_caps() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(5))
    delays = [backoff.next_delay_s() for _ in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(60.0, 2.0**n)
        assert ceiling / 2 <= d <= ceiling
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert 0.5 <= backoff.next_delay_s() <= 1.0


def test_config_section(tmp_path: Path) -> None:
    cfg = config_from_dict({"node": {"id": "charger-1"}, "csms": {
        "url": "wss://csms.example/ocpp", "password": "pw", "ca_bundle": "ca.pem", "message_attempts": 5,
        "message_attempt_interval": "10s", "call_timeout": "5s", "max_queue": "16MiB"}}, base_dir=tmp_path)
    settings = ClientSettings.from_section(cfg.section("csms"), cfg.node.id)
    assert settings.station_id == "charger-1" and settings.ca_bundle == str(tmp_path / "ca.pem")
    assert (settings.message_attempts, settings.message_attempt_interval_s, settings.call_timeout_s) == (5, 10.0, 5.0)
    assert cfg.section("csms").max_queue_bytes == 16 * 1024 * 1024
    assert cfg.section("csms").queue == tmp_path / "state" / "csms.sqlite3"
    from meshagent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"csms\.url"):
        config_from_dict({"node": {"id": "c"}, "csms": {"url": "http://x"}})
    with pytest.raises(ConfigError, match=r"csms\.message_attempt"):
        config_from_dict({"node": {"id": "c"}, "csms": {"message_attempt": 3}})


def test_cli_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["csms-queue", "--db", str(tmp_path / "missing.sqlite3")]) == 1
    assert capsys.readouterr().err.strip() == f"meshagent: error: --db {tmp_path / 'missing.sqlite3'}: no such queue file"
    assert cli_main(["csms-queue"]) == 2
    assert "give --db PATH or --config FILE" in capsys.readouterr().err
    assert cli_main(["csms", "--listen", "nonsense"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    (tmp_path / "not-a-db").write_text("hello")
    assert cli_main(["csms", "billing", "--db", str(tmp_path / "not-a-db")]) == 1
    assert "not a CSMS database" in capsys.readouterr().err


def test_cli_queue_show_and_billing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sims.csms_server import open_db

    with CsmsStore(tmp_path / "q.sqlite3") as store:
        _start(store, "tx-dead")
        store.dead_letter(store.head().id, 5)  # type: ignore[union-attr]
        _update(store, "tx-dead", 3)
    assert cli_main(["csms-queue", "--db", str(tmp_path / "q.sqlite3")]) == 0
    out = capsys.readouterr().out
    assert "1 pending, 1 dead-lettered" in out and "dead letters:" in out and "tx-dead" in out
    db = open_db(tmp_path / "csms.sqlite3")
    for seq, imp, exp, kind in ((0, 100.0, 0.0, "Started"), (1, 350.0, 80.0, "Ended")):
        db.execute("INSERT INTO transaction_events VALUES ('st', 'tx1', ?, ?, 't', 'x', 0, ?, ?, ?, '{}', ?)",
                   (seq, kind, "ALICE" if seq == 0 else None, imp, exp, seq))
    db.close()
    assert cli_main(["csms", "billing", "--db", str(tmp_path / "csms.sqlite3")]) == 0
    out = capsys.readouterr().out
    assert "tx1" in out and "250.0" in out and "80.0" in out and "ALICE" in out
