"""Lifeguard's dynamic suspicion timeout (after memberlist's ``suspicion.go``).

Theory of operation
-------------------
A suspected member is declared dead when its suspicion times out. The timeout starts at
``max_s`` and shrinks towards ``min_s`` as *independent* members confirm the suspicion: with
``n`` confirmations out of the ``k`` wanted, the total timeout is

    max_s - (max_s - min_s) * log(n + 1) / log(k + 1),   never below min_s,

so the first confirmations count most. A node that alone suspects a peer (perhaps because
it is the slow one) waits long enough for the peer's refutation to reach it; a suspicion
shared by many converges fast. The maths is the pure function
``remaining_suspicion_time`` (tested from a table like memberlist's); ``Suspicion`` holds
the state of one timer and answers "when does it fire" instead of owning a clock.

``suspicion_timeout`` is SWIM's base: ``mult * max(1, log10(N)) * probe_interval``.
"""

from __future__ import annotations

import math

import attrs


def remaining_suspicion_time(
    n: int, k: int, elapsed_s: float, min_s: float, max_s: float
) -> float:
    """Seconds left before a suspicion with ``n`` of ``k`` confirmations expires.

    Negative when it is overdue. Like memberlist, the total is floored to whole
    milliseconds before the elapsed time is taken off.
    """
    if k < 1:
        total = min_s
    else:
        frac = math.log(n + 1.0) / math.log(k + 1.0)
        raw = max_s - frac * (max_s - min_s)
        total = max(math.floor(1000.0 * raw) / 1000.0, min_s)
    return total - elapsed_s


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval_s: float) -> float:
    """SWIM's base suspicion timeout (the minimum, with all confirmations in)."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * probe_interval_s


@attrs.define
class Suspicion:
    """One suspicion timer: started at ``start``, accelerated by confirmations."""

    start: float
    k: int
    min_s: float
    max_s: float
    confirmations: set[str]  # accusers already counted (the first accuser included)
    n: int = 0
    deadline: float = attrs.field(init=False)
    checking: bool = False  # our own last-chance probe is under way: hold the deadline
    checks_failed: int = 0  # last-chance probes in a row that got no answer

    def __attrs_post_init__(self) -> None:
        self.deadline = self.start + (self.max_s if self.k >= 1 else self.min_s)

    @classmethod
    def begin(cls, accuser: str, k: int, min_s: float, max_s: float, now: float) -> Suspicion:
        return cls(start=now, k=k, min_s=min_s, max_s=max_s, confirmations={accuser})

    def confirm(self, accuser: str) -> bool:
        """Count an independent confirmation; True when it was new and moved the deadline."""
        if self.n >= self.k or accuser in self.confirmations:
            return False
        self.confirmations.add(accuser)
        self.n += 1
        if not self.checking:
            self.deadline = self.start + remaining_suspicion_time(
                self.n, self.k, 0.0, self.min_s, self.max_s
            )
        return True
