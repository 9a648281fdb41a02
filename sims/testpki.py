"""One deterministic test PKI for the tests, the benchmarks and the simulations.

A ``Pki`` is a CA whose keys come from a seeded ``random.Random``: the same seed mints the
same CA and the same node keys in the same order, so a test or a benchmark can be re-run
bit for bit. It is for tests and simulations only (the keys are predictable by design); a
real deployment enrols nodes with ``meshagent ca`` and keeps its CA key offline.

    pki = Pki(seed=1)                      # the CA
    alice = pki.identity("alice")          # a NodeIdentity signed by it
    trust = pki.trust(alice)               # a TrustStore that knows the CA (and alice)
    nodes = pki.identities(100, "rt")      # rt-0000 ... rt-0099, spread over transformers

``now_ms`` is the 'now' the certificates are valid around (a fixed instant by default, so
tests never read the wall clock; the real-time benchmarks pass the wall clock).
"""

from __future__ import annotations

import random

from protocol.identity import (
    Certificate,
    NodeIdentity,
    SigningKey,
    TrustStore,
    issuer_id_of,
    sign_certificate,
)

NOW_MS = 1_764_115_200_000  # 2025-11-26T00:00:00Z
DAY_MS = 86_400_000


class Pki:
    """A CA that can enrol nodes, deterministic from a seed."""

    def __init__(self, seed: int = 1, *, now_ms: int = NOW_MS) -> None:
        self.rng = random.Random(seed)
        self.ca = SigningKey.generate(self.rng.randbytes(32))
        self.now_ms = now_ms
        self.serial = 0

    @property
    def issuer_id(self) -> bytes:
        return issuer_id_of(self.ca.public_key)

    @property
    def ca_public_key(self) -> bytes:
        return self.ca.public_key

    def key(self) -> SigningKey:
        """The next seeded signing key."""
        return SigningKey.generate(self.rng.randbytes(32))

    def identity(
        self,
        node_id: str,
        *,
        roles: tuple[str, ...] = (),
        site_id: str = "site-1",
        transformer_id: str = "tx-1",
        not_before_ms: int | None = None,
        not_after_ms: int | None = None,
        key: SigningKey | None = None,
    ) -> NodeIdentity:
        """A node identity with a certificate valid a day either side of ``now_ms``."""
        self.serial += 1
        key = key or self.key()
        cert = Certificate(
            serial=self.serial,
            issuer_id=self.issuer_id,
            node_id=node_id,
            public_key=key.public_key,
            site_id=site_id,
            transformer_id=transformer_id,
            roles=roles,
            not_before_ms=self.now_ms - DAY_MS if not_before_ms is None else not_before_ms,
            not_after_ms=self.now_ms + DAY_MS if not_after_ms is None else not_after_ms,
        )
        return NodeIdentity.from_parts(key, sign_certificate(cert, self.ca), self.ca.public_key)

    def identities(self, n: int, prefix: str, *, transformers: int = 1,
                   roles: tuple[str, ...] = ()) -> list[NodeIdentity]:
        """``n`` identities ``{prefix}-0000``..., node i on transformer ``tx-{i % transformers}``."""
        return [
            self.identity(f"{prefix}-{i:04d}", transformer_id=f"tx-{i % transformers}", roles=roles)
            for i in range(n)
        ]

    def trust(self, *known: NodeIdentity) -> TrustStore:
        """A trust store holding the CA's key (and the certificates of ``known``)."""
        store = TrustStore([self.ca.public_key])
        for ident in known:
            store.add_certificate(ident.certificate)
        return store
