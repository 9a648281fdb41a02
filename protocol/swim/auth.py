"""Who may say what: per-rumor signatures.

Theory of operation
-------------------
The envelope proves who *relayed* a packet; a rumor inside it may have been written by
someone else (see ``protocol.swim.messages``). The core asks an ``ItemAuthenticator`` to
sign the rumors it authors and to verify the rumors it accepts from a relay that is not
their author. A rumor that arrives directly from its author needs no check beyond the
envelope's.

``Ed25519Items`` signs with the node's own key and verifies against the author's
certificate in the ``TrustStore`` (a revoked certificate never verifies). ``Unsigned``
signs nothing and trusts every relay: it is for simulations of thousands of nodes where
the cryptography would only cost time, never for an agent on a network.
"""

from __future__ import annotations

from typing import Protocol

from protocol.identity import NodeIdentity, TrustStore, verify_detached


class ItemAuthenticator(Protocol):
    def sign(self, payload: bytes) -> bytes: ...

    def verify(self, author_id: str, payload: bytes, signature: bytes) -> bool: ...


class Unsigned:
    """No rumor signatures (simulations only)."""

    def sign(self, payload: bytes) -> bytes:
        return b""

    def verify(self, author_id: str, payload: bytes, signature: bytes) -> bool:
        return True


class Ed25519Items:
    """Signs as ``identity``; verifies with certificates known to ``trust``.

    A rumor by an author whose certificate is not known yet fails verification: the shell
    should then ask the relay for it (``CertificateRequest``); the rumor will come again.
    """

    def __init__(self, identity: NodeIdentity, trust: TrustStore) -> None:
        self.identity = identity
        self.trust = trust

    def sign(self, payload: bytes) -> bytes:
        return self.identity.key.sign(payload)

    def verify(self, author_id: str, payload: bytes, signature: bytes) -> bool:
        cert = self.trust.certificate(author_id)
        if cert is None or self.trust.is_revoked(cert) or len(signature) != 64:
            return False
        return verify_detached(cert.public_key, payload, signature)
