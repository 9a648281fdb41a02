"""Lifeguard's local health awareness (after memberlist's ``awareness.go``).

Theory of operation
-------------------
A node that is itself slow (CPU starved, paused, its network card dropping) sees everyone
else as failing. Lifeguard makes such a node distrust itself: it keeps a health score, 0
when healthy, raised by signs of its own trouble (probes that get neither an ack nor the
nacks relays promised, having to refute a suspicion of itself, waking up late) and lowered
by each successful probe. Probe interval and probe timeout are multiplied by
``score + 1``, so a sick node probes less often and waits longer before accusing.

The score is clamped to ``[0, max_multiplier - 1]``.
"""

from __future__ import annotations

import attrs


@attrs.define
class Awareness:
    max_multiplier: int
    score: int = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout_s: float) -> float:
        return timeout_s * (self.score + 1)
