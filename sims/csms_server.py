"""A small CSMS for development, demos and tests, on the ``ocpp`` package's own ChargePoint.

Theory of operation
-------------------
This is the other side of ``meshagent.csms.client``, written with code we did not write: the
``ocpp`` package's asyncio ``ChargePoint`` (v201), which validates every payload against the
OCPP 2.0.1 schemas, served by the ``websockets`` package. It runs as its own process
(``meshagent csms --listen HOST:PORT --db PATH``); the first line it prints is
``listening on ws://HOST:PORT`` (or ``wss://``), so a test can start it on port 0.

* It accepts any station id (the last path segment), subprotocol ``ocpp2.0.1`` only, and
  with ``--password`` requires HTTP basic auth ``<station id>:<password>``; with
  ``--tls-cert/--tls-key`` it serves ``wss://`` (security profile 2).
* Every TransactionEvent is recorded in SQLite, keyed by (station, transactionId, seqNo):
  a second delivery of the same key is not billed again, it is counted in ``duplicates``.
  Billing (``billing_report``, ``meshagent csms billing``) is per transaction the rise of
  the Energy.Active.Import/Export registers, and per idToken the sum of its transactions.
* After a station's BootNotification it asks GetLocalListVersion and, if the station is
  behind the ``--auth-list`` file, pushes it with SendLocalList Full. ``--call ACTION=JSON``
  sends extra calls once per station (SetVariables, Reset, anything), recording answers.
* Faults for tests: ``--fault-callerror N`` answers the first N TransactionEvents with
  CALLERROR (not recorded); ``--fault-silent N`` records the first N and never answers;
  ``--fault-silent-after M`` answers M TransactionEvents, then records the next and never answers;
  ``--fault-close N`` records the first N and closes the connection instead of answering
  (a lost response: the station sends it again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import InternalError, OCPPError
from ocpp.routing import after as _after
from ocpp.routing import on as _on
from ocpp.v201 import ChargePoint, call, call_result
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

F = TypeVar("F", bound=Callable[..., Any])
# The ocpp package's route decorators, typed (they return the function they are given).
on = cast("Callable[[str], Callable[[F], F]]", _on)
after = cast("Callable[[str], Callable[[F], F]]", _after)

log = logging.getLogger("meshagent.csms.dev")
SUBPROTOCOL = "ocpp2.0.1"
IMPORT = "Energy.Active.Import.Register"
EXPORT = "Energy.Active.Export.Register"

SCHEMA = """
CREATE TABLE IF NOT EXISTS transaction_events (
    station_id TEXT NOT NULL, transaction_id TEXT NOT NULL, seq_no INTEGER NOT NULL,
    event_type TEXT NOT NULL, timestamp TEXT NOT NULL, trigger_reason TEXT NOT NULL,
    offline INTEGER NOT NULL, id_token TEXT, energy_import_wh REAL, energy_export_wh REAL,
    payload TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (station_id, transaction_id, seq_no)
);
CREATE TABLE IF NOT EXISTS duplicates (
    station_id TEXT NOT NULL, transaction_id TEXT NOT NULL, seq_no INTEGER NOT NULL,
    same_payload INTEGER NOT NULL, received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meter_values (
    station_id TEXT NOT NULL, evse_id INTEGER NOT NULL, energy_import_wh REAL,
    energy_export_wh REAL, received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS boots (station_id TEXT NOT NULL, reason TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS statuses (
    station_id TEXT NOT NULL, evse_id INTEGER NOT NULL, connector_id INTEGER NOT NULL,
    status TEXT NOT NULL, received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS csms_calls (
    station_id TEXT NOT NULL, action TEXT NOT NULL, request TEXT NOT NULL,
    outcome TEXT NOT NULL, response TEXT NOT NULL, received_ms INTEGER NOT NULL
);
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_db(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def _registers(meter_value: Sequence[dict[str, Any]] | None) -> tuple[float | None, float | None]:
    imported: float | None = None
    exported: float | None = None
    for mv in meter_value or ():
        for sv in mv.get("sampled_value", ()):
            if sv.get("measurand") == IMPORT:
                imported = max(imported or 0.0, float(sv["value"]))
            elif sv.get("measurand") == EXPORT:
                exported = max(exported or 0.0, float(sv["value"]))
    return imported, exported


# --- billing -------------------------------------------------------------------------------


@attrs.frozen
class TransactionBill:
    station_id: str
    transaction_id: str
    id_token: str | None
    energy_imported_wh: float
    energy_exported_wh: float
    events: int
    max_seq_no: int
    offline_events: int
    ended: bool


@attrs.frozen
class TokenBill:
    id_token: str
    transactions: int
    energy_imported_wh: float
    energy_exported_wh: float


@attrs.frozen
class BillingReport:
    transactions: tuple[TransactionBill, ...]
    tokens: tuple[TokenBill, ...]
    duplicates: int

    def table(self) -> str:
        lines = [f"{'station':<16} {'transaction':<18} {'idToken':<12} {'imported Wh':>12} "
                 f"{'exported Wh':>12} {'events':>6} {'offline':>7} ended"]
        for t in self.transactions:
            lines.append(f"{t.station_id:<16} {t.transaction_id:<18} {t.id_token or '-':<12} "
                         f"{t.energy_imported_wh:>12.1f} {t.energy_exported_wh:>12.1f} {t.events:>6} "
                         f"{t.offline_events:>7} {'yes' if t.ended else 'no'}")
        lines += ["", f"{'idToken':<16} {'transactions':>12} {'imported Wh':>12} {'exported Wh':>12}"]
        for k in self.tokens:
            lines.append(f"{k.id_token:<16} {k.transactions:>12} {k.energy_imported_wh:>12.1f} "
                         f"{k.energy_exported_wh:>12.1f}")
        lines += ["", f"duplicate deliveries not billed again: {self.duplicates}"]
        return "\n".join(lines)


def billing_report(db_path: str | Path) -> BillingReport:
    """Energy per transaction (rise of each register) and per idToken, from the CSMS's DB."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT station_id, transaction_id, MAX(id_token),"
            " COALESCE(MAX(energy_import_wh) - MIN(energy_import_wh), 0),"
            " COALESCE(MAX(energy_export_wh) - MIN(energy_export_wh), 0),"
            " COUNT(*), MAX(seq_no), SUM(offline), MAX(event_type = 'Ended')"
            " FROM transaction_events GROUP BY station_id, transaction_id"
            " ORDER BY station_id, MIN(received_ms), transaction_id").fetchall()
        duplicates = db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0]
    finally:
        db.close()
    bills = tuple(TransactionBill(r[0], r[1], r[2], float(r[3]), float(r[4]), int(r[5]), int(r[6]),
                                  int(r[7]), bool(r[8])) for r in rows)
    tokens: dict[str, list[float]] = {}
    for b in bills:
        acc = tokens.setdefault(b.id_token or "-", [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += b.energy_imported_wh
        acc[2] += b.energy_exported_wh
    return BillingReport(
        bills, tuple(TokenBill(k, int(v[0]), v[1], v[2]) for k, v in sorted(tokens.items())),
        int(duplicates))


# --- the server ----------------------------------------------------------------------------


@attrs.define
class Faults:
    callerror: int = 0
    silent: int = 0
    close: int = 0
    silent_after: int = -1  # answer this many TransactionEvents, then go silent on the next one


@attrs.define
class Csms:
    db: sqlite3.Connection
    heartbeat_interval_s: int = 300
    auth_list_path: Path | None = None
    password: str | None = None
    scripted_calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    faults: Faults = attrs.field(factory=Faults)
    scripted_done: set[str] = attrs.field(factory=set)

    def auth_list(self) -> dict[str, Any] | None:
        if self.auth_list_path is None:
            return None
        data: dict[str, Any] = json.loads(self.auth_list_path.read_text())
        return data


class Station(ChargePoint):  # type: ignore[misc]
    """One connected charging station, as the CSMS sees it."""

    def __init__(self, station_id: str, connection: ServerConnection, csms: Csms) -> None:
        super().__init__(station_id, connection, response_timeout=30)
        self.csms = csms

    @on("BootNotification")
    def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        self.csms.db.execute("INSERT INTO boots VALUES (?, ?, ?)", (self.id, reason, _now_ms()))
        return call_result.BootNotification(
            current_time=_iso_now(), interval=self.csms.heartbeat_interval_s, status="Accepted")

    @after("BootNotification")
    async def after_boot(self, **_: Any) -> None:
        try:
            await self._push_auth_list()
            if self.id not in self.csms.scripted_done:
                self.csms.scripted_done.add(self.id)
                for action, payload in self.csms.scripted_calls:
                    await self._scripted_call(action, payload)
        except (TimeoutError, ConnectionClosed) as exc:
            log.info("%s: after boot: %s", self.id, type(exc).__name__)

    async def _push_auth_list(self) -> None:
        wanted = self.csms.auth_list()
        if wanted is None:
            return
        have = await self.call(call.GetLocalListVersion(), suppress=False)
        if have.version_number >= int(wanted["version"]):
            return
        entries = []
        for e in wanted["entries"]:
            info: dict[str, Any] = {"status": e.get("status", "Accepted")}
            if e.get("expiry"):
                info["cacheExpiryDateTime"] = e["expiry"]
            entries.append({"idToken": {"idToken": e["idToken"], "type": e.get("type", "ISO14443")},
                            "idTokenInfo": info})
        result = await self.call(call.SendLocalList(
            version_number=int(wanted["version"]), update_type="Full", local_authorization_list=entries),
            suppress=False)
        self._record_call("SendLocalList", {"versionNumber": wanted["version"]}, "result", asdict(result))

    async def _scripted_call(self, action: str, payload: dict[str, Any]) -> None:
        kwargs = {next(iter(camel_to_snake_case({k: 0}))): v for k, v in payload.items()}
        try:
            result = await self.call(getattr(call, action)(**kwargs), suppress=False)
        except OCPPError as exc:
            self._record_call(action, payload, "error", {"code": exc.code, "description": exc.description})
        else:
            self._record_call(action, payload, "result", asdict(result))

    def _record_call(self, action: str, request: dict[str, Any], outcome: str, response: dict[str, Any]) -> None:
        self.csms.db.execute("INSERT INTO csms_calls VALUES (?, ?, ?, ?, ?, ?)",
                             (self.id, action, json.dumps(request), outcome, json.dumps(response), _now_ms()))

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=_iso_now())

    @on("StatusNotification")
    def on_status(self, evse_id: int, connector_id: int, connector_status: str, **_: Any) -> Any:
        self.csms.db.execute("INSERT INTO statuses VALUES (?, ?, ?, ?, ?)",
                             (self.id, evse_id, connector_id, connector_status, _now_ms()))
        return call_result.StatusNotification()

    def _token_status(self, id_token: dict[str, Any]) -> str:
        status = "Unknown"
        for e in (self.csms.auth_list() or {}).get("entries", ()):
            if e["idToken"] == id_token["id_token"] and e.get("type", "ISO14443") == id_token["type"]:
                status = e.get("status", "Accepted")
        return status

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return call_result.Authorize(id_token_info={"status": self._token_status(id_token)})

    @on("MeterValues")
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any) -> Any:
        imported, exported = _registers(meter_value)
        self.csms.db.execute("INSERT INTO meter_values VALUES (?, ?, ?, ?, ?)",
                             (self.id, evse_id, imported, exported, _now_ms()))
        return call_result.MeterValues()

    @on("TransactionEvent")
    async def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                                   transaction_info: dict[str, Any], **kw: Any) -> Any:
        faults = self.csms.faults
        if faults.callerror > 0:
            faults.callerror -= 1
            raise InternalError(description="fault injected: CALLERROR")
        self._record_event(event_type, timestamp, trigger_reason, seq_no, transaction_info, kw)
        if faults.silent_after > 0:
            faults.silent_after -= 1
        elif faults.silent_after == 0:
            faults.silent_after, faults.silent = -1, max(faults.silent, 1)
        if faults.silent > 0:
            faults.silent -= 1
            await self._connection.wait_closed()
            raise InternalError(description="fault injected: never answered")
        if faults.close > 0:
            faults.close -= 1
            await self._connection.close()
            raise InternalError(description="fault injected: connection closed before the answer")
        if kw.get("id_token") and (status := self._token_status(kw["id_token"])) != "Unknown":
            # OCPP 2.0.1: a TransactionEvent with an idToken this CSMS knows is answered with its status
            return call_result.TransactionEvent(id_token_info={"status": status})
        return call_result.TransactionEvent()

    def _record_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                      transaction_info: dict[str, Any], kw: dict[str, Any]) -> None:
        imported, exported = _registers(kw.get("meter_value"))
        id_token = (kw.get("id_token") or {}).get("id_token")
        payload = json.dumps({"event_type": event_type, "seq_no": seq_no, "transaction_info": transaction_info,
                              **kw}, sort_keys=True)
        key = (self.id, transaction_info["transaction_id"], seq_no)
        db = self.csms.db
        try:
            db.execute("INSERT INTO transaction_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key, event_type, timestamp, trigger_reason, 1 if kw.get("offline") else 0,
                        id_token, imported, exported, payload, _now_ms()))
        except sqlite3.IntegrityError:
            same = db.execute("SELECT payload = ? FROM transaction_events WHERE station_id = ? AND"
                              " transaction_id = ? AND seq_no = ?", (payload, *key)).fetchone()[0]
            db.execute("INSERT INTO duplicates VALUES (?, ?, ?, ?, ?)", (*key, int(same), _now_ms()))


def _iso_now() -> str:
    t = time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def _check_auth(csms: Csms, connection: ServerConnection, request: Request) -> Response | None:
    if SUBPROTOCOL not in request.headers.get("Sec-WebSocket-Protocol", ""):
        return connection.respond(HTTPStatus.BAD_REQUEST, "subprotocol ocpp2.0.1 required\n")
    if csms.password is None:
        return None
    station_id = request.path.rstrip("/").rsplit("/", 1)[-1]
    header = request.headers.get("Authorization", "")
    try:
        user, _, password = base64.b64decode(header.removeprefix("Basic "), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, password = "", ""
    if not header.startswith("Basic ") or user != station_id or password != csms.password:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
    return None


async def serve_csms(host: str, port: int, csms: Csms, *, ssl_context: ssl.SSLContext | None = None) -> None:
    async def handler(connection: ServerConnection) -> None:
        station_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1] if connection.request else "?"
        station = Station(station_id, connection, csms)
        with contextlib.suppress(ConnectionClosed):
            await station.start()

    async with serve(handler, host, port, subprotocols=[Subprotocol(SUBPROTOCOL)], ssl=ssl_context,
                     process_request=lambda c, r: _check_auth(csms, c, r), max_size=1024 * 1024) as server:
        bound = next(iter(server.sockets)).getsockname()
        scheme = "wss" if ssl_context else "ws"
        print(f"listening on {scheme}://{bound[0]}:{bound[1]}", flush=True)
        await server.serve_forever()


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def run_server(listen: str, db_path: str | Path, *, auth_list: Path | None = None, password: str | None = None,
               tls_cert: Path | None = None, tls_key: Path | None = None, heartbeat_interval_s: int = 300,
               calls: Sequence[str] = (), faults: Faults | None = None) -> int:
    """Blocking: the body of ``meshagent csms``. Raises ValueError for a bad argument."""
    host, port = parse_listen(listen)
    scripted = []
    for spec in calls:
        action, sep, body = spec.partition("=")
        if not sep or not hasattr(call, action):
            raise ValueError(f"--call expects ACTION=JSON with an OCPP 2.0.1 action, got {spec!r}")
        scripted.append((action, json.loads(body)))
    ssl_context = None
    if tls_cert is not None:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(tls_cert, tls_key)
    logging.basicConfig(level=logging.WARNING, format="csms: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)  # it logs every message at INFO
    csms = Csms(open_db(db_path), heartbeat_interval_s, auth_list, password, scripted, faults or Faults())
    try:
        asyncio.run(serve_csms(host, port, csms, ssl_context=ssl_context))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sims.csms_server`` (the same as ``meshagent csms``)."""
    p = argparse.ArgumentParser(prog="csms_server")
    p.add_argument("--listen", default="127.0.0.1:9000")
    p.add_argument("--db", default="csms.sqlite3")
    p.add_argument("--auth-list", type=Path)
    p.add_argument("--password")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--heartbeat-interval", type=int, default=300)
    p.add_argument("--call", action="append", default=[])
    p.add_argument("--fault-callerror", type=int, default=0)
    p.add_argument("--fault-silent", type=int, default=0)
    p.add_argument("--fault-silent-after", type=int, default=-1)
    p.add_argument("--fault-close", type=int, default=0)
    a = p.parse_args(argv)
    return run_server(a.listen, a.db, auth_list=a.auth_list, password=a.password, tls_cert=a.tls_cert,
                      tls_key=a.tls_key, heartbeat_interval_s=a.heartbeat_interval, calls=a.call,
                      faults=Faults(a.fault_callerror, a.fault_silent, a.fault_close, a.fault_silent_after))


if __name__ == "__main__":
    sys.exit(main())
