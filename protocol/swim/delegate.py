"""The seam between the membership core and what rides on it (after memberlist's ``Delegate``).

memberlist lets an application hook into the gossip without touching ``state.go``: a
``Delegate`` gives node metadata, handles user messages, hands over broadcasts to piggyback,
and gives and merges the local state exchanged in push-pull; an ``EventDelegate`` hears
members join, leave and change. Ours is the same contract, sans-IO:

* ``rumor_types``: the rumor classes this client owns in a ``Rumors`` bundle (the state
  records, the urgent broadcasts). The core hands them over with ``merge`` whether they came
  piggybacked on a ping, in a gossip round, or in a push-pull's full state (``join`` then
  says which), and never looks inside;
* ``message_types``: message classes sent straight to a node that the core routes to
  ``receive_message`` (``StateRecord``, ``Urgent``);
* ``broadcasts(budget_bytes, limit)``: rumors to piggyback, after the core's own, within
  the bytes left in the datagram (``limit``: the retransmission limit for this mesh size);
* ``local_state(budget_bytes)``: what to add to a push-pull's full state;
* ``member_event(event, now)``: every membership event the core emits (joined, updated,
  suspect, dead, left, removed, refuted), after the core has applied it;
* ``next_deadline()`` / ``tick(now)``: a client's own timers (records reaped after their
  member died), driven with the core's.

Node metadata is the ``Alive`` rumor's site and transformer (``LocalNode``): it is part of
membership, so the core owns it.

A client reaches the core only through ``Host`` (what the core offers: who we are, our
incarnation, signing, the authenticity rule for rumors, who is live, a way to send and to
emit events). New clients register with ``Membership.add_delegate``; their messages are
ordinary wire messages (``protocol.messages.message``). Type bytes 0x40-0x4F are reserved
for the allocation.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from protocol.swim.events import Send
from protocol.swim.members import Member
from protocol.swim.queue import BroadcastQueue

ALLOCATION_TYPE_BYTES = range(0x40, 0x50)  # reserved for the allocation's messages


class Host(Protocol):
    """What the membership core offers its delegates."""

    @property
    def node_id(self) -> str: ...

    @property
    def site_id(self) -> str: ...

    @property
    def transformer_id(self) -> str: ...

    @property
    def incarnation(self) -> int: ...

    @property
    def body_budget(self) -> int:
        """Bytes of message body one datagram can carry."""
        ...

    def sign(self, item: Any) -> Any:
        """``item`` with this node's signature (unchanged in unsigned simulations)."""
        ...

    def authentic(self, item: Any, sender_id: str) -> bool:
        """Whether a rumor relayed by ``sender_id`` may be believed (counted when not)."""
        ...

    def rejected(self) -> None:
        """Count a rumor refused for a reason of the client's own (undecodable body)."""
        ...

    def is_live(self, node_id: str) -> bool: ...

    def member(self, node_id: str) -> Member | None: ...

    def live_members(self) -> list[Member]: ...

    def send(self, send: Send) -> None: ...

    def emit(self, event: Any) -> None: ...


class Delegate:
    """A client of the membership core. Override what you need; the defaults do nothing."""

    rumor_types: frozenset[type] = frozenset()
    message_types: frozenset[type] = frozenset()

    def attach(self, host: Host) -> None:
        """Called once by ``Membership.add_delegate``."""
        self.host = host

    def merge(self, items: list[Any], sender_id: str, now: float, *, join: bool = False) -> None:
        """Rumors of ``rumor_types`` relayed by ``sender_id`` (``join``: in a join's full state)."""

    def receive_message(self, sender_id: str, message: Any, now: float) -> None:
        """A verified message of one of ``message_types`` from ``sender_id``."""

    def broadcasts(self, budget_bytes: int, limit: int) -> list[Any]:
        """Rumors to piggyback within ``budget_bytes`` (each sent at most ``limit`` times)."""
        return []

    def has_broadcasts(self) -> bool:
        """Whether ``broadcasts`` has anything to hand over (a gossip round is due then)."""
        return False

    def local_state(self, budget_bytes: int) -> list[Any]:
        """Rumors for a push-pull's full state, within ``budget_bytes``."""
        return []

    def member_event(self, event: Any, now: float) -> None:
        """A membership event the core just emitted."""

    def next_deadline(self) -> float:
        return math.inf

    def tick(self, now: float) -> None:
        """Run the client's timers due at ``now``."""


class QueuedDelegate(Delegate):
    """A client whose rumors wait in its own ``BroadcastQueue`` (``self.queue``) until they
    have been piggybacked ``limit`` times, as memberlist's ``TransmitLimitedQueue``."""

    def __init__(self) -> None:
        self.queue = BroadcastQueue()

    def has_broadcasts(self) -> bool:
        return bool(self.queue)

    def broadcasts(self, budget_bytes: int, limit: int) -> list[Any]:
        if not self.queue:
            return []
        return self.queue.take(budget_bytes, limit)[0]
