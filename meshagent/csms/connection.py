"""The connection: WebSocket (subprotocol ocpp2.0.1) over TCP or TLS (``wss://`` checked
against the CA bundle), HTTP basic auth, and reconnecting forever with exponential backoff
and jitter. Each connection boots, then runs the receiver, heartbeat, statuses and drain
until it fails."""

from __future__ import annotations

import base64
import random
import ssl
from urllib.parse import quote, urlsplit

import attrs
import trio
import trio_websocket

from meshagent.csms.calls import _Reconnect, _Session
from meshagent.csms.core import log
from meshagent.csms.outbox import OutboxMixin
from meshagent.csms.station import StationMixin
from protocol import ocpp


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


class ConnectionMixin(StationMixin, OutboxMixin):
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
