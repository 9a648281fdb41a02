"""Per-rumor signatures: a relay cannot speak for another node; transition table as a property."""

from __future__ import annotations

import random

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.messages import Revoke
from protocol.state import Scope, StateRecord
from protocol.swim import (
    Alive,
    Broadcast,
    Dead,
    Delivered,
    Ed25519Items,
    Gossip,
    Left,
    LocalNode,
    Membership,
    MemberStatus,
    PushPull,
    Rumors,
    Suspect,
    SwimConfig,
)
from protocol.swim.messages import signing_payload
from tests.conftest import Pki
from tests.protocol.swim.helpers import Net, records, standard_delegates


def signed_mesh(pki: Pki, n: int = 4) -> tuple[Net, dict, list[Membership]]:
    idents = {f"n{i}": pki.identity(f"n{i}") for i in range(n)}
    net = Net(seed=21)
    cores = []
    for i, (node_id, ident) in enumerate(idents.items()):
        auth = Ed25519Items(ident, pki.trust(*idents.values()))
        cores.append(net.add(node_id, seeds=["n0"] if i else [], authenticator=auth))
    net.run_until(lambda: all(c.num_live == n for c in cores), limit_s=10)
    return net, idents, cores


def sign(ident, item):
    return attrs.evolve(item, signature=ident.key.sign(signing_payload(item)))


def relay(core: Membership, sender: str, rumors: Rumors) -> None:
    core.receive(sender, ("127.0.0.9", 7946), Gossip(rumors), 1.0)


def test_signed_mesh_forms_and_detects(pki):
    net, _, cores = signed_mesh(pki)
    net.crash("n3")
    net.run_until(
        lambda: all(c.member("n3").status is MemberStatus.DEAD for c in cores[:3]), limit_s=10
    )
    assert all(c.statistics().rumors_rejected == 0 for c in cores)


def test_relay_cannot_raise_anothers_incarnation_or_move_it(pki):
    _net, idents, cores = signed_mesh(pki)
    a = cores[0]
    forged = Alive("n1", 50, "10.6.6.6", 7946, "site-1", "tx-1")
    relay(a, "n2", Rumors(alive=(forged,)))  # unsigned
    relay(a, "n2", Rumors(alive=(sign(idents["n2"], forged),)))  # signed by the relay
    assert a.member("n1").incarnation == 0
    assert a.member("n1").address == cores[1].me.address
    assert a.statistics().rumors_rejected == 2
    relay(a, "n2", Rumors(alive=(sign(idents["n1"], forged),)))  # really n1's: accepted
    assert a.member("n1").incarnation == 50


def test_relay_cannot_leave_or_publish_for_another(pki):
    _net, idents, cores = signed_mesh(pki)
    a = cores[0]
    relay(a, "n2", Rumors(left=(Left("n1", 1),)))
    record = StateRecord("n1", 0, 9, "site-1", "tx-1", 1e6, 1e6, 1.0, 0.0, (), 1)
    relay(a, "n2", Rumors(records=(record,)))
    assert a.member("n1").status is MemberStatus.ALIVE
    assert records(a).record("n1") is None
    relay(a, "n2", Rumors(left=(sign(idents["n1"], Left("n1", 1)),)))
    assert a.member("n1").status is MemberStatus.LEFT


def test_forged_confirmations_and_accusations_are_refused(pki):
    _net, _idents, cores = signed_mesh(pki)
    a, victim = cores[0], cores[1]
    # n2 accuses for n3 (from_id n3, unsigned): refused
    relay(a, "n2", Rumors(suspect=(Suspect("n1", 0, "n3"),)))
    assert a.member("n1").status is MemberStatus.ALIVE
    # a forged death sentence at a huge incarnation does not make the victim burn its numbers
    relay(victim, "n2", Rumors(dead=(Dead("n1", 2**40, "n3"),)))
    assert victim.incarnation == 0
    # but the relay may accuse in its own name, at the current incarnation
    relay(a, "n2", Rumors(suspect=(Suspect("n1", 0, "n2"),)))
    assert a.member("n1").status is MemberStatus.SUSPECT


def test_forged_urgent_origin_is_not_delivered(pki):
    _net, idents, cores = signed_mesh(pki)
    body = codec.encode(Revoke(b"x"))
    fake = Broadcast("n1", 1, Scope.everyone(), 0x01, body)
    relay(cores[0], "n2", Rumors(broadcasts=(fake,)))
    real = sign(idents["n1"], Broadcast("n1", 2, Scope.everyone(), 0x01, body))
    relay(cores[0], "n2", Rumors(broadcasts=(real,)))
    delivered = [ev for ev in cores[0].events() if isinstance(ev, Delivered)]
    assert [ev.message for ev in delivered] == [Revoke(b"x")]


def test_push_pull_state_carries_authors_signatures(pki):
    net, idents, cores = signed_mesh(pki)
    records(cores[1]).publish(
        net.now, discharge_available_w=7.0, energy_above_min_soc_wh=1.0, soc=0.5, updated_at_ms=1
    )
    net._after("n1")
    net.run_until(lambda: records(cores[2]).record("n1") is not None, limit_s=5)
    # n2's full state, relayed to a fresh signed node, is accepted rumor by rumor
    cores[2].receive("n3", cores[3].me.address, PushPull(False, False), net.now)
    [send] = [s for s in cores[2].outgoing() if isinstance(s.message, PushPull)]
    newcomer_ident = pki.identity("n9")
    newcomer = Membership(
        SwimConfig.local(), LocalNode("n9", ("127.0.0.99", 7946)), random.Random(1), net.now,
        authenticator=Ed25519Items(newcomer_ident, pki.trust(*idents.values())),
        delegates=standard_delegates(SwimConfig.local()),
    )
    newcomer.receive("n2", cores[2].me.address, send.message, net.now, reliable=True)
    assert newcomer.num_live == 5
    assert records(newcomer).record("n1").discharge_available_w == 7.0
    assert newcomer.statistics().rumors_rejected == 0


# --- the transition table as a property -----------------------------------------------------

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD, MemberStatus.LEFT
)


def model(state: tuple[MemberStatus, int], kind: str, inc: int) -> tuple[MemberStatus, int]:
    """SWIM's rules for what one rumor about a member does to our view of it."""
    status, cur = state
    if kind == "alive":
        return (ALIVE, inc) if inc > cur else state
    if kind == "suspect":
        if status is ALIVE and inc >= cur:
            return (SUSPECT, inc)
        if status is SUSPECT and inc > cur:
            return (SUSPECT, inc)
        return state
    if kind == "dead":
        return (DEAD, inc) if inc >= cur and status in (ALIVE, SUSPECT) else state
    return (LEFT, inc) if inc >= cur and status is not LEFT else state


rumor = st.tuples(st.sampled_from(["alive", "suspect", "dead", "left"]), st.integers(0, 4))


@settings(max_examples=150, deadline=None)
@given(st.lists(rumor, max_size=25))
def test_transitions_follow_the_table(rumors):
    core = Membership(SwimConfig.local(), LocalNode("a", ("10.0.0.1", 7946)), random.Random(0), 0.0)
    x = Alive("x", 0, "10.0.0.2", 7946, "s", "t")
    core.receive("x", x.address, Gossip(Rumors(alive=(x,))), 0.0)
    expected = (ALIVE, 0)
    for i, (kind, inc) in enumerate(rumors):
        item = {
            "alive": Alive("x", inc, "10.0.0.2", 7946, "s", "t"),
            "suspect": Suspect("x", inc, f"r{i}"),
            "dead": Dead("x", inc, f"r{i}"),
            "left": Left("x", inc),
        }[kind]
        core.receive("r", ("10.0.0.3", 7946), Gossip(Rumors(**{kind: (item,)})), float(i))
        expected = model(expected, kind, inc)
        m = core.member("x")
        assert (m.status, m.incarnation) == expected
