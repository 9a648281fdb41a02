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

from collections.abc import Callable

from meshagent.csms.calls import _Reconnect, _Session
from meshagent.csms.connection import Backoff, ConnectionMixin
from meshagent.csms.core import (
    COMM_CTRLR,
    CONFIRM_EVERY,
    DRAIN_BATCH,
    ClientCore,
    ClientSettings,
    ClientStatistics,
    log,
)
from meshagent.csms.payloads import EXPORT, IMPORT, meter_value
from meshagent.csms.requests import CsmsRequestsMixin
from meshagent.csms.transactions import AuthDecision, TransactionApi
from protocol.authlist import AuthListSummary, LocalAuthList

__all__ = ["COMM_CTRLR", "CONFIRM_EVERY", "DRAIN_BATCH", "EXPORT", "IMPORT", "AuthDecision", "Backoff",
           "ClientCore", "ClientSettings", "ClientStatistics", "CsmsClient", "_Reconnect", "_Session", "log",
           "meter_value"]


class CsmsClient(TransactionApi, CsmsRequestsMixin, ConnectionMixin):
    """See the module docstring. Start ``run`` in a nursery; call the station API from anywhere.

    The six jobs live in their own modules: the station API (``transactions``), the
    connection with TLS and backoff (``connection``), call plumbing (``calls``), boot,
    heartbeat and statuses (``station``), the outbox with retries and dead letters
    (``outbox``), and requests from the CSMS (``requests``); ``core`` holds what they share.
    """

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
