"""What a ``MeshNode`` counts: its statistics and the lateness of its timer ticks."""

from __future__ import annotations

from collections import deque

import attrs

from protocol.stats import percentile
from protocol.swim import MembershipStatistics

# A timer tick that runs more than this fraction of the probe timeout behind its deadline is
# a late wake-up (counted in ``NodeStatistics.late_wakeups``): late enough that the node's
# own probes, and its answers to others' probes, start to eat into the timeout.
LATE_WAKEUP_FRACTION = 0.10


@attrs.frozen
class NodeStatistics:
    membership: MembershipStatistics
    datagrams_sent: int
    datagrams_received: int
    dropped: dict[str, int]
    reliable_sent: int
    reliable_failed: int
    ignored_messages: int
    late_wakeups: int  # timer ticks more than LATE_WAKEUP_FRACTION of the probe timeout late
    subscriber_events_dropped: int  # events a full subscriber channel did not take
    certificates_refused: int  # certificates from peers that did not parse or verify
    tick_lateness_p99_s: float
    tick_lateness_max_s: float


class LatenessRecorder:
    """How late timer ticks ran behind the core's deadlines (a bounded window of samples)."""

    def __init__(self, window: int = 4096) -> None:
        self.samples: deque[float] = deque(maxlen=window)
        self.max_s = 0.0

    def add(self, late_s: float) -> None:
        self.samples.append(late_s)
        if late_s > self.max_s:
            self.max_s = late_s

    def reset(self) -> None:
        self.samples.clear()
        self.max_s = 0.0

    def quantile(self, q: float) -> float:
        return percentile(self.samples, q, default=0.0)
