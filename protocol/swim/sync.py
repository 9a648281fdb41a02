"""Synchronisation: push-pull of full state, join, rejoin (memberlist's ``pushPull``/``Join``).

* ``join(seeds)`` sends a ``PushPull`` (over TCP: a ``Send`` with ``reliable=True``) to every
  seed, and retries with backoff (from one probe interval up to ``join_retry_max_s``) until
  a full state comes back; a refused connection (``reliable_failed``) frees the seed for
  the next retry at once. One extra sync with a random member follows a few probe periods
  after joining: members that join after us reach us only as gossip, which a join storm
  can drop;
* every push-pull interval (doubling for every doubling of N beyond 32) we exchange full
  state with one random live member, and with one dead member to heal partitions; an
  isolated node keeps pushing to its seeds every ``rejoin_interval``;
* a member we do not know that probes us gets a push-pull at once (we missed its ``Alive``,
  and likely more);
* inbound full states are served at most ``push_pull_max_inbound`` per reliable timeout
  (the rest are refused: a join storm cannot take a seed's CPU), and at most
  ``push_pull_max_inflight`` of ours wait for answers.

A full state is the core's rumors (our ``Alive`` or ``Left``, every member's ``Alive`` and
accusation, from a random start when over ``push_pull_max_bytes``) followed by each
delegate's ``local_state``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from protocol.swim.events import Address, Send
from protocol.swim.gossip import rumor_size
from protocol.swim.members import MemberStatus
from protocol.swim.messages import PushPull, Rumors, bundle

if TYPE_CHECKING:
    from protocol.swim.core import Membership

ALIVE = MemberStatus.ALIVE
DEAD = MemberStatus.DEAD
PUSH_PULL_SCALE_THRESHOLD = 32
POST_JOIN_SYNC_PERIODS = 3  # probe periods after a join until one extra full sync


def push_pull_scale(interval_s: float, n: int) -> float:
    """Push-pull interval for ``n`` members: doubles for every doubling beyond 32."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval_s
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval_s


class Synchroniser:
    def __init__(self, core: Membership, now: float) -> None:
        self.core = core
        cfg = core.config
        self.seeds: list[Address] = []
        self.inflight: dict[Address, float] = {}
        self.inbound: deque[float] = deque()
        self.stranger_syncs: dict[Address, float] = {}
        # encoded size of each rumor a full state last carried, by identity (the rumor is held
        # here, so its id is not reused while the entry lives): rumors are immutable, and a
        # thousand-member state measured afresh each time cost as much as encoding it
        self._sizes: dict[int, tuple[Any, int]] = {}
        self.synced = True  # no join pending
        self.rejoin_delay = cfg.rejoin_interval_s
        self.next_rejoin_at = math.inf
        self.next_push_pull_at = now + core.rng.uniform(
            0, push_pull_scale(cfg.push_pull_interval_s, core.num_live)
        )

    # --- timing -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return min(self.next_push_pull_at, self.next_rejoin_at)

    def tick(self, now: float) -> None:
        if now >= self.next_push_pull_at:
            self._periodic(now)
        if now >= self.next_rejoin_at:
            self._rejoin(now)

    # --- commands -----------------------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        self.seeds = [(str(host), int(port)) for host, port in seeds]
        for address in self.seeds:
            self.push_pull_to(address, now, join=True, force=True)
        # Until a full state has come back, retry soon with backoff: a seed busy with a
        # join storm refuses push-pulls beyond its inbound limit, and a seed not up yet
        # refuses the connection.
        self.synced = False
        self.rejoin_delay = self.core.config.probe_interval_s
        self.next_rejoin_at = self._rejoin_at(now) if self.seeds else math.inf

    def reliable_failed(self, address: Address, message: Any, now: float) -> None:
        if isinstance(message, PushPull):
            self.inflight.pop(address, None)

    def with_stranger(self, address: Address, now: float) -> None:
        """A member probes us whom we do not know: we missed its Alive, and likely more.

        Memberlist waits for the next periodic push-pull (30 s and up); a push-pull with
        the prober now closes the gap at once. At most once per rejoin interval per address.
        """
        last = self.stranger_syncs.get(address)
        if last is not None and now - last < self.core.config.rejoin_interval_s:
            return
        if len(self.stranger_syncs) > 4096:
            self.stranger_syncs.clear()
        self.stranger_syncs[address] = now
        self.push_pull_to(address, now, join=False)

    # --- the exchange -------------------------------------------------------------------------

    def handle_push_pull(
        self, sender: str, source: Address, msg: PushPull, now: float, reliable: bool
    ) -> bool:
        core = self.core
        retell = core.apply(msg.rumors, sender, now, join=msg.join)
        known = core.member(sender)
        address = known.address if known is not None else source
        if msg.reply:
            self.inflight.pop(address, None)
            if not self.synced:
                self.synced = True
                soon = now + POST_JOIN_SYNC_PERIODS * core.config.probe_interval_s
                self.next_push_pull_at = min(self.next_push_pull_at, soon)
            return retell
        window = self.inbound
        while window and window[0] <= now - core.config.reliable_timeout_s:
            window.popleft()
        if len(window) >= core.config.push_pull_max_inbound:
            core.stats.push_pulls_refused += 1
            return retell
        window.append(now)
        core.send(Send(address, PushPull(False, True, self.full_state()), True))
        return retell

    def full_state(self) -> Rumors:
        """Everything we know, within ``push_pull_max_bytes`` (from a random start if over)."""
        core = self.core
        budget = core.config.push_pull_max_bytes - 64
        items: list[Any] = [core.own_rumor]
        budget -= rumor_size(core.own_rumor)
        table = core.members_table
        size = table.size
        start = core.rng.randrange(size) if size else 0
        sizes = self._sizes
        if len(sizes) > 2 * size + 64:  # rumors since replaced: measure afresh
            sizes.clear()
        for i in range(size):
            m = table.at((start + i) % size)
            if m is None:
                continue
            parts: list[Any] = [m.alive]
            if m.accusation is not None:
                parts.append(m.accusation)
            cost = 0
            for p in parts:
                known = sizes.get(id(p))
                if known is None or known[0] is not p:
                    known = sizes[id(p)] = (p, rumor_size(p))
                cost += known[1]
            if cost > budget:
                break
            budget -= cost
            items.extend(parts)
        for d in core.delegates:
            more = d.local_state(budget)
            budget -= sum(rumor_size(i) for i in more)
            items.extend(more)
        return bundle(items)

    def push_pull_to(self, address: Address, now: float, *, join: bool, force: bool = False) -> bool:
        inflight = self.inflight
        for a in [a for a, t in inflight.items() if t <= now]:
            del inflight[a]
        cfg = self.core.config
        if address in inflight or (not force and len(inflight) >= cfg.push_pull_max_inflight):
            return False
        inflight[address] = now + cfg.reliable_timeout_s
        self.core.stats.push_pulls_sent += 1
        self.core.send(Send(address, PushPull(join, False, self.full_state()), True))
        return True

    def _periodic(self, now: float) -> None:
        core = self.core
        self.next_push_pull_at = now + push_pull_scale(core.config.push_pull_interval_s, core.num_live)
        table = core.members_table
        peers = table.sample(1, core.rng, lambda m: m.status is ALIVE)
        if peers:
            self.push_pull_to(peers[0].address, now, join=False)
        # Reconnect: a member we think dead may be on the far side of a healed partition.
        dead = table.sample(1, core.rng, lambda m: m.status is DEAD)
        if dead:
            self.push_pull_to(dead[0].address, now, join=False)

    def _rejoin_at(self, now: float) -> float:
        """Next join attempt: the backoff delay with jitter (half to all of it)."""
        return now + self.rejoin_delay * self.core.rng.uniform(0.5, 1.0)

    def _rejoin(self, now: float) -> None:
        cfg = self.core.config
        if not self.synced:
            cap = min(cfg.join_retry_max_s, cfg.rejoin_interval_s)
            self.rejoin_delay = min(2 * self.rejoin_delay, cap)
        else:
            self.rejoin_delay = cfg.rejoin_interval_s
        self.next_rejoin_at = self._rejoin_at(now)
        if not self.synced or self.core.members_table.live_count == 0:
            for address in self.seeds:
                self.push_pull_to(address, now, join=True, force=True)
