"""Failure detection: probes, indirect probes, nacks and suspicions (SWIM with Lifeguard).

* every ``probe_interval`` (scaled by the health score) the next member of a shuffled
  round-robin order gets a ``Ping``; a suspect target also gets the accusation (buddy
  system) so it can refute at once;
* no ``Ack`` within ``probe_timeout``: ``PingReq`` to ``indirect_checks`` random members,
  which ping the target for us and answer ``Ack`` or, Lifeguard, ``Nack``; plus a TCP ping
  (a ``Send`` with ``reliable=True``);
* no ack by the end of the interval: the target is suspected. Missing nacks raise our own
  health score (we may be the sick one); an ack lowers it;
* a suspicion expires after a timeout that shrinks with independent confirmations
  (``protocol.swim.suspicion``); we then probe the suspect ourselves, out of turn (a last
  chance: its refutation may have missed us), and declare it dead only if
  ``last_chance_probes`` such probes in a row fail; if it answers, we wait another minimum
  timeout and check again;
* a tick that arrives much later than asked (the process was paused) is treated as our own
  fault: the current probe is dropped without accusing anyone, due suspicions get one more
  probe interval for refutations already waiting in our socket, and the health score rises.

Whether a ``Suspect`` rumor starts or confirms a suspicion is decided by the transition
table (``protocol.swim.transitions``); this module carries the suspicion out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from protocol.swim.events import Address, MemberSuspect, Send
from protocol.swim.gossip import ACK_BASE, PING_BASE, PING_REQ_BASE
from protocol.swim.members import Member, MemberStatus, ProbeOrder
from protocol.swim.messages import Ack, Dead, Nack, Ping, PingReq, Suspect
from protocol.swim.suspicion import Suspicion, suspicion_timeout

if TYPE_CHECKING:
    from protocol.swim.core import Membership

ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
SEQ_MOD = 2**32

# timer kinds this module sets (``protocol.swim.timers``)
T_SUSPICION = 0
T_RELAY = 1


@attrs.define(slots=True)
class _Probe:
    target_id: str
    seq: int
    start: float
    direct_deadline: float
    end: float
    indirect: bool = False
    relays: set[str] = attrs.Factory(set)
    nacks: set[str] = attrs.Factory(set)


@attrs.define(slots=True)
class _Relay:
    requester: Address
    requester_seq: int
    target_id: str
    deadline: float
    want_nack: bool


class Prober:
    def __init__(self, core: Membership, now: float) -> None:
        self.core = core
        cfg = core.config
        self.seq = core.rng.randrange(SEQ_MOD)
        self.probe: _Probe | None = None
        self.order = ProbeOrder()
        self.suspicions: dict[str, Suspicion] = {}
        self.soon: dict[str, None] = {}  # suspects to probe out of turn (ordered set)
        self.relays: dict[int, _Relay] = {}
        # staggered so a mesh started at once does not beat in step
        self.next_probe_at = now + core.rng.uniform(0, cfg.probe_interval_s)

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % SEQ_MOD
        return self.seq

    # --- timing -----------------------------------------------------------------------------

    def next_deadline(self) -> float:
        d = self.next_probe_at
        probe = self.probe
        if probe is not None:
            d = min(d, probe.end if probe.indirect else probe.direct_deadline)
        return d

    def tick_probe(self, now: float) -> None:
        """The running probe's deadlines."""
        probe = self.probe
        if probe is not None and not probe.indirect and now >= probe.direct_deadline:
            self._indirect(probe, now)
        probe = self.probe
        if probe is not None and now >= probe.end:
            self._end(probe, now)

    def tick_next(self, now: float) -> None:
        if now >= self.next_probe_at:
            self._start(now)

    def timer_valid(self, kind: int, key: Any, token: Any, when: float) -> bool:
        if kind == T_SUSPICION:
            s = self.suspicions.get(key)
            return s is token and s.deadline == when
        r = self.relays.get(key)
        return r is not None and r.deadline == when

    def timer_fire(self, kind: int, key: Any, now: float) -> None:
        if kind == T_SUSPICION:
            self._suspicion_expired(key, now)
            return
        relay = self.relays.pop(key)
        if relay.want_nack:
            self.core.send(Send(relay.requester, Nack(relay.requester_seq)))

    def woke_late(self, now: float) -> None:
        """Assume we, not our peers, were stuck: drop the probe, give suspects a grace."""
        self.probe = None
        grace = now + self.core.config.probe_interval_s
        for node_id, s in self.suspicions.items():
            if s.deadline <= now:
                s.deadline = grace
                self.core.timers.push(grace, T_SUSPICION, node_id, s)
        if self.next_probe_at < now:
            self.next_probe_at = now

    def stop(self) -> None:
        self.probe = None

    # --- messages ---------------------------------------------------------------------------

    def handle_ping(self, sender: str, source: Address, msg: Ping, now: float, reliable: bool) -> bool:
        core = self.core
        if msg.target_id != core.node_id:
            return False  # meant for whoever had our address before
        retell = core.apply(msg.rumors, sender, now)
        if core.member(sender) is None and not core.has_left:
            core.sync.with_stranger(source, now)
        if reliable:
            core.send(Send(source, Ack(msg.seq), True))
            return retell
        # Buddy system both ways: a suspect that probes us hears that we suspect it, and a
        # buddy ping that accused an old life of ours is answered with this one.
        known = core.member(sender)
        forced: list[Any] = []
        if retell:
            forced.append(core.alive_item)
        if known is not None and known.status is SUSPECT and isinstance(known.accusation, Suspect):
            forced.append(known.accusation)
        core.send(Send(source, Ack(msg.seq, core.rumors(ACK_BASE, forced))))
        return False

    def handle_ack(self, sender: str, source: Address, msg: Ack, now: float, reliable: bool) -> bool:
        probe = self.probe
        if probe is not None and msg.seq == probe.seq and (
            sender == probe.target_id or sender in probe.relays
        ):
            self._acked(probe, now)
        else:
            relay = self.relays.get(msg.seq)
            if relay is not None and sender == relay.target_id:
                del self.relays[msg.seq]
                ack = Ack(relay.requester_seq, self.core.rumors(ACK_BASE))
                self.core.send(Send(relay.requester, ack))
        return self.core.apply(msg.rumors, sender, now)

    def handle_nack(self, sender: str, source: Address, msg: Nack, now: float, reliable: bool) -> bool:
        probe = self.probe
        if probe is not None and msg.seq == probe.seq and sender in probe.relays:
            probe.nacks.add(sender)
        return False

    def handle_ping_req(
        self, sender: str, source: Address, msg: PingReq, now: float, reliable: bool
    ) -> bool:
        core = self.core
        retell = core.apply(msg.rumors, sender, now)
        if msg.target_id == core.node_id or core.has_left:
            return retell
        seq = self.next_seq()
        # Nack before the requester's probe interval ends (Lifeguard: at 80% of the timeout),
        # or it arrives too late to count and the requester blames itself.
        deadline = now + 0.8 * core.awareness.scale(core.config.probe_timeout_s)
        self.relays[seq] = _Relay(source, msg.seq, msg.target_id, deadline, msg.want_nack)
        core.timers.push(deadline, T_RELAY, seq, None)
        rumors = core.rumors(PING_BASE + len(msg.target_id))
        core.send(Send((msg.target_host, msg.target_port), Ping(seq, msg.target_id, rumors)))
        return retell

    # --- suspicions (the SUSPECT and CONFIRM moves of the transition table) ----------------

    def suspect(self, m: Member, s: Suspect, now: float) -> None:
        """Start suspecting ``m`` on ``s`` (already checked: a new, authentic suspicion)."""
        core = self.core
        cfg = core.config
        core.stats.suspicions += 1
        member = attrs.evolve(m, incarnation=s.incarnation, status=SUSPECT, changed_at=now, accusation=s)
        core.members_table.put(member)
        n = core.num_live
        k = cfg.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_s = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval_s)
        max_s = cfg.suspicion_max_timeout_mult * min_s
        suspicion = Suspicion.begin(s.from_id, k, min_s, max_s, now)
        self.suspicions[m.node_id] = suspicion
        core.timers.push(suspicion.deadline, T_SUSPICION, m.node_id, suspicion)
        core.enqueue(("m", m.node_id), s)
        core.emit(MemberSuspect(member, s.from_id), now)

    def confirm(self, s: Suspect, sender: str) -> None:
        """Another member independently suspects it too: the timeout shrinks."""
        suspicion = self.suspicions.get(s.node_id)
        if suspicion is None or s.from_id in suspicion.confirmations:
            return
        if self.core.authentic(s, sender) and suspicion.confirm(s.from_id):
            self.core.timers.push(suspicion.deadline, T_SUSPICION, s.node_id, suspicion)
            self.core.enqueue(("m", s.node_id), s)

    def forget(self, node_id: str) -> None:
        self.suspicions.pop(node_id, None)

    # --- the probe ----------------------------------------------------------------------------

    def _target(self) -> Member | None:
        # A suspect whose timer ran out gets one last probe of our own before we declare
        # it dead (see ``_suspicion_expired``): it goes first.
        table = self.core.members_table
        soon = self.soon
        while soon:
            node_id = next(iter(soon))
            del soon[node_id]
            m = table.get(node_id)
            if m is not None and m.status is SUSPECT:
                return m
        size = table.size
        for _ in range(size + 1):
            index = self.order.next_index(size, self.core.rng)
            if index < 0:
                return None
            if index >= table.size:
                continue
            m = table.at(index)
            if m is not None and m.live:
                return m
        return None

    def _start(self, now: float) -> None:
        core = self.core
        if self.probe is not None:
            self._end(self.probe, now)
        aw = core.awareness
        interval = aw.scale(core.config.probe_interval_s)
        self.next_probe_at = now + interval
        target = self._target()
        if target is None:
            return
        seq = self.next_seq()
        forced: list[Any] = []
        if target.status is SUSPECT and isinstance(target.accusation, Suspect):
            forced.append(target.accusation)  # buddy system: tell the suspect
        rumors = core.rumors(PING_BASE + len(target.node_id), forced)
        core.send(Send(target.address, Ping(seq, target.node_id, rumors)))
        core.stats.probes += 1
        self.probe = _Probe(
            target.node_id, seq, now, now + aw.scale(core.config.probe_timeout_s), now + interval
        )

    def _indirect(self, probe: _Probe, now: float) -> None:
        core = self.core
        probe.indirect = True
        target = core.member(probe.target_id)
        if target is None or not target.live:
            self.probe = None
            return
        core.stats.indirect_probes += 1
        relays = core.members_table.sample(
            core.config.indirect_checks,
            core.rng,
            lambda m: m.status is ALIVE and m.node_id != probe.target_id,
        )
        host, port = target.address
        for relay in relays:
            rumors = core.rumors(PING_REQ_BASE + len(target.node_id) + len(host))
            req = PingReq(probe.seq, target.node_id, host, port, True, rumors)
            core.send(Send(relay.address, req))
            probe.relays.add(relay.node_id)
        if core.config.tcp_fallback:
            core.send(Send(target.address, Ping(probe.seq, target.node_id), True))

    def _end(self, probe: _Probe, now: float) -> None:
        """The probe interval is over with no ack: suspect the target."""
        core = self.core
        self.probe = None
        core.stats.probe_failures += 1
        expected = len(probe.relays)
        missing = expected - len(probe.nacks) if expected else 1
        core.awareness.apply_delta(missing)
        target = core.member(probe.target_id)
        if target is None or not target.live:
            return
        own = core.sign(Suspect(target.node_id, target.incarnation, core.node_id))
        core.apply_one(own, core.node_id, now)

    def _acked(self, probe: _Probe, now: float) -> None:
        self.probe = None
        self.core.awareness.apply_delta(-1)
        s = self.suspicions.get(probe.target_id)
        if s is not None and s.checking:
            # It answered our last-chance probe: it is alive (its refutation normally rides
            # the ack). Wait one more minimum timeout, then check again before deciding.
            s.checking = False
            s.checks_failed = 0
            s.deadline = now + s.min_s
            self.core.timers.push(s.deadline, T_SUSPICION, probe.target_id, s)

    def _suspicion_expired(self, node_id: str, now: float) -> None:
        core = self.core
        m = core.member(node_id)
        s = self.suspicions.get(node_id)
        if m is None or m.status is not SUSPECT or s is None:
            self.suspicions.pop(node_id, None)
            return
        if s.checking:  # our last-chance probe got no answer in time
            s.checking = False
            s.checks_failed += 1
        if s.checks_failed < core.config.last_chance_probes and not core.has_left:
            # Before declaring it dead, probe it ourselves (buddy ping included): if we
            # missed its refutation in the gossip, this brings it back on the ack (or the
            # suspect re-tells us directly). memberlist declares at once.
            s.checking = True
            self.soon[node_id] = None
            interval = core.awareness.scale(core.config.probe_interval_s)
            s.deadline = max(now, self.next_probe_at) + interval + core.config.probe_timeout_s
            core.timers.push(s.deadline, T_SUSPICION, node_id, s)
            return
        del self.suspicions[node_id]
        core.stats.deaths_declared += 1
        core.apply_one(core.sign(Dead(node_id, m.incarnation, core.node_id)), core.node_id, now)
