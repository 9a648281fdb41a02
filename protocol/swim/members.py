"""The member table: node id -> ``Member``, copy-on-write over a shared snapshot.

Theory of operation
-------------------
A ``Member`` is a frozen value (state changes make a new one with ``attrs.evolve``), so the
table can share members with others safely. A table may start from a ``MemberSnapshot``
(a frozen membership, e.g. restored from disk, or built once by a simulation for thousands
of cores) and records only its own changes in an overlay dict: ten thousand simulated
cores then cost ten thousand small overlays instead of 10^8 dict entries.

Members are also addressable by *index* (``size``, ``id_at``): a stable position for every
id ever seen (removed ones leave a hole). Probing walks a lazily shuffled order of indices
and random peer choice samples indices, so neither needs a per-core copy of the id list.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Iterator

import attrs

from protocol.swim.messages import Alive, Dead, Left, Suspect


class MemberStatus(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
DOWN = (MemberStatus.DEAD, MemberStatus.LEFT)


@attrs.frozen(slots=True)
class Member:
    """What this node believes about one other member."""

    node_id: str
    incarnation: int
    status: MemberStatus
    address: tuple[str, int]
    site_id: str
    transformer_id: str
    changed_at: float  # caller's monotonic seconds of the last status change
    alive: Alive  # the (signed) rumor that told us its address and incarnation
    accusation: Suspect | Dead | Left | None = None  # the (signed) rumor behind a non-alive status

    @property
    def live(self) -> bool:
        return self.status is MemberStatus.ALIVE or self.status is MemberStatus.SUSPECT

    @classmethod
    def from_alive(cls, alive: Alive, now: float) -> Member:
        return cls(
            alive.node_id, alive.incarnation, MemberStatus.ALIVE, alive.address,
            alive.site_id, alive.transformer_id, now, alive,
        )


class MemberSnapshot:
    """A frozen membership that many tables can start from (never mutated)."""

    def __init__(self, members: Iterable[Member]) -> None:
        self.by_id: dict[str, Member] = {m.node_id: m for m in members}
        self.ids: list[str] = list(self.by_id)
        self.live = sum(1 for m in self.by_id.values() if m.live)


_EMPTY = MemberSnapshot(())


class MemberTable:
    def __init__(self, snapshot: MemberSnapshot | None = None) -> None:
        self._base = snapshot or _EMPTY
        self._base_by_id = self._base.by_id
        self._base_ids = self._base.ids
        self._own: dict[str, Member | None] = {}
        self._own_ids: list[str] = []
        self.live_count = self._base.live
        self.count = len(self._base_ids)

    def get(self, node_id: str) -> Member | None:
        own = self._own
        if node_id in own:
            return own[node_id]
        return self._base_by_id.get(node_id)

    def put(self, member: Member) -> Member | None:
        """Store ``member``; return the member it replaced (or None)."""
        node_id = member.node_id
        old = self.get(node_id)
        if old is None:
            self.count += 1
            if node_id not in self._own and node_id not in self._base_by_id:
                self._own_ids.append(node_id)
        elif old.live:
            self.live_count -= 1
        if member.live:
            self.live_count += 1
        self._own[node_id] = member
        return old

    def remove(self, node_id: str) -> Member | None:
        old = self.get(node_id)
        if old is None:
            return None
        self.count -= 1
        if old.live:
            self.live_count -= 1
        self._own[node_id] = None
        return old

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Member]:
        own = self._own
        base = self._base_by_id
        for node_id in self._base_ids:
            m = own[node_id] if node_id in own else base[node_id]
            if m is not None:
                yield m
        for node_id in self._own_ids:
            m = own[node_id]
            if m is not None:
                yield m

    @property
    def size(self) -> int:
        """The index space: every id ever stored has a position below this."""
        return len(self._base_ids) + len(self._own_ids)

    def id_at(self, index: int) -> str:
        nb = len(self._base_ids)
        return self._base_ids[index] if index < nb else self._own_ids[index - nb]

    def at(self, index: int) -> Member | None:
        return self.get(self.id_at(index))

    def sample(
        self, k: int, rng: random.Random, accept: Callable[[Member], bool]
    ) -> list[Member]:
        """Up to ``k`` distinct random members for which ``accept`` is true."""
        if k <= 0:
            return []
        size = self.size
        chosen: list[Member] = []
        if size > 4 * k:
            seen: set[str] = set()
            for _ in range(8 * k + 16):
                m = self.get(self.id_at(rng.randrange(size)))
                if m is not None and m.node_id not in seen and accept(m):
                    seen.add(m.node_id)
                    chosen.append(m)
                    if len(chosen) == k:
                        return chosen
        # Small table, or most members refused: choose among all candidates.
        taken = {m.node_id for m in chosen}
        rest = [m for m in self if m.node_id not in taken and accept(m)]
        need = k - len(chosen)
        if len(rest) > need:
            rest = rng.sample(rest, need)
        return chosen + rest


class ProbeOrder:
    """Shuffled round-robin over table indices, shuffled lazily (Fisher-Yates on demand).

    Each round visits every index present at its start once, in a fresh random order;
    members added during a round join the next one. Memory is O(probes so far this round).
    """

    def __init__(self) -> None:
        self._n = 0
        self._i = 0
        self._swaps: dict[int, int] = {}

    def next_index(self, size: int, rng: random.Random) -> int:
        if self._i >= self._n:
            self._n = size
            self._i = 0
            self._swaps = {}
            if size == 0:
                return -1
        i = self._i
        j = rng.randrange(i, self._n)
        swaps = self._swaps
        vi = swaps.get(i, i)
        vj = swaps.get(j, j)
        swaps[j] = vi
        swaps.pop(i, None)
        self._i = i + 1
        return vj

    @property
    def remaining(self) -> int:
        return self._n - self._i
