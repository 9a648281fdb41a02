"""Call plumbing: one call of ours outstanding at a time, and the receiver.

``_call`` sends a CALL and waits for its CALLRESULT/CALLERROR (None on timeout: the
connection is then dropped, the answer may be lost with it). ``_receiver`` reads every frame:
answers wake the waiting call, calls from the CSMS go to ``_handle_request``
(``requests.py``), a bad frame is counted and answered as OCPP says.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio_websocket

from meshagent.csms.core import ClientCore, log
from protocol import ocpp


class _Reconnect(Exception):
    """Drop this connection and start again (after the backoff)."""


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


class CallMixin(ClientCore):
    async def _call(self, session: Any, action: str, payload: dict[str, Any]) -> ocpp.Answered | ocpp.Failed | None:
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
