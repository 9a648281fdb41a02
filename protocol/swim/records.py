"""The chargers' state records, replicated over the membership gossip (a ``Delegate``).

Each node publishes one ``StateRecord`` (its offer: power, energy, state of charge,
derating, faults, auth-list summary), signed, versioned by ``(incarnation, version)``. Peers
keep the newest record of every live member, re-gossip what is new to them, exchange all of
them in push-pull, and forget a record ``record_reap_s`` after its member died or left (at
once when the member is removed). ``capacity(scope)`` sums the live offers.

A record of ours from a previous life (heard after a restart) raises our next version above
it; a refutation (a new incarnation) re-publishes ours at that incarnation.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import attrs

from protocol import codec
from protocol.state import Capacity, Scope, StateRecord, capacity_sum, newer
from protocol.swim.delegate import QueuedDelegate
from protocol.swim.events import (
    MemberDead,
    MemberLeft,
    MemberRemoved,
    RecordRemoved,
    RecordUpdated,
    Refuted,
)
from protocol.swim.members import DOWN


class StateRecords(QueuedDelegate):
    rumor_types = frozenset({StateRecord})
    message_types = frozenset({StateRecord})

    def __init__(self, record_reap_s: float) -> None:
        super().__init__()
        self.record_reap_s = record_reap_s
        self._records: dict[str, StateRecord] = {}
        self._mine: StateRecord | None = None
        self._floor: tuple[int, int] = (-1, -1)  # newest own record of a previous life
        self._reaps: list[tuple[float, str, float]] = []  # (when, node id, member changed_at)

    # --- what the layers above use -------------------------------------------------------------

    def publish(
        self,
        now: float,
        *,
        discharge_available_w: float,
        energy_above_min_soc_wh: float,
        soc: float,
        thermal_derating: float = 0.0,
        faults: tuple[str, ...] = (),
        updated_at_ms: int,
        auth_list_version: int = 0,
        auth_list_hash: bytes = b"",
        rated_discharge_w: float = 0.0,
    ) -> StateRecord:
        """Publish this node's new state record (``updated_at_ms``: the shell's wall clock).

        ``auth_list_version``/``auth_list_hash``: the summary of this node's local
        authorization list (0 and empty: none), which peers replicate by.
        ``rated_discharge_w``: the droop's base (0: not known).
        """
        host = self.host
        version = 1 if self._mine is None else self._mine.version + 1
        if (host.incarnation, version) <= self._floor:
            version = self._floor[1] + 1
        record = StateRecord(
            node_id=host.node_id,
            incarnation=host.incarnation,
            version=version,
            site_id=host.site_id,
            transformer_id=host.transformer_id,
            discharge_available_w=float(discharge_available_w),
            energy_above_min_soc_wh=float(energy_above_min_soc_wh),
            soc=float(soc),
            thermal_derating=float(thermal_derating),
            faults=tuple(faults),
            updated_at_ms=updated_at_ms,
            auth_list_version=auth_list_version,
            auth_list_hash=bytes(auth_list_hash),
            rated_discharge_w=float(rated_discharge_w),
        )
        return self._set_mine(record)

    def record(self, node_id: str) -> StateRecord | None:
        return self._records.get(node_id)

    def records(self) -> list[StateRecord]:
        return list(self._records.values())

    def capacity(self, scope: Scope | None = None) -> Capacity:
        """Sum of live members' (and this node's) offers in ``scope``."""
        return capacity_sum(self._records.values(), self.host.is_live, scope)

    # --- the seam -------------------------------------------------------------------------------

    def merge(self, items: list[Any], sender_id: str, now: float, *, join: bool = False) -> None:
        for r in items:
            self._on_record(r, sender_id)

    def receive_message(self, sender_id: str, message: Any, now: float) -> None:
        self._on_record(message, sender_id)

    def local_state(self, budget_bytes: int) -> list[Any]:
        items: list[Any] = []
        for r in self._records.values():
            size = len(codec.encode(r))
            if size > budget_bytes:
                break
            budget_bytes -= size
            items.append(r)
        return items

    def member_event(self, event: Any, now: float) -> None:
        if isinstance(event, MemberDead | MemberLeft):
            m = event.member
            heapq.heappush(self._reaps, (m.changed_at + self.record_reap_s, m.node_id, m.changed_at))
        elif isinstance(event, MemberRemoved):
            self._forget(event.node_id)
        elif isinstance(event, Refuted):
            mine = self._mine
            if mine is not None and mine.incarnation < event.incarnation:
                self._set_mine(attrs.evolve(mine, incarnation=event.incarnation, version=1))

    def next_deadline(self) -> float:
        return self._reaps[0][0] if self._reaps else math.inf

    def tick(self, now: float) -> None:
        reaps = self._reaps
        while reaps and reaps[0][0] <= now:
            _, node_id, changed_at = heapq.heappop(reaps)
            m = self.host.member(node_id)
            if m is not None and m.status in DOWN and m.changed_at == changed_at:
                self._forget(node_id)

    # --- rules ----------------------------------------------------------------------------------

    def _set_mine(self, record: StateRecord) -> StateRecord:
        record = self.host.sign(record)
        self._mine = record
        self._records[record.node_id] = record
        self.queue.put(record.node_id, record, len(codec.encode(record)))
        return record

    def _forget(self, node_id: str) -> None:
        self.queue.remove(node_id)
        if self._records.pop(node_id, None) is not None:
            self.host.emit(RecordRemoved(node_id))

    def _on_record(self, r: StateRecord, sender_id: str) -> None:
        host = self.host
        node_id = r.node_id
        if node_id == host.node_id:
            mine = self._mine
            if (
                r.order > self._floor
                and (mine is None or r.order > mine.order)
                and host.authentic(r, sender_id)  # a record from a previous life of ours
            ):
                self._floor = r.order
                if mine is not None:
                    self._set_mine(
                        attrs.evolve(
                            mine,
                            incarnation=max(host.incarnation, r.incarnation),
                            version=r.version + 1,
                        )
                    )
            return
        m = host.member(node_id)
        if m is None or not m.live:
            return
        if not newer(r, self._records.get(node_id)) or not host.authentic(r, sender_id):
            return
        self._records[node_id] = r
        self.queue.put(node_id, r, len(codec.encode(r)))
        host.emit(RecordUpdated(r))
