"""One simulated network of membership cores, for the tests and ``bench gossip``.

No sockets and no clock (after h11's ``ConnectionPair`` and memberlist's mock transport):
one heap of (time, order) events holds packet deliveries and core wake-ups (at each core's
``next_deadline()``); every random choice comes from one seeded ``random.Random``, so a run
is reproducible. No encoding on the hot path (bytes are counted by encoding only with
``measure_bytes``), so 10,000 cores run on one CPU core.

The network: one-way UDP delay uniform in ``delay_s``, independent loss per datagram
(``loss``); TCP (``reliable`` sends) is never lost but each lost segment on the way (at
``tcp_loss``, default the UDP loss) costs a 1 s retransmission timeout, and it cannot cross
a partition. A reliable send to an address where nothing runs (or a crashed node) is
refused after one round trip (``Membership.reliable_failed``). A paused node neither ticks
nor reads until it resumes, then finds its packets waiting (as in a socket buffer).

Nodes are added one by one (``add``: each with its own core, joining seeds by id), or all
at once from one shared ``MemberSnapshot`` (``SimNet.steady``: everyone alive, as after a
push-pull, and 10,000 cores share one member table copy-on-write).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from protocol import codec
from protocol.swim import (
    Alive,
    Delegate,
    LocalNode,
    Member,
    Membership,
    MemberSnapshot,
    MemberStatus,
    Send,
    StateRecords,
    SwimConfig,
    UrgentBroadcasts,
)
from protocol.wire import overhead_bytes

Address = tuple[str, int]


def standard_delegates(config: SwimConfig) -> list[Delegate]:
    """What every agent runs on the mesh: the state records and urgent broadcasts."""
    return [StateRecords(config.record_reap_s), UrgentBroadcasts(config.urgent_seen_s)]


def records(core: Membership) -> StateRecords:
    return next(d for d in core.delegates if isinstance(d, StateRecords))


def urgent(core: Membership) -> UrgentBroadcasts:
    return next(d for d in core.delegates if isinstance(d, UrgentBroadcasts))


class SimNet:
    def __init__(
        self,
        seed: int = 1,
        config: SwimConfig | None = None,
        *,
        loss: float = 0.0,
        delay_s: tuple[float, float] = (0.0005, 0.002),
        measure_bytes: bool = False,
        keep_events: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or SwimConfig.local()
        self.loss = loss
        self.tcp_loss: float | None = None  # loss seen by TCP segments; None: same as UDP
        self.delay_s = delay_s
        self.now = 0.0
        self.cores: dict[str, Membership] = {}
        self.by_address: dict[Address, str] = {}
        self.keep_events = keep_events
        self.events: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.on_events: Callable[[str, list[Any]], None] | None = None
        self.on_sends: Callable[[str, list[Send]], None] | None = None
        self.crashed: set[str] = set()
        self.paused_until: dict[str, float] = {}
        self.cut: set[frozenset[str]] = set()  # partitioned pairs
        self.sent: list[tuple[float, str, str, Any, bool]] = []  # (t, src, dst, msg, reliable)
        self.record_sends = False
        self.measure_bytes = measure_bytes
        self.bytes_sent = 0
        self.tcp_bytes_sent = 0
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
        address: Address | None = None,
        config: SwimConfig | None = None,
        **kw: Any,
    ) -> Membership:
        """A new node (``kw`` goes to ``Membership``); it joins ``seeds`` (node ids) at once."""
        if address is None:
            i = len(self.cores) + 1
            address = (f"127.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 7946)
        config = config or self.config
        core = Membership(
            config,
            LocalNode(node_id, address, site_id, transformer_id),
            random.Random(self.rng.getrandbits(64)),
            self.now,
            **{"delegates": standard_delegates(config), **kw},
        )
        self.cores[node_id] = core
        self.by_address[address] = node_id
        if seeds:
            core.join([self.cores[s].me.address for s in seeds], self.now)
        self.after(node_id)
        return core

    def mesh(self, n: int, prefix: str = "n", **kw: Any) -> list[Membership]:
        """``n`` nodes joined through the first one, run until everyone knows everyone."""
        first = self.add(f"{prefix}0", **kw)
        cores = [first] + [self.add(f"{prefix}{i}", seeds=[f"{prefix}0"], **kw) for i in range(1, n)]
        self.run_until(lambda: all(c.num_live == n for c in cores), limit_s=60)
        return cores

    @classmethod
    def steady(cls, n: int, config: SwimConfig, seed: int, **kw: Any) -> SimNet:
        """``n`` nodes that all know each other alive at incarnation 0 (20 per site)."""
        net = cls(seed, config, **kw)
        ids = [f"node-{i:05d}" for i in range(n)]
        addresses = [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 7946) for i in range(n)]
        alives = [
            Alive(ids[i], 0, *addresses[i], f"site-{i // 20}", f"tx-{i // 100}") for i in range(n)
        ]
        snapshot = MemberSnapshot(Member.from_alive(a, 0.0) for a in alives)
        for i in range(n):
            net.add(
                ids[i], site_id=alives[i].site_id, transformer_id=alives[i].transformer_id,
                address=addresses[i], snapshot=snapshot,
            )
        return net

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

    def after(self, node_id: str) -> None:
        """Collect a core's outputs and (re)schedule its wake-up (call after driving it)."""
        core = self.cores[node_id]
        events = core.events()
        if events:
            if self.keep_events:
                self.events[node_id].extend((self.now, ev) for ev in events)
            if self.on_events is not None:
                self.on_events(node_id, events)
        out = core.outgoing()
        if out and self.on_sends is not None:
            self.on_sends(node_id, out)
        rng = self.rng
        lo, hi = self.delay_s
        for send in out:
            dst = self.by_address.get(send.address)
            self.packets_sent += 1
            if self.measure_bytes:
                size = len(codec.encode(send.message)) + overhead_bytes(len(node_id))
                self.bytes_sent += size
                if send.reliable:
                    self.tcp_bytes_sent += size
            if self.record_sends:
                self.sent.append((self.now, node_id, dst or "?", send.message, send.reliable))
            if send.reliable and (dst is None or dst in self.crashed):
                # nothing listens there: the connection is refused after one round trip
                self._push(self.now + 2 * rng.uniform(lo, hi), "refused", (node_id, send.address, send.message))
                continue
            if dst is None or (self.cut and frozenset((node_id, dst)) in self.cut):
                continue
            if not send.reliable and self.loss and rng.random() < self.loss:
                continue
            delay = rng.uniform(lo, hi)
            if send.reliable:
                # TCP gets through a lossy link, late: each lost handshake costs a 1 s RTO.
                delay *= 3
                tcp_loss = self.loss if self.tcp_loss is None else self.tcp_loss
                while tcp_loss and rng.random() < tcp_loss and delay < 10:
                    delay += 1.0
            self._push(
                self.now + delay, "deliver",
                (dst, node_id, core.me.address, send.message, send.reliable),
            )
        when = core.next_deadline()
        if when != self._wake.get(node_id) and when != math.inf:
            self._wake[node_id] = when
            self._push(max(when, self.now), "tick", (node_id, when))

    _after = after  # the name the tests have used

    def step(self) -> bool:
        if not self._heap:
            return False
        when, _, kind, payload = heapq.heappop(self._heap)
        if when > self.now:
            self.now = when
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
        self.after(node_id)
        return True

    def run_for(self, duration_s: float) -> None:
        self.run_to(self.now + duration_s)

    def run_to(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            self.step()
        if t > self.now:
            self.now = t

    def run_until(self, condition: Callable[[], bool], limit_s: float, check_every_s: float = 0.01) -> float:
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
