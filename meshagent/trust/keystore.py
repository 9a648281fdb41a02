"""Keys, certificates and the operator CA on disk.

Theory of operation
-------------------
Everything is a small armored text file (``-----BEGIN MESHAGENT ...-----``, base64), so an
installer can paste a public key into a ticket and ``cat`` shows what a file is.

Private keys are created with ``O_EXCL`` and mode 0600 in one step (never world-readable,
not even for a moment) and are refused on load if group or others can read them: a key
that leaked to another account on the charger can sign for it.

The CA directory (``meshagent ca init DIR``) holds::

    ca.key               the CA private key (0600; keep this directory offline)
    ca.pub               the CA public key, copied into every node bundle
    issued/ID-SERIAL.cert  every certificate it signed (so `ca revoke ID` can find them)
    revoked/ID-SERIAL.rev  every revocation it signed (distribute these to the mesh)

A node bundle (``meshagent enroll``) holds ``node.key`` (unless the key was made on the
charger with ``meshagent keygen``), ``node.cert``, ``ca.pub`` and a starter ``node.toml``.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import time
from pathlib import Path

import attrs

from meshagent.errors import MeshagentError
from protocol.identity import (
    KNOWN_ROLES,
    NODE_ID_MAX,
    PUBLIC_KEY_BYTES,
    SEED_BYTES,
    Certificate,
    NodeIdentity,
    Revocation,
    SigningKey,
    check_id,
    decode_certificate_untrusted,
    issuer_id_of,
    sign_certificate,
    sign_revocation,
)

PRIVATE_KEY = "ED25519 PRIVATE KEY"
PUBLIC_KEY = "ED25519 PUBLIC KEY"
CERTIFICATE = "NODE CERTIFICATE"
REVOCATION = "REVOCATION"

DEFAULT_VALID_DAYS = 825
CLOCK_SLACK_MS = 5 * 60 * 1000  # not-before is back-dated so a charger whose clock lags still accepts


def armor(kind: str, data: bytes) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN MESHAGENT {kind}-----", *lines, f"-----END MESHAGENT {kind}-----", ""])


def dearmor(kind: str, text: str, source: str) -> bytes:
    begin, end = f"-----BEGIN MESHAGENT {kind}-----", f"-----END MESHAGENT {kind}-----"
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        raise MeshagentError(f"{source}: not a meshagent {kind.lower()} file")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise MeshagentError(f"{source}: corrupt base64 in {kind.lower()} file") from None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text("ascii")
    except FileNotFoundError:
        raise MeshagentError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MeshagentError(f"cannot read {what} {path}: {exc}") from None


def write_private_key(path: Path, key: SigningKey) -> None:
    """Create ``path`` with mode 0600 and write the key; never overwrites."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MeshagentError(f"refusing to overwrite existing key file {path}") from None
    except OSError as exc:
        raise MeshagentError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(armor(PRIVATE_KEY, key.seed))
        f.flush()
        os.fsync(f.fileno())


def read_private_key(path: Path) -> SigningKey:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MeshagentError(f"key file not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MeshagentError(f"key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise MeshagentError(
            f"key file {path} can be read by group or others (mode {mode:04o});"
            f" run: chmod 600 {path}"
        )
    seed = dearmor(PRIVATE_KEY, _read_text(path, "key file"), str(path))
    if len(seed) != SEED_BYTES:
        raise MeshagentError(f"{path}: a private key must hold {SEED_BYTES} bytes, not {len(seed)}")
    return SigningKey(seed=seed)


def write_public(path: Path, kind: str, data: bytes) -> None:
    path.write_text(armor(kind, data))


def read_public_key(path: Path) -> bytes:
    pk = dearmor(PUBLIC_KEY, _read_text(path, "public key file"), str(path))
    if len(pk) != PUBLIC_KEY_BYTES:
        raise MeshagentError(f"{path}: a public key must hold {PUBLIC_KEY_BYTES} bytes")
    return pk


def read_certificate_bytes(path: Path) -> bytes:
    return dearmor(CERTIFICATE, _read_text(path, "certificate file"), str(path))


def new_key() -> SigningKey:
    return SigningKey.generate(os.urandom(SEED_BYTES))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the operator CA -------------------------------------------------------------------------


@attrs.frozen
class CertificateAuthority:
    directory: Path
    key: SigningKey

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    @property
    def issuer_id(self) -> bytes:
        return issuer_id_of(self.key.public_key)


def ca_init(directory: Path) -> CertificateAuthority:
    if (directory / "ca.key").exists():
        raise MeshagentError(f"a CA already exists in {directory} (ca.key is there)")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "issued").mkdir(exist_ok=True)
        (directory / "revoked").mkdir(exist_ok=True)
    except OSError as exc:
        raise MeshagentError(f"cannot create CA directory {directory}: {exc.strerror}") from None
    key = new_key()
    write_private_key(directory / "ca.key", key)
    write_public(directory / "ca.pub", PUBLIC_KEY, key.public_key)
    return CertificateAuthority(directory=directory, key=key)


def ca_load(directory: Path) -> CertificateAuthority:
    if not (directory / "ca.key").exists():
        raise MeshagentError(f"no CA in {directory} (expected {directory / 'ca.key'}; create one with 'meshagent ca init')")
    key = read_private_key(directory / "ca.key")
    pub = read_public_key(directory / "ca.pub")
    if pub != key.public_key:
        raise MeshagentError(f"{directory}: ca.pub does not belong to ca.key")
    return CertificateAuthority(directory=directory, key=key)


def issue_certificate(
    ca: CertificateAuthority,
    node_id: str,
    public_key: bytes,
    *,
    site_id: str,
    transformer_id: str,
    roles: tuple[str, ...] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
    now: int | None = None,
) -> tuple[Certificate, bytes]:
    try:
        check_id("node id", node_id, NODE_ID_MAX)
        check_id("site id", site_id)
        check_id("transformer id", transformer_id)
    except ValueError as exc:
        raise MeshagentError(str(exc)) from None
    unknown = sorted(set(roles) - KNOWN_ROLES)
    if unknown:
        raise MeshagentError(f"unknown role {unknown[0]!r} (known roles: {', '.join(sorted(KNOWN_ROLES))})")
    if not 1 <= valid_days <= 36500:
        raise MeshagentError(f"--days must be between 1 and 36500, got {valid_days}")
    t = now_ms() if now is None else now
    cert = Certificate(
        serial=int.from_bytes(os.urandom(8), "big") >> 1,
        issuer_id=ca.issuer_id,
        node_id=node_id,
        public_key=public_key,
        site_id=site_id,
        transformer_id=transformer_id,
        roles=tuple(sorted(set(roles))),
        not_before_ms=max(0, t - CLOCK_SLACK_MS),
        not_after_ms=t + valid_days * 86_400_000,
    )
    raw = sign_certificate(cert, ca.key)
    write_public(ca.directory / "issued" / f"{node_id}-{cert.serial:016x}.cert", CERTIFICATE, raw)
    return cert, raw


def issued_certificates(ca: CertificateAuthority, node_id: str) -> list[tuple[Certificate, bytes]]:
    out = []
    keys = {ca.issuer_id: ca.public_key}
    for path in sorted((ca.directory / "issued").glob(f"{node_id}-*.cert")):
        raw = read_certificate_bytes(path)
        cert = decode_certificate_untrusted(raw, keys)
        if cert.node_id == node_id:
            out.append((cert, raw))
    return out


def revoke(ca: CertificateAuthority, node_id: str, *, now: int | None = None) -> list[Path]:
    """Revoke every certificate this CA issued to ``node_id``; returns the new .rev files."""
    issued = issued_certificates(ca, node_id)
    if not issued:
        raise MeshagentError(f"this CA has issued no certificate to {node_id!r}")
    written = []
    t = now_ms() if now is None else now
    for cert, _raw in issued:
        path = ca.directory / "revoked" / f"{node_id}-{cert.serial:016x}.rev"
        if path.exists():
            continue
        rev = Revocation(issuer_id=ca.issuer_id, node_id=node_id, serial=cert.serial, revoked_at_ms=t)
        write_public(path, REVOCATION, sign_revocation(rev, ca.key))
        written.append(path)
    return written


def read_revocations(directory: Path) -> list[bytes]:
    return [dearmor(REVOCATION, _read_text(p, "revocation"), str(p)) for p in sorted(directory.glob("*.rev"))]


# --- node bundles ----------------------------------------------------------------------------

STARTER_CONFIG = """\
# meshagent node configuration. Reference: docs/config.md; check with
# `meshagent config check node.toml`.

[node]
id = "{node_id}"
key = "node.key"
certificate = "node.cert"
ca = "ca.pub"
state_dir = "state"
"""


@attrs.frozen
class Bundle:
    directory: Path
    certificate: Certificate
    key_written: bool


def enroll(
    ca: CertificateAuthority,
    node_id: str,
    out_dir: Path,
    *,
    site_id: str,
    transformer_id: str,
    roles: tuple[str, ...] = (),
    public_key: bytes | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Bundle:
    """Issue a certificate and write a node bundle into ``out_dir``."""
    key = None
    if public_key is None:
        if (out_dir / "node.key").exists():
            raise MeshagentError(f"refusing to overwrite existing key file {out_dir / 'node.key'}")
        key = new_key()
        public_key = key.public_key
    cert, raw = issue_certificate(
        ca, node_id, public_key, site_id=site_id, transformer_id=transformer_id,
        roles=roles, valid_days=valid_days,
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise MeshagentError(f"cannot create {out_dir}: {exc.strerror}") from None
    if key is not None:
        write_private_key(out_dir / "node.key", key)
    write_public(out_dir / "node.cert", CERTIFICATE, raw)
    write_public(out_dir / "ca.pub", PUBLIC_KEY, ca.public_key)
    cfg = out_dir / "node.toml"
    if not cfg.exists():
        cfg.write_text(STARTER_CONFIG.format(node_id=node_id))
    return Bundle(directory=out_dir, certificate=cert, key_written=key is not None)


def load_identity(key_path: Path, cert_path: Path, ca_path: Path, expect_node_id: str | None = None) -> NodeIdentity:
    """Load and cross-check a node's key, certificate and CA key."""
    key = read_private_key(key_path)
    raw = read_certificate_bytes(cert_path)
    ca_pub = read_public_key(ca_path)
    try:
        ident = NodeIdentity.from_parts(key, raw, ca_pub)
    except ValueError as exc:
        raise MeshagentError(f"{cert_path}: {exc}") from None
    if expect_node_id is not None and ident.node_id != expect_node_id:
        raise MeshagentError(
            f"node.id is {expect_node_id!r} but {cert_path} was issued to {ident.node_id!r}"
        )
    return ident
