"""The charging-station side of OCPP 2.0.1, in trio: billing and authorization only.

Theory of operation
-------------------
The CSMS is never in the spike path: it sees billing and authorization lists, and a charger
keeps working while it is unreachable for days. So the client is built around the durable
queue (``meshagent.csms.store``), not around the connection:

* ``start_transaction`` / ``update_transaction`` / ``end_transaction`` / ``meter_values``
  commit the event to SQLite (in a worker thread: fsync blocks) and return once it is
  durable. Nothing is sent from there. An event recorded while no CSMS session is up carries
  ``offline: true``.
* ``run`` owns the connection: connect (trio-websocket, subprotocol ``ocpp2.0.1``, HTTP basic
  auth, TLS with the CA bundle for ``wss://``), BootNotification on every new connection
  (its ``interval`` sets the heartbeat), then three tasks until the connection fails: the
  receiver (answers, and the CSMS's own calls), the heartbeat, and the drain, which sends
  the oldest queued event, deletes it when confirmed, and on a CALLERROR or a timeout
  counts an attempt, waits n x MessageAttemptInterval, and after MessageAttempts moves it to
  the dead letters. A timeout also drops the connection: the answer may be lost with it.
  Then reconnect after an exponential backoff with jitter.
* One call of ours is outstanding at a time (``OcppEndpoint`` enforces it; a ``trio.Lock``
  queues the callers). Timeouts are ``trio.move_on_after`` scopes around the wait.
* From the CSMS: SendLocalList (Full, Differential), GetLocalListVersion, SetVariables
  (OCPPCommCtrlr HeartbeatInterval, MessageAttempts, MessageAttemptInterval), Reset.
  Anything else is answered with CALLERROR NotImplemented and logged.
* ``authorize`` asks the local list first (an entry decides; expired and blocked refuse),
  then the CSMS if a session is up; an unknown token with no CSMS is refused.

Time: trio's clock for every duration (so tests can run it on a MockClock), and an
injectable ``wall_clock_ms`` for the timestamps OCPP carries.
"""

from __future__ import annotations

import base64
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
import trio
import trio_websocket

from meshagent.csms.store import CsmsStore, QueuedEvent, StorageError, TransactionStart
from protocol import ocpp
from protocol.authlist import (
    AuthListSummary,
    AuthStatus,
    LocalAuthList,
    UpdateStatus,
    apply_send_local_list_untrusted,
)
from protocol.errors import BadPacket

log = logging.getLogger("meshagent.csms")
T = TypeVar("T")

IMPORT = "Energy.Active.Import.Register"
EXPORT = "Energy.Active.Export.Register"
COMM_CTRLR = "OCPPCommCtrlr"
DRAIN_BATCH = 100  # queued events read per SQLite round
CONFIRM_EVERY = 10  # confirmed events deleted per commit: a crash re-sends at most this many (+ the one in flight)


@attrs.frozen
class ClientSettings:
    url: str
    station_id: str
    password: str = ""
    ca_bundle: str | None = None
    call_timeout_s: float = 30.0
    message_attempts: int = 3
    message_attempt_interval_s: float = 60.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 300.0
    heartbeat_interval_s: float = 300.0
    connect_timeout_s: float = 10.0
    queue_poll_s: float = 5.0  # notice rows another process put back (csms-queue retry)
    vendor: str = "meshagent"
    model: str = "meshagent-v2g"

    @classmethod
    def from_section(cls, section: Any, node_id: str) -> ClientSettings:
        return cls(
            url=section.url, station_id=section.station_id or node_id, password=section.password,
            ca_bundle=None if section.ca_bundle is None else str(section.ca_bundle),
            call_timeout_s=section.call_timeout_s, message_attempts=section.message_attempts,
            message_attempt_interval_s=section.message_attempt_interval_s,
            reconnect_min_s=section.reconnect_min_s, reconnect_max_s=section.reconnect_max_s,
            heartbeat_interval_s=section.heartbeat_interval_s,
        )


@attrs.define
class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay is in [d/2, d], d = min * 2**n capped."""

    min_s: float
    max_s: float
    rng: random.Random
    failures: int = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


@attrs.frozen
class AuthDecision:
    accepted: bool
    status: str  # an OCPP AuthorizationStatusEnumType value
    source: str  # "local_list", "csms" or "unavailable"


@attrs.frozen
class ClientStatistics:
    online: bool
    connections: int
    connection_failures: int
    boots: int
    events_confirmed: int
    failed_attempts: int
    dead_lettered: int
    timeouts: int
    bad_frames: int
    not_implemented: int
    heartbeat_interval_s: float
    auth_list_version: int


class _Reconnect(Exception):
    """Drop this connection and start again (after the backoff)."""


_CONNECTION_FAILURES = (
    trio_websocket.ConnectionClosed, trio_websocket.HandshakeError, OSError,
    trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, _Reconnect,
)


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_connection_failure(e) for e in exc.exceptions)
    return isinstance(exc, _CONNECTION_FAILURES)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@attrs.define
class _Waiter:
    unique_id: str
    done: trio.Event = attrs.field(factory=trio.Event)
    result: ocpp.Answered | ocpp.Failed | None = None


@attrs.define
class _Session:
    ws: trio_websocket.WebSocketConnection
    endpoint: ocpp.OcppEndpoint
    waiter: _Waiter | None = None


async def _offload_to_thread(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def meter_value(timestamp: str, energy_import_wh: float, energy_export_wh: float,
                context: str) -> dict[str, Any]:
    """One OCPP MeterValue with the two billing registers (Wh, cumulative)."""
    return {
        "timestamp": timestamp,
        "sampledValue": [
            {"value": float(energy_import_wh), "context": context, "measurand": IMPORT,
             "unitOfMeasure": {"unit": "Wh"}},
            {"value": float(energy_export_wh), "context": context, "measurand": EXPORT,
             "unitOfMeasure": {"unit": "Wh"}},
        ],
    }


class CsmsClient:
    """See the module docstring. Start ``run`` in a nursery; call the station API from anywhere."""

    def __init__(
        self,
        settings: ClientSettings,
        store: CsmsStore,
        *,
        rng: random.Random | None = None,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
        on_reset: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._rng = rng or random.Random()
        self._wall_clock_ms = wall_clock_ms
        self._on_reset = on_reset
        self._limiter = trio.CapacityLimiter(1)  # one SQLite user at a time
        self._call_lock = trio.Lock()
        self._session: _Session | None = None
        self._online = False
        self._boot_reason = "PowerUp"
        self._reset_pending = False
        self._heartbeat_interval_s = settings.heartbeat_interval_s
        self._message_attempts = settings.message_attempts
        self._attempt_interval_s = settings.message_attempt_interval_s
        self._last_sent_at = 0.0
        self._queue_changed = trio.Event()
        self._progress = trio.Event()
        self._online_changed = trio.Event()
        self._stats_changed = trio.Event()
        self._statuses: dict[tuple[int, int], tuple[str, str]] = {}
        self._status_dirty: set[tuple[int, int]] = set()
        self._status_changed = trio.Event()
        self._auth_list = store.load_auth_list()
        self._id_token_status: dict[str, str] = {}
        self._stats: dict[str, int] = dict.fromkeys(
            ("connections", "connection_failures", "boots", "events_confirmed", "failed_attempts",
             "dead_lettered", "timeouts", "bad_frames", "not_implemented"), 0)

    # --- small helpers ---------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await _offload_to_thread(fn, *args, limiter=self._limiter)

    def _now_text(self) -> str:
        return ocpp.format_timestamp(self._wall_clock_ms())

    def _bump(self, counter: str) -> None:
        self._stats[counter] += 1
        self._poke("_stats_changed")

    def _poke(self, attr: str) -> None:
        event: trio.Event = getattr(self, attr)
        event.set()
        setattr(self, attr, trio.Event())

    @property
    def online(self) -> bool:
        return self._online

    def auth_summary(self) -> AuthListSummary:
        """Version and hash of the local auth list, for the node's mesh state record."""
        return self._auth_list.summary()

    @property
    def auth_list(self) -> LocalAuthList:
        return self._auth_list

    async def install_auth_list(self, auth_list: LocalAuthList) -> None:
        """Adopt a list pulled from a peer (only if newer); durable before it is used."""
        if self._auth_list.summary().is_older_than(auth_list.summary()):
            await self._db(self.store.save_auth_list, auth_list)
            self._auth_list = auth_list
            self._poke("_stats_changed")

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(online=self._online, heartbeat_interval_s=self._heartbeat_interval_s,
                                auth_list_version=self._auth_list.version, **self._stats)

    async def wait_online(self) -> None:
        while not self._online:
            await self._online_changed.wait()

    async def wait_statistics(self, predicate: Callable[[ClientStatistics], bool]) -> None:
        """Return once ``predicate(self.statistics())`` holds (checked at every change)."""
        while not predicate(self.statistics()):
            await self._stats_changed.wait()

    async def wait_offline(self) -> None:
        while self._online:
            await self._online_changed.wait()

    async def wait_drained(self) -> None:
        """Return when the queue is empty (every recorded event confirmed or dead-lettered)."""
        while True:
            progress = self._progress
            if (await self._db(self.store.head)) is None:
                return
            await progress.wait()

    # --- the station API: recording --------------------------------------------------------

    def _new_transaction_id(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    async def _record(self, transaction_id: str, payload: dict[str, Any], **kw: Any) -> int:
        if not self._online:
            payload["offline"] = True
        seq_no = await self._db(lambda: self.store.record_transaction_event(
            transaction_id, payload, self._wall_clock_ms(), **kw))
        self._poke("_queue_changed")
        return seq_no

    async def start_transaction(
        self, *, evse_id: int, connector_id: int, energy_import_wh: float, energy_export_wh: float,
        id_token: str | None = None, token_type: str = "ISO14443", trigger: str = "Authorized",
        transaction_id: str | None = None,
    ) -> str:
        """Record TransactionEvent Started; returns the transaction id.

        Raises ``StorageError`` (a clear one-line reason) if the queue cannot take a new
        transaction: the charger must not start one it could not bill.
        """
        transaction_id = transaction_id or self._new_transaction_id()
        now = self._now_text()
        payload: dict[str, Any] = {
            "eventType": "Started", "timestamp": now, "triggerReason": trigger,
            "transactionInfo": {"transactionId": transaction_id},
            "evse": {"id": evse_id, "connectorId": connector_id},
            "meterValue": [meter_value(now, energy_import_wh, energy_export_wh, "Transaction.Begin")],
        }
        if id_token is not None:
            payload["idToken"] = {"idToken": id_token, "type": token_type}
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        start = TransactionStart(transaction_id, evse_id, connector_id, id_token,
                                 token_type if id_token is not None else None)
        await self._record(transaction_id, payload, start=start, energy_import_wh=energy_import_wh,
                           energy_export_wh=energy_export_wh)
        return transaction_id

    async def update_transaction(
        self, transaction_id: str, *, energy_import_wh: float, energy_export_wh: float,
        trigger: str = "MeterValuePeriodic", charging_state: str | None = None,
    ) -> int:
        """Record TransactionEvent Updated with both registers; returns its seqNo."""
        now = self._now_text()
        info: dict[str, Any] = {"transactionId": transaction_id}
        if charging_state is not None:
            info["chargingState"] = charging_state
        payload = {
            "eventType": "Updated", "timestamp": now, "triggerReason": trigger, "transactionInfo": info,
            "meterValue": [meter_value(now, energy_import_wh, energy_export_wh, "Sample.Periodic")],
        }
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        return await self._record(transaction_id, payload, energy_import_wh=energy_import_wh,
                                  energy_export_wh=energy_export_wh)

    async def end_transaction(
        self, transaction_id: str, *, energy_import_wh: float, energy_export_wh: float,
        stopped_reason: str = "Local", trigger: str = "StopAuthorized",
    ) -> int:
        """Record TransactionEvent Ended with the final registers; returns its seqNo."""
        now = self._now_text()
        payload = {
            "eventType": "Ended", "timestamp": now, "triggerReason": trigger,
            "transactionInfo": {"transactionId": transaction_id, "stoppedReason": stopped_reason},
            "meterValue": [meter_value(now, energy_import_wh, energy_export_wh, "Transaction.End")],
        }
        ocpp.check_outgoing("TransactionEvent", {**payload, "seqNo": 0}, is_request=True)
        return await self._record(transaction_id, payload, ends=True, energy_import_wh=energy_import_wh,
                                  energy_export_wh=energy_export_wh)

    async def end_interrupted_transactions(self) -> list[str]:
        """At start: end every transaction a previous life left open; returns their ids.

        A transaction still open in the store when the agent starts was interrupted by a crash
        or a power loss (nothing in this process started it). OCPP 2.0.1 ends it with
        ``stoppedReason`` PowerLoss; ``PowerLoss`` is not a TriggerReasonEnumType value, so the
        trigger is ``AbnormalCondition``. The registers are the last ones recorded.
        """
        ended = []
        for tx in await self._db(self.store.open_transactions):
            await self.end_transaction(tx.transaction_id, energy_import_wh=tx.energy_import_wh,
                                       energy_export_wh=tx.energy_export_wh, stopped_reason="PowerLoss",
                                       trigger="AbnormalCondition")
            ended.append(tx.transaction_id)
            log.warning("csms %s: transaction %s left open by a previous run ended (PowerLoss)",
                        self.settings.station_id, tx.transaction_id)
        return ended

    async def meter_values(self, evse_id: int, *, energy_import_wh: float, energy_export_wh: float) -> None:
        """Record a MeterValues message (billing registers outside a transaction)."""
        payload = {"evseId": evse_id, "meterValue": [
            meter_value(self._now_text(), energy_import_wh, energy_export_wh, "Sample.Periodic")]}
        ocpp.check_outgoing("MeterValues", payload, is_request=True)
        await self._db(self.store.record_message, "MeterValues", payload, self._wall_clock_ms())
        self._poke("_queue_changed")

    def set_status(self, evse_id: int, connector_id: int, status: str) -> None:
        """Report a connector's status (Available, Occupied, ...); sent now or after the next boot.

        Statuses are current state, not billing: only the latest per connector is kept.
        """
        self._statuses[(evse_id, connector_id)] = (status, self._now_text())
        self._status_dirty.add((evse_id, connector_id))
        self._poke("_status_changed")

    # --- authorization ---------------------------------------------------------------------

    async def authorize(self, id_token: str, token_type: str = "ISO14443") -> AuthDecision:
        local = self._auth_list.authorize(id_token, token_type, self._wall_clock_ms())
        if local is not None:
            return AuthDecision(local is AuthStatus.ACCEPTED, local.value, "local_list")
        session = self._session
        if session is not None and self._online:
            try:
                result = await self._call(session, "Authorize",
                                          {"idToken": {"idToken": id_token, "type": token_type}})
            except _Reconnect:
                result = None
            if isinstance(result, ocpp.Answered):
                status = str(result.payload["idTokenInfo"]["status"])
                return AuthDecision(status == "Accepted", status, "csms")
        return AuthDecision(False, AuthStatus.UNKNOWN.value, "unavailable")

    # --- the connection --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a session with the CSMS up, forever (cancel the scope to stop)."""
        task_status.started()
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng)
        while True:
            try:
                await self._connect_and_serve(backoff)
            except Exception as exc:
                if not _is_connection_failure(exc):
                    raise
                self._bump("connection_failures")
                leaf = _first_leaf(exc)
                log.info("csms %s: connection lost: %s: %s", self.settings.station_id,
                         type(leaf).__name__, leaf)
            finally:
                self._set_online(False)
                self._session = None
            await trio.sleep(backoff.next_delay_s())

    def _set_online(self, online: bool) -> None:
        if online != self._online:
            self._online = online
            self._poke("_online_changed")
            self._poke("_stats_changed")

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.url.startswith("wss://"):
            return None
        return ssl.create_default_context(cafile=self.settings.ca_bundle)

    async def _connect_and_serve(self, backoff: Backoff) -> None:
        s = self.settings
        parts = urlsplit(s.url)
        host = parts.hostname or "localhost"
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        resource = (parts.path.rstrip("/") or "") + "/" + quote(s.station_id, safe="")
        headers = []
        if s.password:
            token = base64.b64encode(f"{s.station_id}:{s.password}".encode()).decode("ascii")
            headers.append((b"Authorization", ("Basic " + token).encode("ascii")))
        # We open and close the TCP (or TLS) stream ourselves rather than use
        # open_websocket_url: after an abnormal closure trio-websocket 0.12 leaves the socket
        # for the garbage collector, and a reconnecting client must not leak one per outage.
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        with trio.fail_after(s.connect_timeout_s):
            stream = await trio.open_tcp_stream(host, port)
            ssl_context = self._ssl_context()
            if ssl_context is not None:
                stream = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
                try:
                    await stream.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        try:
            async with trio.open_nursery() as ws_nursery:
                with trio.fail_after(s.connect_timeout_s):
                    ws = await trio_websocket.wrap_client_stream(
                        ws_nursery, stream, f"{host}:{port}", resource, subprotocols=[ocpp.SUBPROTOCOL],
                        extra_headers=headers, max_message_size=ocpp.DEFAULT_MAX_MESSAGE_BYTES)
                try:
                    await self._serve(ws, backoff)
                finally:
                    # Close handshake first (the reader task must still run to see the
                    # answer), bounded; then stop the reader.
                    with trio.move_on_after(1) as cleanup:
                        cleanup.shield = True
                        await ws.aclose()
                    ws_nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, ws: trio_websocket.WebSocketConnection, backoff: Backoff) -> None:
        if ws.subprotocol != ocpp.SUBPROTOCOL:
            raise _Reconnect(f"CSMS did not accept subprotocol {ocpp.SUBPROTOCOL}")
        self._bump("connections")
        session = _Session(ws, ocpp.OcppEndpoint(f"{self._rng.getrandbits(32):08x}"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receiver, session)
            await self._boot(session)
            backoff.reset()
            self._session = session
            self._set_online(True)
            nursery.start_soon(self._heartbeat, session)
            nursery.start_soon(self._send_statuses, session)
            await self._drain(session)

    async def _call(self, session: _Session, action: str, payload: dict[str, Any]) -> ocpp.Answered | ocpp.Failed | None:
        """One call; None on timeout (the connection is then dropped: raises _Reconnect)."""
        async with self._call_lock:
            if session.ws.closed is not None:
                raise _Reconnect("connection closed")
            unique_id, text = session.endpoint.call(action, payload)
            waiter = session.waiter = _Waiter(unique_id)
            await session.ws.send_message(text)
            self._last_sent_at = trio.current_time()
            with trio.move_on_after(self.settings.call_timeout_s):
                await waiter.done.wait()
            session.waiter = None
            if waiter.result is None:
                session.endpoint.abandon()
                self._bump("timeouts")
                log.warning("csms %s: no answer to %s within %gs", self.settings.station_id, action,
                            self.settings.call_timeout_s)
            return waiter.result

    async def _receiver(self, session: _Session) -> None:
        while True:
            text = await session.ws.get_message()
            try:
                event = session.endpoint.receive_untrusted(text)
            except ocpp.BadFrame as exc:
                self._bump("bad_frames")
                log.warning("csms %s: bad frame dropped: %s", self.settings.station_id, exc)
                if exc.reply is not None:
                    await session.ws.send_message(exc.reply)
                waiter = session.waiter
                if waiter is not None and session.endpoint.outstanding is None and not waiter.done.is_set():
                    waiter.result = ocpp.Failed("?", waiter.unique_id, exc.error_code, str(exc))
                    waiter.done.set()
                continue
            if isinstance(event, ocpp.Answered | ocpp.Failed):
                waiter = session.waiter
                if waiter is not None and waiter.unique_id == event.unique_id:
                    waiter.result = event
                    waiter.done.set()
            elif isinstance(event, ocpp.Requested):
                await session.ws.send_message(await self._handle_request(session, event))
                if self._reset_pending:
                    self._reset_pending = False
                    raise _Reconnect("reset requested by the CSMS")
            else:
                log.info("csms %s: ignored %s (%s)", self.settings.station_id, event.unique_id, event.why)

    async def _boot(self, session: _Session) -> None:
        payload = {"chargingStation": {"model": self.settings.model, "vendorName": self.settings.vendor},
                   "reason": self._boot_reason}
        while True:
            result = await self._call(session, "BootNotification", payload)
            if result is None:
                raise _Reconnect("no answer to BootNotification")
            if isinstance(result, ocpp.Answered):
                interval = int(result.payload["interval"])
                if result.payload["status"] == "Accepted":
                    if interval > 0:
                        self._heartbeat_interval_s = float(interval)
                    self._bump("boots")
                    self._boot_reason = "Unknown"  # a reconnection, not a power-up
                    return
                # Pending or Rejected: OCPP says wait the interval, then boot again.
                await trio.sleep(max(interval, 1) if interval > 0 else self._heartbeat_interval_s)
            else:
                await trio.sleep(self.settings.reconnect_min_s)

    async def _heartbeat(self, session: _Session) -> None:
        while True:
            due = self._last_sent_at + self._heartbeat_interval_s
            if trio.current_time() >= due:
                if await self._call(session, "Heartbeat", {}) is None:
                    raise _Reconnect("no answer to Heartbeat")
                continue
            await trio.sleep_until(due)

    async def _send_statuses(self, session: _Session) -> None:
        self._status_dirty = set(self._statuses)  # everything again after a boot
        while True:
            changed = self._status_changed
            while self._status_dirty:
                key = min(self._status_dirty)
                self._status_dirty.discard(key)
                status, at = self._statuses[key]
                result = await self._call(session, "StatusNotification", {
                    "timestamp": at, "connectorStatus": status, "evseId": key[0], "connectorId": key[1]})
                if result is None:
                    self._status_dirty.add(key)
                    raise _Reconnect("no answer to StatusNotification")
            await changed.wait()

    async def _drain(self, session: _Session) -> None:
        """Send the queue in order. Confirmed events are deleted every ``CONFIRM_EVERY`` (one
        fsync each): a crash before the delete only means the CSMS sees those events again
        (at most ``CONFIRM_EVERY`` plus the one in flight), and it recognises them by
        (transactionId, seqNo) and bills them once."""
        confirmed: list[int] = []
        try:
            while True:
                changed = self._queue_changed
                batch = await self._db(self.store.pending, DRAIN_BATCH)
                if not batch:
                    with trio.move_on_after(self.settings.queue_poll_s):
                        await changed.wait()
                    continue
                for event in batch:
                    result = await self._call(session, event.action, dict(event.payload))
                    if isinstance(result, ocpp.Answered):
                        self._note_id_token_info(event, result.payload)
                        confirmed.append(event.id)
                        self._stats["events_confirmed"] += 1
                        if len(confirmed) >= CONFIRM_EVERY:  # bound what a crash re-sends
                            await self._flush_confirmed(confirmed)
                        continue
                    await self._flush_confirmed(confirmed)
                    await self._failed_attempt(event, result)
                    break  # re-read the queue: the head may have changed
                await self._flush_confirmed(confirmed)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_confirmed(confirmed)

    def _note_id_token_info(self, event: QueuedEvent, answer: Any) -> None:
        info = answer.get("idTokenInfo") if isinstance(answer, dict) else None
        if event.action != "TransactionEvent" or event.transaction_id is None or not isinstance(info, dict):
            return
        status = info.get("status")
        if isinstance(status, str):
            self._id_token_status[event.transaction_id] = status
            if status != "Accepted":
                log.warning("csms %s: idToken of transaction %s answered %s", self.settings.station_id,
                            event.transaction_id, status)
            self._poke("_stats_changed")

    def id_token_status(self, transaction_id: str) -> str | None:
        """The CSMS's last idTokenInfo status for a transaction (from its TransactionEvent
        answers), None if it said none: Invalid, Blocked or Expired ends it (StopTxOnInvalidId)."""
        return self._id_token_status.get(transaction_id)

    async def _flush_confirmed(self, confirmed: list[int]) -> None:
        if confirmed:
            ids = list(confirmed)
            await self._db(self.store.confirm_many, ids)
            del confirmed[: len(ids)]
            self._poke("_progress")
            self._poke("_stats_changed")

    async def _failed_attempt(self, event: QueuedEvent, result: ocpp.Failed | None) -> None:
        error = "timeout" if result is None else f"{result.error_code}: {result.description}"
        self._bump("failed_attempts")
        attempts = await self._db(self.store.note_failure, event.id, error)
        if attempts >= self._message_attempts:
            await self._db(self.store.dead_letter, event.id, self._wall_clock_ms())
            self._bump("dead_lettered")
            self._poke("_progress")
            log.error("csms %s: %s seqNo %s of %s dead-lettered after %d attempts (%s); "
                      "`meshagent csms-queue retry` sends it again", self.settings.station_id,
                      event.action, event.seq_no, event.transaction_id, attempts, error)
        if result is None:
            raise _Reconnect(f"no answer to {event.action}")
        await trio.sleep(self._attempt_interval_s * attempts)

    # --- calls from the CSMS ---------------------------------------------------------------

    async def _handle_request(self, session: _Session, request: ocpp.Requested) -> str:
        endpoint = session.endpoint
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = {
            "SendLocalList": self._on_send_local_list,
            "GetLocalListVersion": self._on_get_local_list_version,
            "SetVariables": self._on_set_variables,
            "Reset": self._on_reset_request,
        }.get(request.action)
        if handler is None:
            self._bump("not_implemented")
            log.warning("csms %s: %s from the CSMS is not implemented; answered NotImplemented",
                        self.settings.station_id, request.action)
            return endpoint.answer_error(request, ocpp.NOT_IMPLEMENTED, f"{request.action} is not implemented")
        return endpoint.answer(request, await handler(dict(request.payload)))

    async def _on_send_local_list(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            new, status = apply_send_local_list_untrusted(self._auth_list, payload)
        except BadPacket as exc:
            log.warning("csms %s: SendLocalList refused: %s", self.settings.station_id, exc)
            return {"status": UpdateStatus.FAILED.value}
        if status is UpdateStatus.ACCEPTED:
            try:
                await self._db(self.store.save_auth_list, new)
            except StorageError as exc:
                log.error("%s", exc)
                return {"status": UpdateStatus.FAILED.value}
            self._auth_list = new
            self._poke("_stats_changed")
            log.info("csms %s: local auth list now version %d (%d entries)", self.settings.station_id,
                     new.version, len(new.entries))
        return {"status": status.value}

    async def _on_get_local_list_version(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"versionNumber": self._auth_list.version}

    async def _on_set_variables(self, payload: dict[str, Any]) -> dict[str, Any]:
        results = []
        for item in payload["setVariableData"]:
            component, variable = item["component"], item["variable"]
            name, instance = variable["name"], variable.get("instance")
            status = "Accepted"
            try:
                value = float(item["attributeValue"])
            except ValueError:
                value = float("nan")
            if component["name"] != COMM_CTRLR:
                status = "UnknownComponent"
            elif item.get("attributeType", "Actual") != "Actual":
                status = "NotSupportedAttributeType"
            elif not value > 0 or value != value:
                status = "Rejected"
            elif name == "HeartbeatInterval":
                self._heartbeat_interval_s = value
                self._poke("_stats_changed")
            elif name == "MessageAttempts" and instance == "TransactionEvent":
                self._message_attempts = int(value)
            elif name == "MessageAttemptInterval" and instance == "TransactionEvent":
                self._attempt_interval_s = value
            else:
                status = "UnknownVariable"
            results.append({"attributeStatus": status, "component": component, "variable": variable})
        return {"setVariableResult": results}

    async def _on_reset_request(self, payload: dict[str, Any]) -> dict[str, Any]:
        kind = str(payload["type"])
        log.warning("csms %s: Reset (%s) requested by the CSMS", self.settings.station_id, kind)
        self._boot_reason = "RemoteReset"
        if self._on_reset is not None:
            self._on_reset(kind)
        # The CSMS session restarts (the receiver drops the connection once this answer is
        # sent) and the next BootNotification says RemoteReset.
        self._reset_pending = True
        return {"status": "Accepted"}
