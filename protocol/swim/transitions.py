"""The state-transition rules of membership, in one table (after h11's ``_state.py``).

Everything that decides how a rumor changes what we believe about a member lives here. A
rumor is one of ``Alive``, ``Suspect``, ``Dead``, ``Left`` at an incarnation; a member is
unknown or ``ALIVE``/``SUSPECT``/``DEAD``/``LEFT`` at an incarnation. ``decide`` returns a
``Move``; the core carries it out (after checking the rumor's signature, which the table
does not see). A rumor not newer than what we know changes nothing.

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

from protocol.swim.members import MemberStatus
from protocol.swim.messages import Alive, Dead, Left, Suspect

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
