"""Membership cores wired together through the in-memory network (no sockets, virtual time)."""

from __future__ import annotations

import random

import pytest

from protocol import codec
from protocol.messages import Certificates, Revoke
from protocol.state import Scope
from protocol.swim import (
    Ack,
    Delivered,
    Gossip,
    LocalNode,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    Membership,
    MemberStatus,
    MemberSuspect,
    Ping,
    PushPull,
    RecordRemoved,
    RecordUpdated,
    Refuted,
    Rumors,
    Suspect,
    SwimConfig,
    Urgent,
)
from protocol.wire import overhead_bytes
from tests.protocol.swim.helpers import Net, records, standard_delegates, urgent

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD, MemberStatus.LEFT
)


def everyone_sees(net: Net, node_id: str, status: MemberStatus) -> bool:
    return all(
        net.status(o, node_id) is status
        for o in net.cores
        if o != node_id and o not in net.crashed
    )


def publish(core: Membership, watts: float, now: float) -> None:
    records(core).publish(
        now, discharge_available_w=watts, energy_above_min_soc_wh=10_000.0, soc=0.7,
        updated_at_ms=1_764_115_200_000,
    )


def test_seed_join_forms_one_mesh():
    net = Net(seed=1)
    cores = net.mesh(8)
    for c in cores:
        assert c.num_live == 8
        assert {m.status for m in c.members()} == {ALIVE}
    joined = {ev.member.node_id for ev in net.events_of("n3", MemberJoined)}
    assert joined == {f"n{i}" for i in range(8)} - {"n3"}
    # addresses learned are the advertised ones
    assert cores[0].member("n5").address == cores[5].me.address


def test_failure_detection_suspect_then_dead_then_reaped():
    net = Net(seed=2)
    net.mesh(10)
    net.run_for(2)
    net.crash("n4")
    took = net.run_until(lambda: everyone_sees(net, "n4", DEAD), limit_s=30)
    # local preset: 0.2 s probes, min suspicion 4 * 0.2 s, max 6 times that
    assert took < 6
    assert net.events_of("n1", MemberSuspect) or net.events_of("n1", MemberDead)
    dead = net.events_of("n1", MemberDead)
    assert [ev.member.node_id for ev in dead] == ["n4"]
    # nobody else was declared dead
    assert {ev.member.node_id for _, _, ev in net.all_events(MemberDead)} == {"n4"}
    net.run_for(SwimConfig.local().dead_member_reap_s + 1)
    assert all(c.member("n4") is None for n, c in net.cores.items() if n != "n4")
    assert [ev.node_id for ev in net.events_of("n1", MemberRemoved)] == ["n4"]


def test_records_of_dead_nodes_are_reaped():
    net = Net(seed=3)
    cores = net.mesh(5)
    for c in cores:
        publish(c, 1000.0, net.now)
    net.run_until(lambda: all(len(records(c).records()) == 5 for c in cores), limit_s=10)
    assert records(cores[0]).capacity().discharge_available_w == 5000.0
    net.crash("n2")
    net.run_until(lambda: everyone_sees(net, "n2", DEAD), limit_s=30)
    assert records(cores[0]).capacity().discharge_available_w == 4000.0  # dead: no longer counted
    assert records(cores[0]).record("n2") is not None  # but kept until reaped
    net.run_for(SwimConfig.local().record_reap_s + 0.5)
    assert records(cores[0]).record("n2") is None
    assert [ev.node_id for ev in net.events_of("n0", RecordRemoved)] == ["n2"]


def test_suspected_node_refutes_and_stays_alive():
    net = Net(seed=4)
    cores = net.mesh(6)
    victim = cores[3]
    accusation = Suspect("n3", victim.incarnation, "n1")
    cores[0].receive("n1", cores[1].me.address, Gossip(Rumors(suspect=(accusation,))), net.now)
    net._after("n0")
    assert net.status("n0", "n3") is SUSPECT
    net.run_until(lambda: everyone_sees(net, "n3", ALIVE) and victim.incarnation == 1, limit_s=5)
    assert [ev.accuser for ev in net.events_of("n3", Refuted)] == ["n1"]
    net.run_for(5)
    assert not net.all_events(MemberDead)


def test_paused_node_is_suspected_but_not_declared_dead():
    net = Net(seed=5, config=SwimConfig.local(suspicion_mult=5))
    net.mesh(10)
    net.run_for(1)
    net.pause("n7", 1.0)  # suspicion timeout is at least 5 * 0.2 s = 1 s, at most 6 s
    net.run_for(10)
    assert net.all_events(MemberSuspect)
    assert not net.all_events(MemberDead)
    assert everyone_sees(net, "n7", ALIVE)


def test_graceful_leave():
    net = Net(seed=6)
    cores = net.mesh(8)
    leaver = cores[5]
    leaver.leave(net.now)
    net._after("n5")
    net.run_until(lambda: everyone_sees(net, "n5", LEFT), limit_s=5)
    assert leaver.has_left
    net.run_until(lambda: leaver.leave_flushed, limit_s=5)
    assert not net.all_events(MemberDead)
    assert len(net.all_events(MemberLeft)) == 7
    assert all(c.num_live == 7 for c in cores if c is not leaver)


def test_records_disseminate_to_everyone():
    net = Net(seed=7)
    cores = net.mesh(30)
    net.run_for(1)
    publish(cores[17], 4200.0, net.now)
    net._after("n17")
    took = net.run_until(
        lambda: all(records(c).record("n17") is not None for c in cores), limit_s=10
    )
    assert took < 1.5
    assert all(records(c).capacity().discharge_available_w == 4200.0 for c in cores)
    # a newer version replaces it everywhere
    publish(cores[17], 100.0, net.now)
    net._after("n17")
    net.run_until(lambda: all(records(c).record("n17").version == 2 for c in cores), limit_s=10)
    assert len(net.events_of("n3", RecordUpdated)) == 2


@pytest.mark.parametrize("tcp_fallback", [True, False])
def test_no_false_positive_under_20_percent_loss(tcp_fallback):
    net = Net(seed=8, config=SwimConfig.local(tcp_fallback=tcp_fallback))
    net.mesh(20)
    net.loss = 0.20  # UDP; TCP gets through late (a 1 s RTO per loss)
    net.run_for(120)  # 600 probe rounds per node at the local preset
    assert not net.all_events(MemberDead)
    stats = [c.statistics() for c in net.cores.values()]
    assert sum(s.suspicions for s in stats) > 0  # the loss was felt...
    assert sum(s.refutations for s in stats) > 0  # ...and refuted
    assert all(c.num_live == 20 for c in net.cores.values())


def test_no_suspicion_when_only_the_direct_link_fails():
    net = Net(seed=9, config=SwimConfig.local(tcp_fallback=False))
    net.mesh(6)
    net.partition(["n0"], ["n1"])  # n0 <-> n1 cut; both still reach everyone else
    net.run_for(20)
    assert net.cores["n0"].statistics().indirect_probes > 0
    assert not net.events_of("n0", MemberSuspect)
    assert net.status("n0", "n1") is ALIVE


def test_tcp_fallback_keeps_a_member_alive_when_udp_is_lost():
    net = Net(seed=10, config=SwimConfig.local(indirect_checks=0))
    net.mesh(2)
    net.loss = 1.0  # every datagram lost (a broken UDP path); TCP still gets through
    net.tcp_loss = 0.0
    net.record_sends = True
    net.run_for(10)
    assert not net.all_events(MemberSuspect)
    assert any(reliable and isinstance(m, Ping) for _, _, _, m, reliable in net.sent)
    assert any(reliable and isinstance(m, Ack) for _, _, _, m, reliable in net.sent)


def test_partition_heals_by_itself():
    net = Net(seed=11)
    cores = net.mesh(8)
    a, b = [f"n{i}" for i in range(4)], [f"n{i}" for i in range(4, 8)]
    net.partition(a, b)
    net.run_until(lambda: all(net.status("n0", x) is DEAD for x in b), limit_s=30)
    net.run_until(lambda: all(net.status("n5", x) is DEAD for x in a), limit_s=30)
    net.heal()
    took = net.run_until(lambda: all(c.num_live == 8 for c in cores), limit_s=60)
    assert took < 30  # push-pull to a dead member every ~6 s (local preset) reconnects


def test_push_pull_converges_a_late_joiner_without_gossip():
    net = Net(seed=12, config=SwimConfig.local(gossip_nodes=0))
    cores = net.mesh(6)  # only push-pull and piggybacking spread membership here
    for c in cores:
        publish(c, 500.0, net.now)
    net.run_until(lambda: all(len(records(c).records()) == 6 for c in cores), limit_s=30)
    late = net.add("late", seeds=["n2"])
    net.run_until(lambda: late.num_live == 7 and len(records(late).records()) == 6, limit_s=2)
    assert records(late).capacity().discharge_available_w == 3000.0


def test_urgent_reaches_scope_once():
    net = Net(seed=13)
    cores = [net.add("a0", site_id="s1")]
    for i in range(1, 9):
        cores.append(net.add(f"a{i}", site_id="s1" if i < 5 else "s2", seeds=["a0"]))
    net.run_until(lambda: all(c.num_live == 9 for c in cores), limit_s=10)
    net.record_sends = True
    msg = Revoke(revocation=b"\x01" * 40)  # any registered message will do
    sent = urgent(cores[1]).send(msg, Scope.site("s1"), net.now)
    net._after("a1")
    assert sent == 4  # a0, a2, a3, a4
    urgent_sends = [s for s in net.sent if isinstance(s[3], Urgent)]
    assert sorted(dst for _, _, dst, _, _ in urgent_sends) == ["a0", "a2", "a3", "a4"]
    net.run_for(3)  # gossip relays it too: still delivered once, and only in scope
    delivered = net.all_events(Delivered)
    assert sorted(n for n, _, _ in delivered) == ["a0", "a2", "a3", "a4"]
    assert all(ev.message == msg and ev.origin_id == "a1" and ev.direct for _, _, ev in delivered)


def test_urgent_too_big_for_a_datagram_goes_over_tcp():
    net = Net(seed=14)
    cores = net.mesh(3)
    net.record_sends = True
    urgent(cores[0]).send(Certificates((b"\x02" * 1000, b"\x03" * 1000)), Scope.everyone(), net.now)
    urgent(cores[0]).send(Certificates((b"\x02" * 100,)), Scope.everyone(), net.now)  # control
    net._after("n0")
    big = [s for s in net.sent if isinstance(s[3], Urgent) and len(s[3].broadcast.body) > 1000]
    assert big and all(reliable for *_, reliable in big)
    small = [s for s in net.sent if isinstance(s[3], Urgent) and len(s[3].broadcast.body) < 1000]
    assert small and not any(reliable for *_, reliable in small)
    net.run_for(1)
    assert len(net.events_of("n1", Delivered)) == 2


def test_revoked_member_is_removed_and_ignored():
    net = Net(seed=15)
    cores = net.mesh(5)
    for c in cores:
        if c.node_id != "n3":
            c.revoke("n3", net.now)
            net._after(c.node_id)
    assert all(c.member("n3") is None for c in cores if c.node_id != "n3")
    net.run_for(10)  # n3 keeps talking; nobody takes it back
    assert all(c.member("n3") is None for c in cores if c.node_id != "n3")
    assert [ev.reason for ev in net.events_of("n0", MemberRemoved)] == ["revoked"]


def test_udp_packets_fit_the_datagram_budget():
    net = Net(seed=16)
    net.record_sends = True
    cores = net.mesh(40)  # a join storm fills every queue
    for c in cores:
        publish(c, 1.0, net.now)
        urgent(c).send(Revoke(revocation=b"\x03" * 300), Scope.everyone(), net.now)
        net._after(c.node_id)
    net.run_for(3)
    datagrams = [(src, m) for _, src, _, m, reliable in net.sent if not reliable]
    assert len(datagrams) > 1000
    sizes = [len(codec.encode(m)) + overhead_bytes(len(src)) for src, m in datagrams]
    assert max(sizes) <= 1400
    assert max(sizes) > 1100  # the budget is actually used


def test_ping_for_someone_else_and_stray_acks_are_ignored():
    rng = random.Random(1)
    core = Membership(SwimConfig.local(), LocalNode("me", ("10.0.0.1", 7946)), rng, 0.0)
    core.receive("x", ("10.0.0.2", 7946), Ping(5, "not-me"), 0.0)
    assert core.outgoing() == []
    core.receive("x", ("10.0.0.2", 7946), Ping(6, "me"), 0.0)
    sends = core.outgoing()
    [ack] = [s for s in sends if isinstance(s.message, Ack)]
    assert ack.address == ("10.0.0.2", 7946) and ack.message.seq == 6
    # x probes us but we never heard of x: we missed its Alive, so sync with it now
    [sync] = [s for s in sends if isinstance(s.message, PushPull)]
    assert sync.address == ("10.0.0.2", 7946) and sync.reliable
    core.receive("x", ("10.0.0.2", 7946), Ping(7, "me"), 0.5)  # once per rejoin interval
    assert not any(isinstance(s.message, PushPull) for s in core.outgoing())
    core.receive("x", ("10.0.0.2", 7946), Ack(12345), 0.5)  # no probe with that seq: nothing
    assert core.outgoing() == [] and core.health_score == 0


def test_late_tick_does_not_accuse():
    net = Net(seed=17)
    cores = net.mesh(4)
    net.run_for(1)
    c = cores[0]
    # The process sleeps through its deadlines: peers are fine but their acks are "late".
    later = net.now + 3.0
    net.crash("n0")  # stop delivering to n0 for a while (its socket buffer would hold them)
    net.run_to(later)
    net.crashed.discard("n0")
    before = c.statistics()
    c.tick(net.now)
    after = c.statistics()
    assert after.late_ticks == before.late_ticks + 1
    assert after.suspicions == before.suspicions
    assert c.health_score >= 1


@pytest.mark.parametrize("how", ["crash", "leave"])
def test_restarted_node_rejoins_with_a_fresh_core(how):
    net = Net(seed=18)
    cores = net.mesh(5)
    old = cores[2]
    if how == "crash":
        net.crash("n2")
        net.run_until(lambda: everyone_sees(net, "n2", DEAD), limit_s=20)
    else:
        old.leave(net.now)
        net._after("n2")
        net.run_until(lambda: everyone_sees(net, "n2", LEFT), limit_s=5)
        net.crash("n2")
    # same id and address, new process that remembers nothing (incarnation 0)
    fresh = Membership(net.config, old.me, random.Random(99), net.now, delegates=standard_delegates(net.config))
    net.cores["n2"] = fresh
    net.crashed.discard("n2")
    fresh.join([cores[0].me.address], net.now)
    net._after("n2")
    net.run_until(lambda: everyone_sees(net, "n2", ALIVE) and fresh.num_live == 5, limit_s=10)
    assert fresh.incarnation >= 1  # it refuted its previous life


def test_last_chance_probe_recovers_a_refutation_lost_in_gossip():
    net = Net(seed=19)
    cores = net.mesh(4)
    a, x = cores[0], cores[2]
    # x is accused and refutes, but its refutation never leaves it (lost in gossip)
    x.receive("n1", cores[1].me.address, Gossip(Rumors(suspect=(Suspect("n2", 0, "n1"),))), net.now)
    assert x.incarnation == 1
    x.outgoing()
    x._piggyback.queue.remove(("m", "n2"))
    # a heard the accusation only
    a.receive("n1", cores[1].me.address, Gossip(Rumors(suspect=(Suspect("n2", 0, "n1"),))), net.now)
    net._after("n0")
    net._after("n2")
    for c in (cores[1], cores[3]):  # keep the others out of it
        c.revoke("n2", net.now)
    net.run_until(lambda: net.status("n0", "n2") is ALIVE, limit_s=30)
    assert a.member("n2").incarnation == 1
    assert not net.events_of("n0", MemberDead)



def test_one_extra_sync_soon_after_joining():
    """Members that join after us reach us only as gossip; one early sync catches what it drops."""
    from protocol.swim import Alive

    cfg = SwimConfig.lan(push_pull_interval_s=1000.0)  # the periodic sync: far away
    core = Membership(cfg, LocalNode("me", ("10.0.0.1", 7946)), random.Random(3), 0.0)
    core.join([("10.0.0.2", 7946)], 0.0)
    core.outgoing()
    seed_alive = Alive("seed", 1, "10.0.0.2", 7946, "", "")
    core.receive("seed", ("10.0.0.2", 7946), PushPull(False, True, Rumors(alive=(seed_alive,))), 0.1, reliable=True)
    synced_at = None
    t = 0.1
    while t < 3.5 and synced_at is None:
        t = max(t, core.next_deadline())
        core.tick(t)
        for send in core.outgoing():
            if isinstance(send.message, Ping):  # the seed is healthy: it answers its probes
                core.receive("seed", ("10.0.0.2", 7946), Ack(send.message.seq), t)
            elif isinstance(send.message, PushPull):
                synced_at = t
    assert synced_at is not None and synced_at <= 0.1 + 3 * cfg.probe_interval_s + 1e-9


def test_a_node_started_before_its_seed_joins_within_2_s_of_the_seed_answering():
    """Issue 12: a refused join used to stay in flight for ``reliable_timeout_s`` (10 s on
    the LAN preset), so the 1/2/4 s retries were skipped and the joiner waited 10-20 s."""
    net = Net(seed=12, config=SwimConfig.lan())
    seed_address = ("127.0.9.1", 7946)
    joiner = net.add("early")
    joiner.join([seed_address], net.now)
    net._after("early")
    net.run_for(7.0)  # the seed is not up yet: every join attempt is refused
    assert joiner.num_live == 1
    net.add("seed", address=seed_address)
    took = net.run_until(lambda: joiner.num_live == 2, limit_s=30)
    assert took <= 2.1
    assert net.status("seed", "early") is ALIVE


@pytest.mark.parametrize("n, leaving", [(3, 3), (2, 2), (8, 3)])
def test_graceful_leave_takes_at_most_the_leave_timeout(n, leaving):
    """Issue 12: members whose peers all leave with them used to wait out their whole leave
    timeout (the ``Left`` rumor never drained: nobody live was left to gossip to)."""
    net = Net(seed=20 + n, config=SwimConfig.lan())
    cores = net.mesh(n)
    leavers = cores[-leaving:]
    start = net.now
    for core in leavers:
        core.leave(net.now)
        net._after(core.node_id)
    took = net.run_until(lambda: all(c.leave_flushed for c in leavers), limit_s=30)
    assert took <= net.config.leave_timeout_s + 0.05
    assert net.now - start == took
    stayers = cores[: n - leaving]
    net.run_until(lambda: all(everyone_sees(net, c.node_id, LEFT) for c in leavers) or not stayers, limit_s=5)
