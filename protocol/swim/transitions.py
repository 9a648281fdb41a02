"""The state-transition rules of membership, in one table (after h11's ``_state.py``).

Everything that decides how a rumor changes what we believe about a member lives here. A
rumor is one of ``Alive``, ``Suspect``, ``Dead``, ``Left`` at an incarnation; a member is
unknown or ``ALIVE``/``SUSPECT``/``DEAD``/``LEFT`` at an incarnation. ``decide`` returns a
``Move``; ``Rules`` (below) carries it out on the core's member table, after checking the
rumor's signature (which the table does not see). A rumor not newer than what we know
changes nothing. Dead and left are one move, DOWN (memberlist's ``deadNode`` handles both).

About another member (``inc``: the rumor's incarnation, ``cur``: ours for that member):

=========  =========  ======================================  ========
rumor      status     condition                               move
=========  =========  ======================================  ========
Alive      unknown    always                                  ADOPT
Alive      any        inc > cur                               ADOPT
Suspect    ALIVE      inc >= cur                              SUSPECT
Suspect    SUSPECT    inc == cur                              CONFIRM
Suspect    SUSPECT    inc > cur (it refuted an older one)     SUSPECT
Dead       ALIVE,     inc >= cur                              DOWN
           SUSPECT
Left       ALIVE,     inc >= cur                              DOWN
           SUSPECT,
           DEAD
=========  =========  ======================================  ========

About ourselves (``cur``: our incarnation; nothing is refuted after we left):

=========  ======================================  ========
rumor      condition                               move
=========  ======================================  ========
Alive      inc > cur (a previous life of ours)     REFUTE
Suspect,   inc >= cur                              REFUTE
Dead       inc < cur (we refuted it already)       RETELL
Left       inc >= cur (a previous life left)       REFUTE
=========  ======================================  ========

Every other combination is IGNORE.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from protocol.swim.events import MemberDead, MemberJoined, MemberLeft, MemberUpdated
from protocol.swim.members import DOWN, Member, MemberStatus
from protocol.swim.messages import NO_RUMORS, Alive, Dead, Left, Rumors, Suspect

if TYPE_CHECKING:
    from protocol.swim.core import Membership

T_REAP_MEMBER = 3  # the core's timer kind for forgetting a dead or left member

ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
DEAD = MemberStatus.DEAD
LEFT = MemberStatus.LEFT

Rumor = Alive | Suspect | Dead | Left


class Move(enum.Enum):
    IGNORE = "ignore"
    ADOPT = "adopt"  # take the member as alive at the rumor's incarnation (joined/updated)
    SUSPECT = "suspect"  # start a suspicion
    CONFIRM = "confirm"  # an independent confirmation of the running suspicion
    DOWN = "down"  # dead or left, as the rumor says
    REFUTE = "refute"  # about us: raise our incarnation and say we are alive
    RETELL = "retell"  # about us, stale: tell the relay our current Alive


_Rule = Callable[[int, int], Move]


def _if(test: Callable[[int, int], bool], move: Move) -> _Rule:
    return lambda inc, cur: move if test(inc, cur) else Move.IGNORE


def _newer(inc: int, cur: int) -> bool:
    return inc > cur


def _not_older(inc: int, cur: int) -> bool:
    return inc >= cur


def _suspect_of_suspect(inc: int, cur: int) -> Move:
    if inc == cur:
        return Move.CONFIRM
    return Move.SUSPECT if inc > cur else Move.IGNORE


def _accusation_of_us(inc: int, cur: int) -> Move:
    return Move.REFUTE if inc >= cur else Move.RETELL


# (rumor kind, member status; None: unknown) -> rule(rumor incarnation, our incarnation of it)
TABLE: dict[tuple[type, MemberStatus | None], _Rule] = {
    (Alive, None): lambda inc, cur: Move.ADOPT,
    (Alive, ALIVE): _if(_newer, Move.ADOPT),
    (Alive, SUSPECT): _if(_newer, Move.ADOPT),
    (Alive, DEAD): _if(_newer, Move.ADOPT),
    (Alive, LEFT): _if(_newer, Move.ADOPT),
    (Suspect, ALIVE): _if(_not_older, Move.SUSPECT),
    (Suspect, SUSPECT): _suspect_of_suspect,
    (Dead, ALIVE): _if(_not_older, Move.DOWN),
    (Dead, SUSPECT): _if(_not_older, Move.DOWN),
    (Left, ALIVE): _if(_not_older, Move.DOWN),
    (Left, SUSPECT): _if(_not_older, Move.DOWN),
    (Left, DEAD): _if(_not_older, Move.DOWN),
}

# rumors about ourselves: rumor kind -> rule(rumor incarnation, our incarnation)
ABOUT_US: dict[type, _Rule] = {
    Alive: _if(_newer, Move.REFUTE),
    Suspect: _accusation_of_us,
    Dead: _accusation_of_us,
    Left: _if(_not_older, Move.REFUTE),
}


def decide(rumor: Rumor, status: MemberStatus | None, incarnation: int) -> Move:
    """The move for ``rumor`` about a member we know at ``status``/``incarnation``."""
    rule = TABLE.get((type(rumor), status))
    return Move.IGNORE if rule is None else rule(rumor.incarnation, incarnation)


def decide_about_us(rumor: Rumor, our_incarnation: int, *, left: bool) -> Move:
    """The move for ``rumor`` about this node."""
    if left:
        return Move.IGNORE
    return ABOUT_US[type(rumor)](rumor.incarnation, our_incarnation)


class Rules:
    """Carries out the table's moves on a core's member table (``Membership.rules``)."""

    def __init__(self, core: Membership) -> None:
        self.core = core

    def apply(self, rumors: Rumors, sender: str, now: float, *, join: bool = False) -> bool:
        """Apply a bundle relayed by ``sender``; True if it held a stale accusation of us."""
        core = self.core
        if rumors is NO_RUMORS:
            return False
        retell = False
        for group in (rumors.alive, rumors.suspect, rumors.dead, rumors.left):
            for item in group:
                retell |= self.apply_one(item, sender, now)
        for items in (rumors.records, rumors.broadcasts):
            if items:
                d = core.rumor_delegates.get(type(items[0]))
                if d is not None:
                    d.merge(list(items), sender, now, join=join)
        return retell

    def apply_one(self, item: Alive | Suspect | Dead | Left, sender: str, now: float) -> bool:
        """Apply one membership rumor; True if it was a stale accusation of us."""
        core = self.core
        if item.node_id == core.node_id:
            move = decide_about_us(item, core.incarnation, left=core.has_left)
            if move is Move.REFUTE and core.authentic(item, sender):
                accuser = item.from_id if isinstance(item, Suspect | Dead) else sender
                core.refute(item.incarnation, accuser, now)
            return move is Move.RETELL
        m = core.members_table.get(item.node_id)
        move = decide(item, None if m is None else m.status, -1 if m is None else m.incarnation)
        if move is Move.IGNORE:
            return False
        if move is Move.CONFIRM:
            assert isinstance(item, Suspect)
            core.probing.confirm(item, sender)
            return False
        if item.node_id in core.revoked or not core.authentic(item, sender):
            return False
        if move is Move.ADOPT:
            assert isinstance(item, Alive)
            self.adopt(m, item, now)
        elif move is Move.SUSPECT:
            assert isinstance(item, Suspect) and m is not None
            core.probing.suspect(m, item, now)
        else:  # Move.DOWN
            assert isinstance(item, Dead | Left) and m is not None
            self.down(m, item, now)
        return False

    def adopt(self, old: Member | None, a: Alive, now: float) -> None:
        core = self.core
        member = Member.from_alive(a, now)
        if old is not None and old.status is ALIVE:
            member = attrs.evolve(member, changed_at=old.changed_at)
        core.members_table.put(member)
        core.probing.forget(a.node_id)
        core.enqueue(("m", a.node_id), a)
        if old is None or old.status in DOWN:
            core.emit(MemberJoined(member), now)
        elif (
            old.status is SUSPECT
            or old.address != member.address
            or old.site_id != member.site_id
            or old.transformer_id != member.transformer_id
        ):
            core.emit(MemberUpdated(member), now)

    def down(self, m: Member, item: Dead | Left, now: float) -> None:
        """Dead or left: one rule, two statuses (memberlist's ``deadNode`` handles both)."""
        core = self.core
        status = LEFT if isinstance(item, Left) else DEAD
        core.probing.forget(m.node_id)
        member = attrs.evolve(m, incarnation=item.incarnation, status=status, changed_at=now, accusation=item)
        core.members_table.put(member)
        core.enqueue(("m", m.node_id), item)
        reap_s = core.config.left_member_reap_s if status is LEFT else core.config.dead_member_reap_s
        core.timers.push(now + reap_s, T_REAP_MEMBER, m.node_id, now)
        if isinstance(item, Left):
            core.emit(MemberLeft(member), now)
        else:
            core.emit(MemberDead(member, item.from_id), now)
