"""Answering and asking signed capacity queries (``protocol.query``) over the mesh port.

``serve_queries(node)`` makes a running node answer ``CapacityQuery`` from certificates
with the ``utility-reader`` or ``operator`` role; others are refused and counted (no answer:
an answer to an unauthorised asker would leak the site's state). ``ask_capacity`` is the
utility's side: a short-lived signed endpoint on an ephemeral UDP port that sends the query,
with its certificate attached, and waits for the signed answer, retrying on loss.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from meshagent.errors import MeshagentError
from meshagent.mesh.node import MeshNode
from meshagent.transport.base import Address
from meshagent.transport.udp import UdpTransport
from meshagent.trust.endpoint import SecureEndpoint
from protocol.identity import NodeIdentity, TrustStore
from protocol.query import CapacityAnswer, CapacityQuery, may_query
from protocol.wire import Sealer


@attrs.define
class QueryStatistics:
    answered: int = 0
    refused: int = 0


def serve_queries(
    node: MeshNode, headroom_w: Callable[[], Mapping[str, float]] | None = None
) -> QueryStatistics:
    """Register the query handler on ``node``; returns its live counters.

    ``headroom_w``: transformer ratings known here (``[allocation].transformers``), for the
    transformer-aware total and breakdown of every answer.
    """
    from meshagent.allocation.capacity import transformer_aware

    stats = QueryStatistics()

    def on_query(sender_id: str, source: Address, query: Any) -> None:
        cert = node.endpoint.trust.certificate(sender_id)
        if cert is None or not may_query(cert.roles):
            stats.refused += 1
            return
        stats.answered += 1
        breakdown = transformer_aware(node, query.scope, headroom_w() if headroom_w else {})
        answer = CapacityAnswer.from_capacity(query.query_id, node.capacity(query.scope), breakdown)
        node.spawn(node.send, source, answer)

    node.on_message(CapacityQuery, on_query)
    return stats


def _local_address_towards(peer: Address) -> str:
    """The local IP the kernel would use to reach ``peer`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(peer)
        return str(s.getsockname()[0])


async def ask_capacity(
    identity: NodeIdentity,
    ca_public_key: bytes,
    peer: Address,
    query: CapacityQuery,
    *,
    boot_epoch: int,
    attempts: int = 3,
    timeout_s: float = 1.0,
) -> tuple[str, CapacityAnswer]:
    """Ask ``peer`` (its mesh port) and return (answering node id, its signed answer)."""
    if not may_query(identity.certificate.roles):
        raise MeshagentError(
            f"{identity.node_id}'s certificate has no utility-reader or operator role; "
            "enrol it with --role utility-reader"
        )
    transport = await UdpTransport.bind((_local_address_towards(peer), 0))
    trust = TrustStore([ca_public_key])
    endpoint = SecureEndpoint(transport, Sealer(identity, boot_epoch), trust)
    async with transport:
        for _ in range(attempts):
            await endpoint.send(peer, query, attach_certificate=True)
            with trio.move_on_after(timeout_s):
                while True:
                    got = await endpoint.receive()
                    msg = got.envelope.message
                    if isinstance(msg, CapacityAnswer) and msg.query_id == query.query_id:
                        return got.envelope.sender_id, msg
    raise MeshagentError(f"no answer from {peer[0]}:{peer[1]} after {attempts} tries "
                         "(is an agent there, and does it trust this CA?)")


def new_query_id() -> int:
    return int.from_bytes(os.urandom(4), "big")
