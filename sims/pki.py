"""A deterministic test PKI: an operator CA and enrolled nodes, made in memory from a seed.

For simulations, benchmarks and tests alike (``tests/conftest.py`` imports it): the same seed
gives the same keys and certificates, so a simulated mesh is reproducible. Never for
production: the keys come from a seeded ``random.Random``.
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

NOW_MS = 1_764_115_200_000  # 2025-11-26T00:00:00Z; simulations and tests never read the wall clock


def _seeded_key(rng: random.Random) -> SigningKey:
    return SigningKey.generate(rng.randbytes(32))


class Pki:
    """A CA that can enrol nodes, deterministic from a seed."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.ca = _seeded_key(self.rng)
        self.serial = 0

    @property
    def issuer_id(self) -> bytes:
        return issuer_id_of(self.ca.public_key)

    def identity(
        self,
        node_id: str,
        *,
        roles: tuple[str, ...] = (),
        site_id: str = "site-1",
        transformer_id: str = "tx-1",
        not_before_ms: int = NOW_MS - 86_400_000,
        not_after_ms: int = NOW_MS + 86_400_000,
        key: SigningKey | None = None,
    ) -> NodeIdentity:
        self.serial += 1
        key = key or _seeded_key(self.rng)
        cert = Certificate(
            serial=self.serial,
            issuer_id=self.issuer_id,
            node_id=node_id,
            public_key=key.public_key,
            site_id=site_id,
            transformer_id=transformer_id,
            roles=roles,
            not_before_ms=not_before_ms,
            not_after_ms=not_after_ms,
        )
        return NodeIdentity.from_parts(key, sign_certificate(cert, self.ca), self.ca.public_key)

    def trust(self, *known: NodeIdentity) -> TrustStore:
        store = TrustStore([self.ca.public_key])
        for ident in known:
            store.add_certificate(ident.certificate)
        return store
