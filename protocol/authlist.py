"""The local authorization list: OCPP's LocalAuthList, its hash, and its transfer between peers.

Theory of operation
-------------------
The CSMS owns the list and numbers its versions; it sends it with SendLocalList (Full or
Differential). A charger keeps it durably (``meshagent.csms.authstore``) so that it can
authorize a known idToken while the CSMS is unreachable: an entry whose status is
``Accepted`` and whose expiry has not passed authorizes; every other status (``Blocked``,
``Expired``, ``Invalid``...) and an entry past its expiry refuse; a token not on the list is
``None`` (unknown), which the shell refuses when the CSMS cannot be asked.

``LocalAuthList`` is an immutable value: entries sorted by (idToken, type), a version, and a
SHA-256 ``list_hash`` over its canonical msgpack encoding (version included). The pair
``summary()`` = (version, hash) is what a node puts in its mesh state record; a node that
sees a peer with a newer version (or the same version and a greater hash: a tie-break so
that the mesh converges even if two lists ever share a number) pulls the list.

The pull is two messages in the authorization-list block (0x50-0x5F) of
``protocol.messages``: ``AuthListRequest`` (what I have) answered by ``AuthListChunk``s
(``chunks_for``), each small enough for a datagram. ``AuthListAssembler`` merges chunks
from an untrusted peer: it keeps one transfer at a time (the best version offered),
refuses inconsistent chunks, and accepts the list only when every chunk is there and the
rebuilt list hashes to the advertised hash. Its errors are ``BadPacket`` and only that.
The chunks travel inside signed envelopes, so the hash guards against mixed or corrupted
transfers, not against an enrolled peer that lies; the CSMS stays the source of truth.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from protocol import codec
from protocol.errors import BadPacket, DropReason, LocalProtocolError
from protocol.messages import message

HASH_BYTES = 32
MAX_ID_TOKEN = 36  # IdTokenType.idToken maxLength in OCPP 2.0.1
MAX_TOKEN_TYPE = 20
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_CHUNK_ENTRIES = 10  # ~75 bytes an entry: a chunk fits one 1,400-byte datagram
MAX_CHUNK_ENTRIES = 1000
MAX_CHUNKS = 10_000


class AuthStatus(enum.Enum):
    """OCPP 2.0.1 AuthorizationStatusEnumType."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    CONCURRENT_TX = "ConcurrentTx"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    NO_CREDIT = "NoCredit"
    NOT_ALLOWED_TYPE_EVSE = "NotAllowedTypeEVSE"
    NOT_AT_THIS_LOCATION = "NotAtThisLocation"
    NOT_AT_THIS_TIME = "NotAtThisTime"
    UNKNOWN = "Unknown"


@attrs.frozen
class AuthEntry:
    """One idToken on the list; ``expiry_ms`` is Unix milliseconds, or None for no expiry."""

    id_token: str = codec.text(MAX_ID_TOKEN)
    token_type: str = codec.text(MAX_TOKEN_TYPE)
    status: AuthStatus = AuthStatus.ACCEPTED
    expiry_ms: int | None = codec.integer(0, 2**53, default=None)

    @property
    def key(self) -> tuple[str, str]:
        return (self.id_token, self.token_type)


@attrs.frozen
class CanonicalList:
    """What the hash covers: the version and the sorted entries, msgpack-encoded."""

    version: int = codec.integer(0, 2**31 - 1)
    entries: tuple[AuthEntry, ...] = codec.items(DEFAULT_MAX_ENTRIES)


@attrs.frozen
class AuthListSummary:
    """What a node's state record carries about its list."""

    version: int
    list_hash: bytes

    def is_older_than(self, other: AuthListSummary) -> bool:
        """True if ``other`` should replace ours (newer version, or same version, greater hash)."""
        return (other.version, other.list_hash) > (self.version, self.list_hash)


class UpdateStatus(enum.Enum):
    """OCPP 2.0.1 SendLocalListStatusEnumType."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    VERSION_MISMATCH = "VersionMismatch"


@attrs.frozen
class LocalAuthList:
    version: int = 0
    entries: tuple[AuthEntry, ...] = ()
    list_hash: bytes = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        keys = [e.key for e in self.entries]
        if keys != sorted(set(keys)):
            raise LocalProtocolError("entries must be sorted by (id_token, token_type) and unique")
        digest = hashlib.sha256(codec.encode(CanonicalList(self.version, self.entries))).digest()
        object.__setattr__(self, "list_hash", digest)

    @classmethod
    def build(cls, version: int, entries: Iterable[AuthEntry]) -> LocalAuthList:
        """Sort and de-duplicate (the last entry for a token wins)."""
        by_key = {e.key: e for e in entries}
        return cls(version, tuple(by_key[k] for k in sorted(by_key)))

    def summary(self) -> AuthListSummary:
        return AuthListSummary(self.version, self.list_hash)

    def lookup(self, id_token: str, token_type: str) -> AuthEntry | None:
        lo, hi = 0, len(self.entries)
        key = (id_token, token_type)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid].key < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.entries) and self.entries[lo].key == key:
            return self.entries[lo]
        return None

    def authorize(self, id_token: str, token_type: str, now_ms: int) -> AuthStatus | None:
        """The list's verdict at ``now_ms``: a status, or None if the token is not listed.

        Only ``ACCEPTED`` authorizes; an accepted entry past its expiry is ``EXPIRED``.
        """
        entry = self.lookup(id_token, token_type)
        if entry is None:
            return None
        if entry.status is AuthStatus.ACCEPTED and entry.expiry_ms is not None and entry.expiry_ms <= now_ms:
            return AuthStatus.EXPIRED
        return entry.status

    def apply_full(self, version: int, entries: Iterable[AuthEntry],
                   max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[LocalAuthList, UpdateStatus]:
        new = LocalAuthList.build(version, entries)
        if version < 1 or len(new.entries) > max_entries:
            return self, UpdateStatus.FAILED
        return new, UpdateStatus.ACCEPTED

    def apply_differential(self, version: int, upserts: Iterable[AuthEntry], removals: Iterable[tuple[str, str]],
                           max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[LocalAuthList, UpdateStatus]:
        """OCPP D02: entries with idTokenInfo are added or replaced, those without removed;
        a version not newer than ours is refused with VersionMismatch."""
        if version <= self.version:
            return self, UpdateStatus.VERSION_MISMATCH
        by_key = {e.key: e for e in self.entries}
        for key in removals:
            by_key.pop(key, None)
        for e in upserts:
            by_key[e.key] = e
        if len(by_key) > max_entries:
            return self, UpdateStatus.FAILED
        return LocalAuthList(version, tuple(by_key[k] for k in sorted(by_key))), UpdateStatus.ACCEPTED


# --- OCPP SendLocalList payloads -----------------------------------------------------------


def parse_expiry_ms(text: str) -> int:
    """An OCPP dateTime (RFC 3339) -> Unix ms. Raises ValueError. Parses text; reads no clock."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a dateTime without a time zone")
    return int(moment.timestamp() * 1000)


def apply_send_local_list_untrusted(current: LocalAuthList, payload: Mapping[str, Any],
                                    max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[LocalAuthList, UpdateStatus]:
    """Apply a SendLocalList request (already checked against its schema) to ``current``.

    Raises only ``BadPacket`` (a date that does not parse, a field of the wrong type).
    """
    try:
        version = payload["versionNumber"]
        update_type = payload["updateType"]
        upserts: list[AuthEntry] = []
        removals: list[tuple[str, str]] = []
        for item in payload.get("localAuthorizationList", ()):
            token = item["idToken"]
            key = (str(token["idToken"]), str(token["type"]))
            info = item.get("idTokenInfo")
            if info is None:
                removals.append(key)
                continue
            expiry = info.get("cacheExpiryDateTime")
            upserts.append(AuthEntry(key[0], key[1], AuthStatus(info["status"]),
                                     None if expiry is None else parse_expiry_ms(expiry)))
        if type(version) is not int:
            raise TypeError("versionNumber")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadPacket(DropReason.BAD_FIELD, f"SendLocalList: {type(exc).__name__}: {exc}") from None
    if update_type == "Full":
        if removals:
            # A Full list names only what it holds; an entry without idTokenInfo is meaningless.
            raise BadPacket(DropReason.BAD_FIELD, "SendLocalList Full: entry without idTokenInfo")
        return current.apply_full(version, upserts, max_entries)
    if update_type == "Differential":
        return current.apply_differential(version, upserts, removals, max_entries)
    raise BadPacket(DropReason.BAD_FIELD, f"SendLocalList: updateType {update_type!r}")


# --- transfer between peers (0x50-0x5F) ------------------------------------------------------


@message(0x50)
@attrs.frozen
class AuthListRequest:
    """"Send me your list": carries what the asker has, so a peer with nothing newer stays quiet."""

    have_version: int = codec.integer(0, 2**31 - 1)
    have_hash: bytes = codec.blob(exact_len=HASH_BYTES)


@message(0x51)
@attrs.frozen
class AuthListChunk:
    """Chunk ``index`` of ``count`` of the list ``(version, list_hash)``."""

    version: int = codec.integer(1, 2**31 - 1)
    list_hash: bytes = codec.blob(exact_len=HASH_BYTES)
    index: int = codec.integer(0, MAX_CHUNKS - 1)
    count: int = codec.integer(1, MAX_CHUNKS)
    entries: tuple[AuthEntry, ...] = codec.items(MAX_CHUNK_ENTRIES)


def chunks_for(auth_list: LocalAuthList, max_entries: int = DEFAULT_CHUNK_ENTRIES) -> tuple[AuthListChunk, ...]:
    """Split a list into chunks (an empty list is one empty chunk)."""
    if not 0 < max_entries <= MAX_CHUNK_ENTRIES:
        raise LocalProtocolError(f"max_entries must be 1 to {MAX_CHUNK_ENTRIES}")
    if auth_list.version < 1:
        raise LocalProtocolError("there is no list to send (version 0)")
    parts: Sequence[tuple[AuthEntry, ...]] = [
        auth_list.entries[i : i + max_entries] for i in range(0, len(auth_list.entries), max_entries)
    ] or [()]
    if len(parts) > MAX_CHUNKS:
        raise LocalProtocolError("list too large to transfer")
    return tuple(AuthListChunk(auth_list.version, auth_list.list_hash, i, len(parts), part)
                 for i, part in enumerate(parts))


def wants_list(mine: AuthListSummary, request: AuthListRequest) -> bool:
    """Whether a peer's request should be answered with our chunks."""
    return AuthListSummary(request.have_version, request.have_hash).is_older_than(mine)


@attrs.frozen
class AssemblerStatistics:
    chunks_accepted: int
    chunks_ignored: int
    transfers_completed: int
    transfers_refused: int


@attrs.define
class AuthListAssembler:
    """Rebuilds a peer's list from its chunks; one transfer at a time, the best one offered."""

    current: LocalAuthList
    max_entries: int = DEFAULT_MAX_ENTRIES
    _target: tuple[int, bytes] | None = None
    _count: int = 0
    _parts: dict[int, tuple[AuthEntry, ...]] = attrs.field(factory=dict)
    _held: int = 0
    _stats: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(
        ("chunks_accepted", "chunks_ignored", "transfers_completed", "transfers_refused"), 0))

    def offer_untrusted(self, chunk: AuthListChunk) -> LocalAuthList | None:
        """Take one chunk (already decoded from a verified envelope).

        Returns the new list when the transfer completes and its hash checks; None while
        incomplete or when the chunk is of no interest. Raises only ``BadPacket``.
        """
        target = (chunk.version, chunk.list_hash)
        if not self.current.summary().is_older_than(AuthListSummary(*target)):
            self._stats["chunks_ignored"] += 1
            return None
        if self._target is None or target > self._target:
            self._target, self._count, self._parts, self._held = target, chunk.count, {}, 0
        elif target < self._target:
            self._stats["chunks_ignored"] += 1
            return None
        if chunk.count != self._count or chunk.index >= chunk.count:
            self._refuse()
            raise BadPacket(DropReason.BAD_FIELD, "chunk count or index inconsistent with its transfer")
        if chunk.index in self._parts:
            self._stats["chunks_ignored"] += 1  # a duplicate (retransmission)
            return None
        self._held += len(chunk.entries)
        if self._held > self.max_entries:
            self._refuse()
            raise BadPacket(DropReason.TOO_LARGE, "list larger than we keep")
        self._parts[chunk.index] = chunk.entries
        self._stats["chunks_accepted"] += 1
        if len(self._parts) < self._count:
            return None
        entries = [e for i in range(self._count) for e in self._parts[i]]
        keys = [e.key for e in entries]
        if keys != sorted(set(keys)):
            self._refuse()
            raise BadPacket(DropReason.BAD_FIELD, "entries not in canonical order")
        rebuilt = LocalAuthList(chunk.version, tuple(entries))
        if rebuilt.list_hash != chunk.list_hash:
            self._refuse()
            raise BadPacket(DropReason.BAD_FIELD, "rebuilt list does not match its hash")
        self.current = rebuilt
        self._target, self._parts, self._held = None, {}, 0
        self._stats["transfers_completed"] += 1
        return rebuilt

    def _refuse(self) -> None:
        self._target, self._parts, self._held = None, {}, 0
        self._stats["transfers_refused"] += 1

    def statistics(self) -> AssemblerStatistics:
        return AssemblerStatistics(**self._stats)
