"""Urgent broadcasts: a message sent straight to every live member of a scope (a ``Delegate``).

``send(message, scope, now)`` wraps the message in a signed ``Broadcast`` (origin, serial,
scope, type byte, body), sends it as ``Urgent`` to every live member in scope at once (over
TCP when too big for a datagram) and also piggybacks it on the gossip, so a member the direct
send missed still hears it. Every member delivers it once (``Delivered``), whichever way it
came first, and re-gossips it; members out of scope only relay it. Seen broadcasts are
remembered for ``urgent_seen_s`` (at most ``MAX_SEEN_BROADCASTS``).
"""

from __future__ import annotations

from typing import Any

from protocol import codec
from protocol.errors import BadPacket
from protocol.messages import MESSAGE_TYPES, type_byte_of
from protocol.state import Scope
from protocol.swim.delegate import QueuedDelegate
from protocol.swim.events import Delivered, Send
from protocol.swim.messages import Broadcast, Urgent

MAX_SEEN_BROADCASTS = 8192
_GOSSIP_BASE = 1 + 1 + 6 * 3  # a Gossip message around one rumor list
_URGENT_BASE = 1


class UrgentBroadcasts(QueuedDelegate):
    rumor_types = frozenset({Broadcast})
    message_types = frozenset({Urgent})

    def __init__(self, seen_s: float) -> None:
        super().__init__()
        self.seen_s = seen_s
        self._serial = 0
        self._seen: dict[tuple[str, int], float] = {}

    def send(self, message: Any, scope: Scope, now: float) -> int:
        """Send ``message`` to every live member of ``scope`` now, and queue it for gossip.

        Returns the number of direct sends. A message too large for one datagram goes over
        TCP and is not piggybacked.
        """
        host = self.host
        self._serial += 1
        item = host.sign(
            Broadcast(
                host.node_id, self._serial, scope, type_byte_of(message), codec.encode(message)
            )
        )
        self._remember((host.node_id, item.serial), now)
        size = len(codec.encode(item))
        fits = _URGENT_BASE + size <= host.body_budget
        wrapped = Urgent(item)
        sent = 0
        for m in host.live_members():
            if scope.contains(m.site_id, m.transformer_id):
                host.send(Send(m.address, wrapped, not fits))
                sent += 1
        if fits:
            self.queue.put((host.node_id, item.serial), item, size)
        return sent

    # --- the seam -------------------------------------------------------------------------------

    def merge(self, items: list[Any], sender_id: str, now: float, *, join: bool = False) -> None:
        for b in items:
            self._on_broadcast(b, sender_id, now, direct=False)

    def receive_message(self, sender_id: str, message: Any, now: float) -> None:
        b = message.broadcast
        self._on_broadcast(b, sender_id, now, direct=sender_id == b.origin_id)

    # --- rules ----------------------------------------------------------------------------------

    def _remember(self, key: tuple[str, int], now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now and len(seen) < MAX_SEEN_BROADCASTS:
                break
            del seen[oldest]
        seen[key] = now + self.seen_s

    def _on_broadcast(self, b: Broadcast, sender_id: str, now: float, *, direct: bool) -> None:
        host = self.host
        key = (b.origin_id, b.serial)
        if b.origin_id == host.node_id or key in self._seen:
            return
        if not host.authentic(b, sender_id):
            return
        self._remember(key, now)
        size = len(codec.encode(b))
        if _GOSSIP_BASE + size <= host.body_budget:
            self.queue.put(key, b, size)
        if not b.scope.contains(host.site_id, host.transformer_id):
            return
        cls = MESSAGE_TYPES.get(b.type_byte)
        if cls is None:
            host.rejected()
            return
        try:
            message: Any = codec.decode_untrusted(cls, b.body)
        except BadPacket:
            host.rejected()
            return
        host.emit(Delivered(b.origin_id, message, b.scope, direct))
