"""A deterministic in-memory network of membership cores (after h11's ConnectionPair).

No sockets and no clock: a heap of (time, order) events holds packet deliveries and core
wake-ups; every random choice comes from one seeded ``random.Random``. UDP sends may be
lost (``loss``) and are delayed by ``delay_s``; reliable (TCP) sends are never lost but
each loss on the way costs them a 1 s retransmission timeout, and they cannot cross a
partition or reach a crashed node. A paused node neither ticks nor reads
until it resumes, then finds its packets waiting (as in a socket buffer).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import defaultdict
from typing import Any

from protocol import codec
from protocol.swim import (
    Delegate,
    LocalNode,
    Membership,
    MemberStatus,
    StateRecords,
    SwimConfig,
    UrgentBroadcasts,
)


def standard_delegates(config: SwimConfig) -> list[Delegate]:
    """What every agent runs on the mesh: the state records and urgent broadcasts."""
    return [StateRecords(config.record_reap_s), UrgentBroadcasts(config.urgent_seen_s)]


def records(core: Membership) -> StateRecords:
    return next(d for d in core.delegates if isinstance(d, StateRecords))


def urgent(core: Membership) -> UrgentBroadcasts:
    return next(d for d in core.delegates if isinstance(d, UrgentBroadcasts))


class Net:
    def __init__(
        self,
        seed: int = 1,
        config: SwimConfig | None = None,
        *,
        loss: float = 0.0,
        delay_s: tuple[float, float] = (0.0005, 0.002),
        measure_bytes: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or SwimConfig.local()
        self.loss = loss
        self.tcp_loss: float | None = None  # loss seen by TCP segments; None: same as UDP
        self.delay_s = delay_s
        self.now = 0.0
        self.cores: dict[str, Membership] = {}
        self.by_address: dict[tuple[str, int], str] = {}
        self.events: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.crashed: set[str] = set()
        self.paused_until: dict[str, float] = {}
        self.cut: set[frozenset[str]] = set()  # partitioned pairs
        self.sent: list[tuple[float, str, str, Any, bool]] = []  # (t, src, dst, msg, reliable)
        self.record_sends = False
        self.measure_bytes = measure_bytes
        self.bytes_sent = 0
        self.packets_sent = 0
        self._heap: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._wake: dict[str, float] = {}

    # --- building -----------------------------------------------------------------------------

    def add(
        self,
        node_id: str,
        *,
        site_id: str = "site-1",
        transformer_id: str = "tx-1",
        seeds: list[str] = (),  # type: ignore[assignment]
        address: tuple[str, int] | None = None,
        **kw: Any,
    ) -> Membership:
        if address is None:
            address = (f"127.0.0.{len(self.cores) + 1}", 7946)
        core = Membership(
            self.config,
            LocalNode(node_id, address, site_id, transformer_id),
            random.Random(self.rng.random()),
            self.now,
            **{"delegates": standard_delegates(self.config), **kw},
        )
        self.cores[node_id] = core
        self.by_address[address] = node_id
        if seeds:
            core.join([self.cores[s].me.address for s in seeds], self.now)
        self._after(node_id)
        return core

    def mesh(self, n: int, prefix: str = "n", **kw: Any) -> list[Membership]:
        """``n`` nodes joined through the first one, run until everyone knows everyone."""
        first = self.add(f"{prefix}0", **kw)
        cores = [first] + [self.add(f"{prefix}{i}", seeds=[f"{prefix}0"], **kw) for i in range(1, n)]
        self.run_until(lambda: all(c.num_live == n for c in cores), limit_s=60)
        return cores

    # --- faults -------------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        self.crashed.add(node_id)

    def pause(self, node_id: str, duration_s: float) -> None:
        self.paused_until[node_id] = self.now + duration_s

    def partition(self, group_a: list[str], group_b: list[str]) -> None:
        for a in group_a:
            for b in group_b:
                self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cut.clear()

    # --- running ------------------------------------------------------------------------------

    def _push(self, when: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._order), kind, payload))

    def _after(self, node_id: str) -> None:
        """Collect a core's outputs and (re)schedule its wake-up."""
        core = self.cores[node_id]
        for ev in core.events():
            self.events[node_id].append((self.now, ev))
        for send in core.outgoing():
            dst = self.by_address.get(send.address)
            self.packets_sent += 1
            if self.measure_bytes:
                self.bytes_sent += len(codec.encode(send.message)) + 94
            if self.record_sends:
                self.sent.append((self.now, node_id, dst or "?", send.message, send.reliable))
            if send.reliable and (dst is None or dst in self.crashed):
                # nothing listens there: the connection is refused after one round trip
                delay = 2 * self.rng.uniform(*self.delay_s)
                self._push(self.now + delay, "refused", (node_id, send.address, send.message))
                continue
            if dst is None or frozenset((node_id, dst)) in self.cut:
                continue
            if not send.reliable and self.rng.random() < self.loss:
                continue
            delay = self.rng.uniform(*self.delay_s)
            if send.reliable:
                # TCP gets through a lossy link, late: each lost handshake costs a 1 s RTO.
                delay *= 3
                tcp_loss = self.loss if self.tcp_loss is None else self.tcp_loss
                while self.rng.random() < tcp_loss and delay < 10:
                    delay += 1.0
            self._push(
                self.now + delay, "deliver",
                (dst, node_id, core.me.address, send.message, send.reliable),
            )
        when = core.next_deadline()
        if when != self._wake.get(node_id) and when != math.inf:
            self._wake[node_id] = when
            self._push(max(when, self.now), "tick", (node_id, when))

    def step(self) -> bool:
        if not self._heap:
            return False
        when, _, kind, payload = heapq.heappop(self._heap)
        self.now = max(self.now, when)
        node_id = payload[0]
        if node_id in self.crashed:
            return True
        paused = self.paused_until.get(node_id)
        if paused is not None:
            if self.now < paused:
                self._push(paused, kind, payload)  # held: runs when the node resumes
                return True
            del self.paused_until[node_id]
        core = self.cores[node_id]
        if kind == "tick":
            if self._wake.get(node_id) != payload[1]:
                return True
            del self._wake[node_id]
            core.tick(self.now)
        elif kind == "refused":
            _, address, message = payload
            core.reliable_failed(address, message, self.now)
        else:
            _, src, src_address, message, reliable = payload
            core.receive(src, src_address, message, self.now, reliable=reliable)
        self._after(node_id)
        return True

    def run_for(self, duration_s: float) -> None:
        self.run_to(self.now + duration_s)

    def run_to(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            self.step()
        self.now = max(self.now, t)

    def run_until(self, condition: Any, limit_s: float, check_every_s: float = 0.01) -> float:
        """Run until ``condition()`` holds; return the virtual time it took. Fails past the limit."""
        start = self.now
        while not condition():
            if self.now - start > limit_s:
                raise AssertionError(f"condition not met within {limit_s} s of virtual time")
            self.run_to(self.now + check_every_s)
        return self.now - start

    # --- looking ------------------------------------------------------------------------------

    def status(self, observer: str, node_id: str) -> MemberStatus | None:
        m = self.cores[observer].member(node_id)
        return None if m is None else m.status

    def events_of(self, node_id: str, kind: type) -> list[Any]:
        return [ev for _, ev in self.events[node_id] if isinstance(ev, kind)]

    def all_events(self, kind: type) -> list[tuple[str, float, Any]]:
        return [
            (n, t, ev) for n, evs in self.events.items() for t, ev in evs if isinstance(ev, kind)
        ]
