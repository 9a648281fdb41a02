"""The two kinds of protocol error (after h11).

``LocalProtocolError``: our own caller misused an API (a programming error, or a local
condition such as an exhausted sequence space). It is raised, never counted.

``BadPacket``: bytes from the network were unacceptable. Every ``*_untrusted`` function
raises this and only this for any bad input; the agent drops the packet, counts it under
its ``reason`` and carries on.
"""

from __future__ import annotations

import enum


class LocalProtocolError(Exception):
    """Our caller misused the API."""


class DropReason(enum.Enum):
    """Why a packet was dropped. Values are stable: they appear in metrics and logs."""

    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_HEADER = "bad_header"
    BAD_CERTIFICATE = "bad_certificate"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SIGNER = "unknown_signer"
    SIGNER_EXPIRED = "signer_expired"
    SIGNER_NOT_YET_VALID = "signer_not_yet_valid"
    SIGNER_REVOKED = "signer_revoked"
    REPLAY = "replay"
    OUTSIDE_SKEW = "outside_skew"
    BEFORE_START = "issued_before_start"  # may have been accepted before a restart
    MALFORMED_BODY = "malformed_body"
    BAD_FIELD = "bad_field"


class BadPacket(Exception):
    """The peer sent something we will not accept. Drop it and count ``reason``."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
