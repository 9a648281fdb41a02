"""The local authorization list, replicated over the mesh; and the one publisher of the state record.

Theory of operation
-------------------
The CSMS pushes its LocalAuthList to the chargers it reaches (SendLocalList). A charger that
keeps it durably can authorize a known idToken while the CSMS is down; the mesh spreads it
to chargers the CSMS never reached, so that every charger can.

* **Where the list lives.** In the ``auth_list`` row of the SQLite file ``[csms].queue``
  (``meshagent.csms.store``, hash-checked when loaded), whether or not a CSMS is configured:
  a node without a ``[csms].url`` opens that file for its list alone (``StoredAuthList``); a
  node with one shares it with its CSMS client (``ClientAuthList``), which also takes lists
  the CSMS sends. Either way a list is on disk before it is used or advertised.
* **Advertising.** The list's ``(version, hash)`` travels in this node's state record
  (``StateRecord.auth_list_version`` / ``auth_list_hash``, signed by the node). The record
  is one value fed by two sources, the control loop's offer and this summary, so exactly one
  object publishes it: ``RecordPublisher`` keeps both parts and republishes the merge when
  either changes. A node with neither (no devices, no list) publishes nothing, as before.
* **Pulling.** ``AuthSync`` watches ``RecordUpdated`` events. When live peers advertise a list
  that should replace ours (``AuthListSummary.is_older_than``: a newer version, or the same
  version with a greater hash), it picks the best advertised summary and asks one of the peers
  advertising it, chosen at random, with ``AuthListRequest``. The peer answers with
  ``AuthListChunk`` datagrams (10 entries each, under 1,400 bytes sealed). One transfer at a
  time: chunks from anyone else, or for another list, are ignored. The request is repeated
  while chunks stop coming (lost datagrams: the assembler keeps what it has and ignores
  duplicates), and the transfer is abandoned after ``transfer_timeout_s`` without progress;
  the next peer advertising the same list is tried. The ``AuthListAssembler`` rebuilds the
  list and checks it against the hash; a peer whose chunks do not rebuild the list it
  advertised (wrong hash, inconsistent chunks, or chunks of another list) is refused,
  counted (``transfers_refused``), and not asked again for that list for ``refused_backoff_s``.
  A completed list is installed durably, then advertised in our record.
* **Serving.** An ``AuthListRequest`` from a peer whose list is older than ours is answered
  with our chunks, paced in small bursts, at most ``max_serving`` peers at a time and one
  transfer per peer; anything else is ignored and counted.

The chunks travel in signed envelopes from enrolled nodes, and the advertised summary is
signed by its author: the hash guards against mixed or corrupted transfers and against a
peer serving something other than what it advertised; the CSMS stays the source of truth.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from meshagent.csms.client import AuthDecision, CsmsClient
from meshagent.csms.store import CsmsStore, StorageError
from meshagent.mesh.node import MeshNode
from protocol.authlist import (
    DEFAULT_CHUNK_ENTRIES,
    AuthListAssembler,
    AuthListChunk,
    AuthListRequest,
    AuthListSummary,
    AuthStatus,
    LocalAuthList,
    chunks_for,
    wants_list,
)
from protocol.errors import BadPacket
from protocol.state import AUTH_LIST_HASH_BYTES, StateRecord
from protocol.swim import MemberDead, MemberLeft, MemberRemoved, RecordRemoved, RecordUpdated

log = logging.getLogger("meshagent.csms.authsync")

NO_LIST = AuthListSummary(0, b"")
ZERO_OFFER: dict[str, Any] = {
    "discharge_available_w": 0.0, "energy_above_min_soc_wh": 0.0, "soc": 0.0,
    "thermal_derating": 0.0, "faults": (),
}


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def local_decision(auth_list: LocalAuthList, id_token: str, token_type: str, now_ms: int) -> AuthDecision:
    """What the charger decides from its list alone (the CSMS unreachable): unknown refuses."""
    status = auth_list.authorize(id_token, token_type, now_ms)
    if status is None:
        return AuthDecision(False, AuthStatus.UNKNOWN.value, "unavailable")
    return AuthDecision(status is AuthStatus.ACCEPTED, status.value, "local_list")


# --- where the list lives ------------------------------------------------------------------------


class AuthListKeeper(Protocol):
    """The node's durable list: a CSMS client's (``ClientAuthList``) or one of its own."""

    @property
    def auth_list(self) -> LocalAuthList: ...

    async def install_auth_list(self, auth_list: LocalAuthList) -> None: ...

    async def wait_auth_list_changed(self, than: AuthListSummary) -> None: ...

    async def authorize(self, id_token: str, token_type: str = "ISO14443") -> AuthDecision: ...


Offload = Callable[..., Awaitable[Any]]


async def _in_a_thread(fn: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter) -> Any:
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


class StoredAuthList:
    """The list of a node without a CSMS client: the ``auth_list`` row of its store, nothing else."""

    def __init__(self, store: CsmsStore, *, wall_clock_ms: Callable[[], int] = _wall_clock_ms,
                 offload: Offload = _in_a_thread) -> None:
        """``offload`` runs the store's blocking writes; a worker thread unless a test on the
        autojump clock needs them inline (a clock that jumps while a thread works is not virtual)."""
        self.store = store
        self._offload = offload
        self._list = store.load_auth_list()
        self._wall_clock_ms = wall_clock_ms
        self._limiter = trio.CapacityLimiter(1)
        self._changed = trio.Event()

    @property
    def auth_list(self) -> LocalAuthList:
        return self._list

    async def install_auth_list(self, auth_list: LocalAuthList) -> None:
        """Adopt ``auth_list`` if it should replace ours; durable before it is used."""
        if self._list.summary().is_older_than(auth_list.summary()):
            await self._offload(self.store.save_auth_list, auth_list, limiter=self._limiter)
            self._list = auth_list
            self._changed.set()
            self._changed = trio.Event()

    async def wait_auth_list_changed(self, than: AuthListSummary) -> None:
        while self._list.summary() == than:
            await self._changed.wait()

    async def authorize(self, id_token: str, token_type: str = "ISO14443") -> AuthDecision:
        await trio.lowlevel.checkpoint()
        return local_decision(self._list, id_token, token_type, self._wall_clock_ms())


class ClientAuthList:
    """A CSMS client's list (the CSMS's pushes and the mesh's pulls land in the same place)."""

    def __init__(self, client: CsmsClient) -> None:
        self.client = client

    @property
    def auth_list(self) -> LocalAuthList:
        return self.client.auth_list

    async def install_auth_list(self, auth_list: LocalAuthList) -> None:
        await self.client.install_auth_list(auth_list)

    async def wait_auth_list_changed(self, than: AuthListSummary) -> None:
        # the client signals every change of its list through its statistics
        await self.client.wait_statistics(lambda _s: self.client.auth_summary() != than)

    async def authorize(self, id_token: str, token_type: str = "ISO14443") -> AuthDecision:
        return await self.client.authorize(id_token, token_type)


# --- the state record ----------------------------------------------------------------------------


class RecordPublisher:
    """The one place this node's state record is published from: offer and auth summary merged.

    ``set_offer`` (the control loop, whenever it decides to publish) and ``set_auth_summary``
    (``AuthSync``, when the list changes) each replace their part and publish the whole. A
    node with no offer yet publishes zero capacity with its list summary.
    """

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self._offer: dict[str, Any] | None = None
        self._auth = NO_LIST

    @property
    def auth_summary(self) -> AuthListSummary:
        return self._auth

    def set_offer(self, **offer: Any) -> StateRecord | None:
        """The control loop's fields (``discharge_available_w``, ``soc``...): publish now."""
        self._offer = dict(offer)
        return self.publish()

    def set_auth_summary(self, summary: AuthListSummary) -> StateRecord | None:
        """This node's list changed: publish if the summary differs from the one advertised."""
        if summary.version == 0:
            summary = NO_LIST
        if summary == self._auth:
            return None
        self._auth = summary
        return self.publish()

    def publish(self) -> StateRecord | None:
        if self._offer is None and self._auth.version == 0:
            return None  # nothing to say: no devices and no list
        return self.node.publish_record(
            **(self._offer if self._offer is not None else ZERO_OFFER),
            auth_list_version=self._auth.version,
            auth_list_hash=self._auth.list_hash,
        )


# --- replication ---------------------------------------------------------------------------------


@attrs.frozen
class AuthSyncSettings:
    transfer_timeout_s: float = 5.0  # abandon a transfer after this long without a new chunk
    request_interval_s: float = 1.0  # ask again after this long without a new chunk
    failure_backoff_s: float = 10.0  # a peer that timed out is not asked again for this list meanwhile
    refused_backoff_s: float = 300.0  # nor one whose chunks did not rebuild what it advertised
    max_serving: int = 4  # peers served at once
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES
    burst_chunks: int = 16  # chunks sent back to back, then a pause
    burst_pause_s: float = 0.002


@attrs.frozen
class AuthSyncStatistics:
    list_version: int
    pulls_started: int
    pulls_completed: int
    pulls_timed_out: int
    transfers_refused: int
    chunks_received: int
    chunks_ignored: int
    requests_answered: int
    requests_ignored: int
    chunks_sent: int


@attrs.define
class _Transfer:
    peer: str
    target: AuthListSummary
    assembler: AuthListAssembler
    started_at: float
    last_chunk_at: float = -math.inf
    progress: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False
    result: LocalAuthList | None = None
    refused: str | None = None


def advertised(record: StateRecord) -> AuthListSummary | None:
    """The list a record advertises, if any."""
    if record.auth_list_version < 1 or len(record.auth_list_hash) != AUTH_LIST_HASH_BYTES:
        return None
    return AuthListSummary(record.auth_list_version, record.auth_list_hash)


class AuthSync:
    """See the module docstring. Start with ``await nursery.start(sync.run)`` once the node runs."""

    def __init__(self, node: MeshNode, keeper: AuthListKeeper, publisher: RecordPublisher, *,
                 settings: AuthSyncSettings | None = None, rng: random.Random | None = None) -> None:
        self.node = node
        self.keeper = keeper
        self.publisher = publisher
        self.settings = settings or AuthSyncSettings()
        self._rng = rng or random.Random()
        self._adverts: dict[str, AuthListSummary] = {}
        self._failed: dict[tuple[str, AuthListSummary], float] = {}  # -> not before
        self._changed = trio.Event()
        self._transfer: _Transfer | None = None
        self._serving: set[str] = set()
        self._chunks: tuple[AuthListSummary, tuple[AuthListChunk, ...]] | None = None
        self._stats: dict[str, int] = dict.fromkeys(
            ("pulls_started", "pulls_completed", "pulls_timed_out", "transfers_refused", "chunks_received",
             "chunks_ignored", "requests_answered", "requests_ignored", "chunks_sent"), 0)

    def statistics(self) -> AuthSyncStatistics:
        return AuthSyncStatistics(list_version=self.keeper.auth_list.version, **self._stats)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        events = node.subscribe()
        node.on_message(AuthListRequest, self._on_request)
        node.on_message(AuthListChunk, self._on_chunk)
        for member in node.members():  # records that arrived before we listened
            record = node.record(member.node_id)
            if record is not None:
                self._note(record)
        self.publisher.set_auth_summary(self.keeper.auth_list.summary())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_events, events)
            nursery.start_soon(self._watch_local)
            task_status.started()
            await self._pull_loop()

    # --- what peers advertise ------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _note(self, record: StateRecord) -> None:
        summary = advertised(record)
        if summary is None:
            self._adverts.pop(record.node_id, None)
        elif self._adverts.get(record.node_id) != summary:
            self._adverts[record.node_id] = summary
            self._poke()

    async def _watch_events(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async with events:
            async for ev in events:
                if isinstance(ev, RecordUpdated):
                    self._note(ev.record)
                elif isinstance(ev, MemberDead | MemberLeft):
                    self._adverts.pop(ev.member.node_id, None)
                elif isinstance(ev, MemberRemoved | RecordRemoved):
                    self._adverts.pop(ev.node_id, None)

    async def _watch_local(self) -> None:
        """Our list changed (the CSMS, or a pull): advertise it; what counts as newer moved."""
        while True:
            summary = self.keeper.auth_list.summary()
            self.publisher.set_auth_summary(summary)
            self._poke()
            await self.keeper.wait_auth_list_changed(summary)

    def _candidates(self, now: float) -> tuple[AuthListSummary | None, list[str], float]:
        """The best list to pull, the live peers advertising it (shuffled), and when to look again."""
        mine = self.keeper.auth_list.summary()
        best: AuthListSummary | None = None
        peers: list[str] = []
        wake = math.inf
        for node_id, summary in sorted(self._adverts.items()):
            member = self.node.member(node_id)
            if member is None or not member.live or not mine.is_older_than(summary):
                continue
            not_before = self._failed.get((node_id, summary), -math.inf)
            if not_before > now:
                wake = min(wake, not_before)
                continue
            key = (summary.version, summary.list_hash)
            if best is None or key > (best.version, best.list_hash):
                best, peers = summary, [node_id]
            elif summary == best:
                peers.append(node_id)
        self._rng.shuffle(peers)
        return best, peers, wake

    # --- pulling -------------------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        while True:
            changed = self._changed
            now = trio.current_time()
            self._failed = {k: t for k, t in self._failed.items() if t > now}
            target, peers, wake = self._candidates(now)
            if target is None:
                with trio.move_on_at(wake):
                    await changed.wait()
                continue
            for peer in peers:
                if not self.keeper.auth_list.summary().is_older_than(target):
                    break  # the CSMS or another pull got us there meanwhile
                pulled = await self._pull_from(peer, target)
                if pulled is not None:
                    try:
                        await self.keeper.install_auth_list(pulled)
                    except StorageError as exc:  # keep serving what we have; try again later
                        log.error("%s", exc)
                        self._failed[(peer, target)] = trio.current_time() + self.settings.failure_backoff_s
                        break
                    self.publisher.set_auth_summary(self.keeper.auth_list.summary())
                    log.info("auth list version %d (%d entries) pulled from %s", pulled.version,
                             len(pulled.entries), peer)
                    break

    async def _pull_from(self, peer: str, target: AuthListSummary) -> LocalAuthList | None:
        member = self.node.member(peer)
        if member is None:
            return None
        s = self.settings
        mine = self.keeper.auth_list
        t = _Transfer(peer, target, AuthListAssembler(mine), trio.current_time())
        self._transfer = t
        self._stats["pulls_started"] += 1
        request = AuthListRequest(have_version=mine.version, have_hash=mine.list_hash)
        try:
            requested_at = -math.inf
            while not t.done:
                now = trio.current_time()
                quiet_since = max(t.started_at, t.last_chunk_at)
                if now - quiet_since >= s.transfer_timeout_s:
                    self._stats["pulls_timed_out"] += 1
                    self._failed[(peer, target)] = now + s.failure_backoff_s
                    log.info("auth list pull from %s timed out", peer)
                    return None
                if now - max(requested_at, t.last_chunk_at) >= s.request_interval_s:
                    await self.node.send(member.address, request)
                    requested_at = now
                progress = t.progress
                with trio.move_on_after(s.request_interval_s):
                    await progress.wait()
        finally:
            self._transfer = None
        if t.result is not None:
            self._stats["pulls_completed"] += 1
            return t.result
        self._stats["transfers_refused"] += 1
        self._failed[(peer, target)] = trio.current_time() + s.refused_backoff_s
        log.warning("auth list from %s refused: %s", peer, t.refused)
        return None

    def _on_chunk(self, sender_id: str, _source: Any, chunk: AuthListChunk) -> None:
        t = self._transfer
        if t is None or sender_id != t.peer or t.done:
            self._stats["chunks_ignored"] += 1
            return
        if (chunk.version, chunk.list_hash) != (t.target.version, t.target.list_hash):
            self._finish(t, refused=f"it sent chunks of version {chunk.version} hash "
                                    f"{chunk.list_hash.hex()[:16]}..., not the list it advertised")
            return
        try:
            result = t.assembler.offer_untrusted(chunk)
        except BadPacket as exc:
            self._finish(t, refused=str(exc))
            return
        self._stats["chunks_received"] += 1
        t.last_chunk_at = trio.current_time()
        if result is not None:
            t.result = result
            self._finish(t)
        else:
            t.progress.set()
            t.progress = trio.Event()

    @staticmethod
    def _finish(t: _Transfer, refused: str | None = None) -> None:
        t.done = True
        t.refused = refused
        t.progress.set()

    # --- serving -------------------------------------------------------------------------------

    def _on_request(self, sender_id: str, source: Any, request: AuthListRequest) -> None:
        mine = self.keeper.auth_list
        if (mine.version < 1 or not wants_list(mine.summary(), request) or sender_id in self._serving
                or len(self._serving) >= self.settings.max_serving):
            self._stats["requests_ignored"] += 1
            return
        if not source[0]:  # came over a stream: answer the member's advertised address
            member = self.node.member(sender_id)
            if member is None:
                self._stats["requests_ignored"] += 1
                return
            source = member.address
        self._serving.add(sender_id)
        self._stats["requests_answered"] += 1
        self.node.spawn(self._serve, sender_id, source, mine)

    async def _serve(self, sender_id: str, address: Any, auth_list: LocalAuthList) -> None:
        s = self.settings
        try:
            summary = auth_list.summary()
            if self._chunks is None or self._chunks[0] != summary:
                self._chunks = (summary, chunks_for(auth_list, s.chunk_entries))
            for i, chunk in enumerate(self._chunks[1]):
                await self.node.send(address, chunk)
                self._stats["chunks_sent"] += 1
                if (i + 1) % s.burst_chunks == 0:
                    await trio.sleep(s.burst_pause_s)
        except OSError as exc:  # best effort: the asker times out and asks again
            log.debug("auth list to %s: %s", sender_id, exc)
        finally:
            self._serving.discard(sender_id)
