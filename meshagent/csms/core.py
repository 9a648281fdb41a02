"""The state every part of the CSMS client shares, and its small helpers.

``ClientCore`` holds the settings, the store, the counters and the events the parts wake
each other with; the parts (``calls``, ``station``, ``outbox``, ``requests``,
``connection``, ``transactions``) are mixins over it, and ``CsmsClient`` (``client.py``)
puts them together. SQLite work goes through ``_db``, which runs it on ``offload`` (a
worker thread by default; tests on the autojump clock inject an inline runner).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from meshagent.csms.store import CsmsStore
from protocol import ocpp

log = logging.getLogger("meshagent.csms")
T = TypeVar("T")
Offload = Callable[..., Awaitable[Any]]

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


async def _offload_to_thread(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter) -> T:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ClientCore:
    """Shared state; see the module docstring."""

    def __init__(
        self,
        settings: ClientSettings,
        store: CsmsStore,
        *,
        rng: random.Random | None = None,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
        on_reset: Callable[[str], None] | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._rng = rng or random.Random()
        self._wall_clock_ms = wall_clock_ms
        self._on_reset = on_reset
        self._offload: Offload = offload or _offload_to_thread
        self._limiter = trio.CapacityLimiter(1)  # one SQLite user at a time
        self._call_lock = trio.Lock()
        self._session: Any = None  # the calls module's _Session while a connection is up
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

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._offload(fn, *args, limiter=self._limiter)
        return result

    def _now_text(self) -> str:
        return ocpp.format_timestamp(self._wall_clock_ms())

    def _bump(self, counter: str) -> None:
        self._stats[counter] += 1
        self._poke("_stats_changed")

    def _poke(self, attr: str) -> None:
        event: trio.Event = getattr(self, attr)
        event.set()
        setattr(self, attr, trio.Event())

    async def _call(self, session: Any, action: str, payload: dict[str, Any]) -> ocpp.Answered | ocpp.Failed | None:
        raise NotImplementedError  # calls.CallMixin

    async def _handle_request(self, session: Any, request: ocpp.Requested) -> str:
        raise NotImplementedError  # requests.CsmsRequestsMixin
