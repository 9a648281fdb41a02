"""One heap of timers, invalidated lazily (after memberlist's per-timer goroutines, sans-IO).

A timer is ``(when, kind, key, token)``. Rather than cancel, the owner changes its state
(a suspicion's deadline, a relay answered); ``valid`` then says the entry is stale and it is
dropped when it reaches the top. Ties fire in the order they were set.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from typing import Any

Entry = tuple[float, int, int, Any, Any]


class Timers:
    def __init__(self, valid: Callable[[Entry], bool]) -> None:
        self._heap: list[Entry] = []
        self._counter = 0
        self._valid = valid

    def push(self, when: float, kind: int, key: Any, token: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, kind, key, token))

    def next_deadline(self) -> float:
        heap = self._heap
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def due(self, now: float) -> Iterator[Entry]:
        """Pop and yield every valid timer due at ``now`` (valid when it is popped)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._valid(entry):
                yield entry
