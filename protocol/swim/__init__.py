"""SWIM membership with Lifeguard, as a sans-IO core (see ``protocol.swim.core``).

The shell imports what it needs from here: ``Membership`` and ``LocalNode``, the delegate
seam (``Delegate``, ``Host``) and its two clients here (``StateRecords``, ``UrgentBroadcasts``), the presets in
``SwimConfig``, the outputs (``Send`` and the events), the messages it must route to the core
(``HANDLED_MESSAGES``) and the rumor authenticators.
"""

from protocol.swim.auth import Ed25519Items, ItemAuthenticator, Unsigned
from protocol.swim.config import SwimConfig
from protocol.swim.core import (
    HANDLED_MESSAGES,
    LocalNode,
    Membership,
    MembershipStatistics,
    push_pull_scale,
)
from protocol.swim.delegate import ALLOCATION_TYPE_BYTES, Delegate, Host
from protocol.swim.events import (
    Address,
    Delivered,
    Event,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    MemberSuspect,
    MemberUpdated,
    RecordRemoved,
    RecordUpdated,
    Refuted,
    Send,
)
from protocol.swim.members import Member, MemberSnapshot, MemberStatus
from protocol.swim.messages import (
    Ack,
    Alive,
    Broadcast,
    Dead,
    Gossip,
    Left,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Rumors,
    Suspect,
    Urgent,
)
from protocol.swim.queue import BroadcastQueue, retransmit_limit
from protocol.swim.records import StateRecords
from protocol.swim.suspicion import remaining_suspicion_time, suspicion_timeout
from protocol.swim.urgent import UrgentBroadcasts

__all__ = [
    "ALLOCATION_TYPE_BYTES",
    "HANDLED_MESSAGES",
    "Ack",
    "Address",
    "Alive",
    "Broadcast",
    "BroadcastQueue",
    "Dead",
    "Delegate",
    "Delivered",
    "Ed25519Items",
    "Event",
    "Gossip",
    "Host",
    "ItemAuthenticator",
    "Left",
    "LocalNode",
    "Member",
    "MemberDead",
    "MemberJoined",
    "MemberLeft",
    "MemberRemoved",
    "MemberSnapshot",
    "MemberStatus",
    "MemberSuspect",
    "MemberUpdated",
    "Membership",
    "MembershipStatistics",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "RecordRemoved",
    "RecordUpdated",
    "Refuted",
    "Rumors",
    "Send",
    "StateRecords",
    "Suspect",
    "SwimConfig",
    "Unsigned",
    "Urgent",
    "UrgentBroadcasts",
    "push_pull_scale",
    "remaining_suspicion_time",
    "retransmit_limit",
    "suspicion_timeout",
]
