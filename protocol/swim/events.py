"""Outputs of the membership core: packets to send and membership events (small frozen values)."""

from __future__ import annotations

from typing import Any

import attrs

from protocol.state import Scope, StateRecord
from protocol.swim.members import Member

Address = tuple[str, int]  # (host, port)


@attrs.frozen
class Send:
    """Send ``message`` to ``address``: over UDP, or over TCP when ``reliable``.

    Sends produced by one call may share one message object (``urgent`` sends the same
    ``Urgent`` to every member of the scope): the shell may seal it once and send the same
    bytes to each address.
    """

    address: Address
    message: Any
    reliable: bool = False


@attrs.frozen
class MemberJoined:
    member: Member  # first seen, or back after dead/left


@attrs.frozen
class MemberUpdated:
    member: Member  # new address or placement, or cleared of suspicion (refuted)


@attrs.frozen
class MemberSuspect:
    member: Member
    accuser: str


@attrs.frozen
class MemberDead:
    member: Member
    accuser: str


@attrs.frozen
class MemberLeft:
    member: Member


@attrs.frozen
class MemberRemoved:
    node_id: str
    reason: str  # "reaped" (dead or left long enough) or "revoked"


@attrs.frozen
class Refuted:
    """This node was suspected or declared dead and has raised its incarnation."""

    incarnation: int
    accuser: str


@attrs.frozen
class RecordUpdated:
    record: StateRecord


@attrs.frozen
class RecordRemoved:
    node_id: str


@attrs.frozen
class Delivered:
    """An urgent message from ``origin_id`` for a scope this node is in (delivered once)."""

    origin_id: str
    message: Any
    scope: Scope
    direct: bool  # straight from the origin rather than relayed by gossip


Event = (
    MemberJoined | MemberUpdated | MemberSuspect | MemberDead | MemberLeft | MemberRemoved
    | Refuted | RecordUpdated | RecordRemoved | Delivered
)
