"""Node identity: Ed25519 keys, CA-signed node certificates, revocations, the trust store.

Theory of operation
-------------------
Trust is per node. Every charger holds its own Ed25519 key; the operator's CA signs a
*certificate* binding that key to a node id, a site, a transformer, a set of roles and a
validity window. A key held by one charger therefore cannot speak for another, and a node
that meets a peer for the first time needs nothing but the peer's certificate (which it can
attach to a packet, see ``protocol.wire``) and the CA's public key.

A *revocation* is a CA-signed record naming one certificate (issuer, node id, serial). It
is a message like any other: any node may forward it, every node can check it, nobody but
the CA can make one.

Byte layouts (all integers big-endian inside msgpack; see docs/wire-format.md):

    certificate = msgpack([1, serial, issuer_id, node_id, public_key, site_id,
                           transformer_id, [roles...], not_before_ms, not_after_ms])
                  || Ed25519 signature by the CA over the msgpack bytes (64)
    revocation  = msgpack([1, issuer_id, node_id, serial, revoked_at_ms])
                  || Ed25519 signature by the CA (64)

``issuer_id`` is the first 8 bytes of BLAKE2b(CA public key), so a trust store can hold
several CA keys (rotation) and pick the right one without trying each.

Nothing here reads a clock: validity checks take ``now_ms`` from the caller.
"""

from __future__ import annotations

import collections
import hashlib
import re
import struct
from collections.abc import Iterable

import attrs
import nacl.bindings as sodium

from protocol import codec
from protocol.errors import BadPacket, DropReason, LocalProtocolError

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
ISSUER_ID_BYTES = 8
CERT_FORMAT = 1
REVOCATION_FORMAT = 1
MAX_CERT_BYTES = 1024

NODE_ID_MAX = 32
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Roles a certificate may grant. Unknown roles are refused at enrolment (a typo would
# silently grant nothing) but tolerated on the wire (a newer CA may know more).
KNOWN_ROLES = frozenset({"detector", "utility-reader", "operator"})


def check_id(kind: str, value: str, max_len: int = 64) -> str:
    """Validate a node, site or transformer id; raise ValueError naming ``kind``."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_len or not _ID_RE.fullmatch(value):
        raise ValueError(
            f"{kind} must be 1 to {max_len} characters of letters, digits, '.', '_' or '-',"
            f" starting with a letter or digit (got {value!r})"
        )
    return value


def issuer_id_of(ca_public_key: bytes) -> bytes:
    return hashlib.blake2b(ca_public_key, digest_size=ISSUER_ID_BYTES).digest()


# --- keys ------------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class SigningKey:
    """An Ed25519 private key (libsodium's 64-byte form: seed || public key)."""

    seed: bytes = attrs.field(validator=lambda _i, _a, v: _check_len("seed", v, SEED_BYTES))
    secret: bytes = attrs.field(init=False)
    public_key: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        pk, sk = sodium.crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "secret", sk)
        object.__setattr__(self, "public_key", pk)

    @classmethod
    def generate(cls, random_bytes: bytes) -> SigningKey:
        """From 32 bytes of entropy supplied by the caller (os.urandom in the shell)."""
        return cls(seed=random_bytes)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        signed: bytes = sodium.crypto_sign(message, self.secret)
        return signed[:SIGNATURE_BYTES]

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(public_key={self.public_key.hex()[:16]}...)"


def _check_len(name: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        raise ValueError(f"{name} must be {n} bytes")


def _ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except Exception:  # nacl raises BadSignatureError, or ValueError/TypeError on bad sizes
        return False
    return True


@attrs.frozen
class VerifiedStatistics:
    hits: int  # verifications answered from the memo (no Ed25519 arithmetic)
    misses: int  # verifications computed (valid or not)
    entries: int
    capacity: int


class VerifiedSignatures:
    """A bounded memo of Ed25519 verifications that *succeeded*, shared by one process.

    Whether a signature verifies is a pure function of (public key, message, signature). When
    many agents run in one process (the benchmarks, the demo, simulations on real sockets)
    the same signed bytes reach every one of them: a rumor relayed through the mesh, a
    certificate attached to packets, a packet sealed once for many members. Each agent would
    otherwise redo the same Ed25519 arithmetic (about 50 us) for each.

    The key is BLAKE2b-256 over the key, the signature and the message, each with its length
    in front: a hit means those exact bytes verified before. Only successes are kept, so a
    forged or tampered packet (other bytes, another digest) always meets the real check and
    fails; nothing an attacker sends can make a later check pass. Replay protection is not
    here (it is the ``Opener``'s window, checked before the signature): a memo hit only says
    the bytes are authentic, never that they are fresh. Bounded LRU: a hit moves to the end,
    the oldest entry goes when full.
    """

    def __init__(self, capacity: int = 16384) -> None:
        if capacity < 0:
            raise LocalProtocolError("capacity must not be negative")
        self.capacity = capacity
        self._ok: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._hits = 0
        self._misses = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if self.capacity == 0:
            self._misses += 1
            return _ed25519_verify(public_key, message, signature)
        digest = hashlib.blake2b(
            b"".join((_LEN.pack(len(public_key)), public_key, _LEN.pack(len(signature)), signature, message)),
            digest_size=32,
        ).digest()
        ok = self._ok
        if digest in ok:
            ok.move_to_end(digest)
            self._hits += 1
            return True
        self._misses += 1
        if not _ed25519_verify(public_key, message, signature):
            return False
        ok[digest] = None
        if len(ok) > self.capacity:
            ok.popitem(last=False)
        return True

    def clear(self) -> None:
        self._ok.clear()

    def statistics(self) -> VerifiedStatistics:
        return VerifiedStatistics(self._hits, self._misses, len(self._ok), self.capacity)


_LEN = struct.Struct(">I")

# The process's memo (see ``VerifiedSignatures``): every signature check in ``protocol``
# (packets, rumors, certificates, revocations) goes through ``verify_detached`` and so here.
VERIFIED = VerifiedSignatures()


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by the key."""
    return VERIFIED.verify(public_key, message, signature)


# --- certificates ----------------------------------------------------------------------------


@attrs.frozen
class Certificate:
    """What the CA vouches for about one node."""

    serial: int = codec.integer(0, 2**64 - 1)
    issuer_id: bytes = codec.blob(exact_len=ISSUER_ID_BYTES)
    node_id: str = codec.text(NODE_ID_MAX)
    public_key: bytes = codec.blob(exact_len=PUBLIC_KEY_BYTES)
    site_id: str = codec.text(64)
    transformer_id: str = codec.text(64)
    roles: tuple[str, ...] = codec.items(16)
    not_before_ms: int = codec.integer(0, 2**63 - 1)
    not_after_ms: int = codec.integer(0, 2**63 - 1)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def valid_at(self, now_ms: int) -> bool:
        return self.not_before_ms <= now_ms <= self.not_after_ms


@attrs.frozen
class _CertBody:
    format: int = codec.integer(0, 255)
    cert: Certificate = codec.field()


@attrs.frozen
class Revocation:
    """The CA withdraws certificate ``serial`` of ``node_id``."""

    issuer_id: bytes = codec.blob(exact_len=ISSUER_ID_BYTES)
    node_id: str = codec.text(NODE_ID_MAX)
    serial: int = codec.integer(0, 2**64 - 1)
    revoked_at_ms: int = codec.integer(0, 2**63 - 1)


@attrs.frozen
class _RevocationBody:
    format: int = codec.integer(0, 255)
    revocation: Revocation = codec.field()


def sign_certificate(cert: Certificate, ca_key: SigningKey) -> bytes:
    """Encode and sign ``cert`` with the CA key; returns the certificate bytes."""
    if cert.issuer_id != issuer_id_of(ca_key.public_key):
        raise LocalProtocolError("certificate issuer_id does not match the signing CA key")
    check_id("node id", cert.node_id, NODE_ID_MAX)
    tbs = codec.encode(_CertBody(format=CERT_FORMAT, cert=cert))
    return tbs + ca_key.sign(tbs)


def sign_revocation(revocation: Revocation, ca_key: SigningKey) -> bytes:
    if revocation.issuer_id != issuer_id_of(ca_key.public_key):
        raise LocalProtocolError("revocation issuer_id does not match the signing CA key")
    tbs = codec.encode(_RevocationBody(format=REVOCATION_FORMAT, revocation=revocation))
    return tbs + ca_key.sign(tbs)


def _split_signed_untrusted(data: bytes, max_len: int) -> tuple[bytes, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadPacket(DropReason.BAD_CERTIFICATE, "not bytes")
    data = bytes(data)
    if len(data) > max_len:
        raise BadPacket(DropReason.TOO_LARGE, f"signed record of {len(data)} bytes")
    if len(data) <= SIGNATURE_BYTES:
        raise BadPacket(DropReason.TRUNCATED, "signed record shorter than its signature")
    return data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]


def _peek_issuer_untrusted(tbs: bytes, index: int) -> bytes:
    """Read the issuer id from the unverified msgpack array to choose the CA key."""
    value = codec.unpack_untrusted(tbs)
    try:
        inner = value[1]
        issuer = inner[index]
    except (TypeError, IndexError, KeyError):
        raise BadPacket(DropReason.BAD_CERTIFICATE, "no issuer id") from None
    if type(issuer) is not bytes:
        raise BadPacket(DropReason.BAD_CERTIFICATE, "issuer id is not bytes")
    return issuer


def decode_certificate_untrusted(data: bytes, ca_keys: dict[bytes, bytes]) -> Certificate:
    """Verify a certificate's CA signature, then decode it. Raises only ``BadPacket``.

    ``ca_keys`` maps issuer id -> CA public key. Validity in time and revocation are the
    trust store's business (they need ``now`` and state).
    """
    tbs, sig = _split_signed_untrusted(data, MAX_CERT_BYTES)
    issuer = _peek_issuer_untrusted(tbs, 1)
    ca_key = ca_keys.get(issuer)
    if ca_key is None:
        raise BadPacket(DropReason.BAD_CERTIFICATE, "issued by an unknown CA")
    if not verify_detached(ca_key, tbs, sig):
        raise BadPacket(DropReason.BAD_CERTIFICATE, "CA signature does not verify")
    body = codec.decode_untrusted(_CertBody, tbs)
    if body.format != CERT_FORMAT:
        raise BadPacket(DropReason.BAD_CERTIFICATE, f"certificate format {body.format}")
    cert = body.cert
    if not _ID_RE.fullmatch(cert.node_id):
        raise BadPacket(DropReason.BAD_CERTIFICATE, "malformed node id")
    return cert


def decode_revocation_untrusted(data: bytes, ca_keys: dict[bytes, bytes]) -> Revocation:
    """Verify a revocation's CA signature, then decode it. Raises only ``BadPacket``."""
    tbs, sig = _split_signed_untrusted(data, MAX_CERT_BYTES)
    issuer = _peek_issuer_untrusted(tbs, 0)
    ca_key = ca_keys.get(issuer)
    if ca_key is None:
        raise BadPacket(DropReason.BAD_CERTIFICATE, "revocation from an unknown CA")
    if not verify_detached(ca_key, tbs, sig):
        raise BadPacket(DropReason.BAD_SIGNATURE, "revocation signature does not verify")
    body = codec.decode_untrusted(_RevocationBody, tbs)
    if body.format != REVOCATION_FORMAT:
        raise BadPacket(DropReason.BAD_CERTIFICATE, f"revocation format {body.format}")
    return body.revocation


# --- identity and trust store ----------------------------------------------------------------


@attrs.frozen
class NodeIdentity:
    """What a node needs to speak: its key, its certificate and the certificate's bytes."""

    key: SigningKey
    certificate: Certificate
    certificate_bytes: bytes

    @property
    def node_id(self) -> str:
        return self.certificate.node_id

    @classmethod
    def from_parts(cls, key: SigningKey, certificate_bytes: bytes, ca_public_key: bytes) -> NodeIdentity:
        """Check that the certificate is the CA's and names this key; raise ValueError."""
        try:
            cert = decode_certificate_untrusted(
                certificate_bytes, {issuer_id_of(ca_public_key): ca_public_key}
            )
        except BadPacket as exc:
            raise ValueError(f"certificate is not valid for this CA ({exc})") from None
        if cert.public_key != key.public_key:
            raise ValueError("certificate was issued for a different key than this node's")
        return cls(key=key, certificate=cert, certificate_bytes=certificate_bytes)


@attrs.frozen
class TrustStatistics:
    certificates: int
    revocations: int


class TrustStore:
    """CA keys, the certificates we have learned, and the revocations we have seen.

    Certificates arrive untrusted (attached to packets, in push-pull syncs) and are kept
    only once their CA signature verifies. For one node id the certificate with the later
    ``not_before_ms`` wins, so a renewed certificate replaces the old one and a replayed
    old one cannot push the new one out.
    """

    def __init__(self, ca_public_keys: Iterable[bytes]) -> None:
        self.ca_keys: dict[bytes, bytes] = {}
        for pk in ca_public_keys:
            _check_len("CA public key", pk, PUBLIC_KEY_BYTES)
            self.ca_keys[issuer_id_of(pk)] = pk
        if not self.ca_keys:
            raise LocalProtocolError("a trust store needs at least one CA public key")
        self._certs: dict[str, Certificate] = {}
        # Raw certificate bytes already verified: a packet that attaches a known
        # certificate costs a dict lookup, not a second signature check.
        self._by_raw: dict[bytes, Certificate] = {}
        self._raw_by_node: dict[str, bytes] = {}
        self._revoked: dict[tuple[bytes, int], tuple[Revocation, bytes]] = {}

    # learning

    def add_certificate_untrusted(self, data: bytes, now_ms: int) -> Certificate:
        """Verify and remember a certificate. Raises only ``BadPacket``."""
        cert = self._by_raw.get(data)
        if cert is None:
            cert = decode_certificate_untrusted(data, self.ca_keys)
            self._check_usable(cert, now_ms)
            self._remember(cert)
            self._by_raw[bytes(data)] = cert
            if self._certs.get(cert.node_id) == cert:
                self._raw_by_node[cert.node_id] = bytes(data)
        else:
            self._check_usable(cert, now_ms)
        return cert

    def add_certificate(self, cert: Certificate, raw: bytes | None = None) -> None:
        """Remember a certificate we already trust (our own, loaded from disk)."""
        if cert.issuer_id not in self.ca_keys:
            raise LocalProtocolError("certificate issued by a CA this store does not trust")
        self._remember(cert)
        if raw is not None and self._certs.get(cert.node_id) == cert:
            self._raw_by_node[cert.node_id] = raw
            self._by_raw[raw] = cert

    def _remember(self, cert: Certificate) -> None:
        old = self._certs.get(cert.node_id)
        if old is None or cert.not_before_ms >= old.not_before_ms:
            self._certs[cert.node_id] = cert
            if old is not None and old != cert:
                self._by_raw = {raw: c for raw, c in self._by_raw.items() if c != old}

    def add_revocation_untrusted(self, data: bytes) -> Revocation:
        """Verify and apply a revocation. Raises only ``BadPacket``. Idempotent."""
        rev = decode_revocation_untrusted(data, self.ca_keys)
        self._revoked[(rev.issuer_id, rev.serial)] = (rev, bytes(data))
        return rev

    # looking up

    def certificate(self, node_id: str) -> Certificate | None:
        return self._certs.get(node_id)

    def raw_certificate(self, node_id: str) -> bytes | None:
        """The certificate of ``node_id`` as the CA signed it, to pass on to peers."""
        return self._raw_by_node.get(node_id)

    def is_revoked(self, cert: Certificate) -> bool:
        return (cert.issuer_id, cert.serial) in self._revoked

    def _check_usable(self, cert: Certificate, now_ms: int) -> None:
        if (cert.issuer_id, cert.serial) in self._revoked:
            raise BadPacket(DropReason.SIGNER_REVOKED, cert.node_id)
        if now_ms < cert.not_before_ms:
            raise BadPacket(DropReason.SIGNER_NOT_YET_VALID, cert.node_id)
        if now_ms > cert.not_after_ms:
            raise BadPacket(DropReason.SIGNER_EXPIRED, cert.node_id)

    def signer(self, node_id: str, now_ms: int) -> Certificate:
        """The usable certificate of ``node_id`` at ``now_ms``, or ``BadPacket`` saying why not."""
        cert = self._certs.get(node_id)
        if cert is None:
            raise BadPacket(DropReason.UNKNOWN_SIGNER, node_id)
        self._check_usable(cert, now_ms)
        return cert

    def revocations(self) -> list[Revocation]:
        return [rev for rev, _raw in self._revoked.values()]

    def revocation_records(self) -> list[bytes]:
        """The signed revocations as received, for forwarding to peers."""
        return [raw for _rev, raw in self._revoked.values()]

    def statistics(self) -> TrustStatistics:
        return TrustStatistics(certificates=len(self._certs), revocations=len(self._revoked))
