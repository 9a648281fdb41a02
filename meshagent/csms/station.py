"""The station's own messages on every connection: BootNotification (its interval sets the
heartbeat; Pending/Rejected wait and boot again), Heartbeat when nothing else was sent for an
interval, and StatusNotification (the latest per connector, all again after every boot)."""

from __future__ import annotations

import trio

from meshagent.csms import payloads
from meshagent.csms.calls import CallMixin, _Reconnect, _Session
from protocol import ocpp


class StationMixin(CallMixin):
    async def _boot(self, session: _Session) -> None:
        payload = payloads.boot_notification(self._boot_reason, self.settings.model, self.settings.vendor)
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
                if await self._call(session, "Heartbeat", payloads.heartbeat()) is None:
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
                result = await self._call(session, "StatusNotification",
                                          payloads.status_notification(at, status, key[0], key[1]))
                if result is None:
                    self._status_dirty.add(key)
                    raise _Reconnect("no answer to StatusNotification")
            await changed.wait()
