"""The transmit-limited broadcast queue (after memberlist's ``queue.go``).

Theory of operation
-------------------
Rumors spread epidemically: each node that learns something new retransmits it a limited
number of times, ``retransmit_mult * ceil(log10(N + 1))``, which is enough for the rumor
to reach everyone with high probability while keeping the traffic per rumor O(N log N).

Each queued rumor has a *key*: the subject it is about (``("m", node_id)`` for membership,
``("r", node_id)`` for a state record, ``("u", origin, serial)`` for an urgent broadcast).
Putting a rumor replaces any queued rumor with the same key: the core only queues what it
has just accepted as newer, so the older one is stale news and must not use up packet space.

``take`` fills one packet: least-transmitted rumors first (fresh news spreads first), newest
first among equals, skipping what does not fit in the byte budget; every rumor taken counts
one transmission and leaves the queue when it reaches the limit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import attrs

# The smallest rumor we ever queue; below this remaining budget, stop scanning.
MIN_RUMOR_BYTES = 8


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    return retransmit_mult * math.ceil(math.log10(n + 1))


@attrs.define(slots=True)
class _Entry:
    key: Hashable
    item: Any
    size: int
    transmits: int
    id: int


class BroadcastQueue:
    def __init__(self) -> None:
        self._by_key: dict[Hashable, _Entry] = {}
        # transmit count -> entries in insertion order (oldest first)
        self._levels: dict[int, dict[Hashable, _Entry]] = {}
        self._next_id = 0
        # no queued rumor is smaller than this (the smallest ever queued: a lower bound), so
        # ``take`` stops scanning once less is left; without it a full packet scanned every
        # queued rumor for one that fits (O(queue) per packet in a join of 1,000)
        self._min_size = math.inf

    def __len__(self) -> int:
        return len(self._by_key)

    def put(self, key: Hashable, item: Any, size: int, transmits: int = 0) -> None:
        """Queue ``item`` (``size`` bytes encoded), replacing any rumor with the same key."""
        self.remove(key)
        self._min_size = min(self._min_size, size)
        self._next_id += 1
        entry = _Entry(key, item, size, transmits, self._next_id)
        self._by_key[key] = entry
        self._levels.setdefault(transmits, {})[key] = entry

    def remove(self, key: Hashable) -> bool:
        old = self._by_key.pop(key, None)
        if old is None:
            return False
        level = self._levels[old.transmits]
        del level[key]
        if not level:
            del self._levels[old.transmits]
        return True

    def get(self, key: Hashable) -> Any | None:
        entry = self._by_key.get(key)
        return None if entry is None else entry.item

    def transmits(self, key: Hashable) -> int | None:
        entry = self._by_key.get(key)
        return None if entry is None else entry.transmits

    def take(self, budget_bytes: int, limit: int) -> tuple[list[Any], int]:
        """Rumors for one packet of at most ``budget_bytes``; returns (items, bytes used)."""
        if not self._by_key or budget_bytes < MIN_RUMOR_BYTES:
            return [], 0
        chosen: list[_Entry] = []
        used = 0
        levels = self._levels
        # below this nothing queued fits (and below MIN_RUMOR_BYTES we stop in any case)
        smallest = max(MIN_RUMOR_BYTES, self._min_size)
        for transmits in sorted(levels):
            for entry in reversed(levels[transmits].values()):
                if used + entry.size <= budget_bytes:
                    chosen.append(entry)
                    used += entry.size
                    if budget_bytes - used < smallest:
                        break
            if budget_bytes - used < smallest:
                break
        for entry in chosen:
            level = levels[entry.transmits]
            del level[entry.key]
            if not level:
                del levels[entry.transmits]
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._by_key[entry.key]
            else:
                levels.setdefault(entry.transmits, {})[entry.key] = entry
        return [e.item for e in chosen], used

    def items(self) -> list[tuple[Hashable, Any, int]]:
        """(key, item, transmits) of every queued rumor, least-sent first (for tests, views)."""
        out = []
        for transmits in sorted(self._levels):
            for entry in reversed(self._levels[transmits].values()):
                out.append((entry.key, entry.item, entry.transmits))
        return out
