"""Gossip sizing: what rides on each datagram, and the periodic gossip round.

Every state change the core accepts is queued (``protocol.swim.queue``, newer rumors about
a member replace older ones) and piggybacked on pings, acks and ping-reqs; every
``gossip_interval`` a ``Gossip`` goes to ``gossip_nodes`` random members. The core's own
rumors go first, then what the delegates hand over (``Delegate.broadcasts``), in the bytes
left of ``body_budget`` (the datagram minus the shell's envelope). Each rumor is sent at most
``retransmit_mult * log10(N + 1)`` times.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from protocol import codec
from protocol.swim.delegate import Delegate
from protocol.swim.messages import NO_RUMORS, Rumors, bundle
from protocol.swim.queue import BroadcastQueue, retransmit_limit

# msgpack bytes of a message around its rumors, beyond the variable-length strings:
# array header, u32 seq, and a Rumors array of six lists whose headers may grow to 3 bytes.
RUMORS_EMPTY_MAX = 1 + 6 * 3
PING_BASE = 1 + 5 + 2 + RUMORS_EMPTY_MAX
ACK_BASE = 1 + 5 + RUMORS_EMPTY_MAX
PING_REQ_BASE = 1 + 5 + 2 + 2 + 3 + 1 + RUMORS_EMPTY_MAX
GOSSIP_BASE = 1 + RUMORS_EMPTY_MAX


def rumor_size(item: Any) -> int:
    return len(codec.encode(item))


class Piggyback:
    """The core's rumor queue and the delegates' broadcasts, packed into datagrams."""

    def __init__(self, body_budget: int, retransmit_mult: int, delegates: Sequence[Delegate]) -> None:
        self.body_budget = body_budget
        self.retransmit_mult = retransmit_mult
        self.queue = BroadcastQueue()
        self._delegates = delegates

    def enqueue(self, key: Hashable, item: Any) -> None:
        self.queue.put(key, item, rumor_size(item))

    def pending(self) -> bool:
        return bool(self.queue) or any(d.has_broadcasts() for d in self._delegates)

    def take(self, budget: int, num_live: int) -> list[Any]:
        """Rumors within ``budget`` bytes: the core's first, then the delegates'."""
        limit = retransmit_limit(self.retransmit_mult, num_live)
        items: list[Any] = []
        if self.queue:
            taken, used = self.queue.take(budget, limit)
            items.extend(taken)
            budget -= used
        for d in self._delegates:
            if budget <= 0:
                break
            if not d.has_broadcasts():
                continue
            more = d.broadcasts(budget, limit)
            budget -= sum(rumor_size(i) for i in more)
            items.extend(more)
        return items

    def rumors(self, base: int, num_live: int, forced: list[Any] | None = None) -> Rumors:
        """Rumors for a message of ``base`` bytes, ``forced`` ones first (buddy system)."""
        budget = self.body_budget - base
        items: list[Any] = []
        if forced:
            budget -= sum(rumor_size(i) for i in forced)
            items.extend(forced)
        taken = self.take(budget, num_live)
        if forced:
            taken = [t for t in taken if not any(t is f for f in forced)]
        items.extend(taken)
        return bundle(items) if items else NO_RUMORS

    def gossip_bundles(self, targets: int, num_live: int) -> list[Rumors]:
        """One bundle per gossip target, while there is something to tell."""
        out: list[Rumors] = []
        for _ in range(targets):
            items = self.take(self.body_budget - GOSSIP_BASE, num_live)
            if not items:
                break
            out.append(bundle(items))
        return out
