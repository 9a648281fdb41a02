"""Who may call the node's HTTP API: one bearer token per role, kept in the state directory.

Theory of operation
-------------------
Two roles, as in the operator CA's certificates: ``operator`` (everything) and
``utility-reader`` (reads). Each role's token is a file ``<state_dir>/api/<role>.token``
(mode 0600, 32 random bytes, URL-safe base64). The agent makes the missing ones at start;
``meshagent api token`` prints one for the person who needs it. An operator who wants one
token for a whole fleet writes the same file on every charger (a Kubernetes Secret, say)
before the agent starts: a file that exists is never rewritten.

Comparison is constant-time (``hmac.compare_digest``). The files are read at start: to
rotate a token, replace the file and restart the agent (or use ``meshagent api token
--rotate``, which does the first half).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import attrs

from meshagent.errors import MeshagentError

OPERATOR = "operator"
UTILITY_READER = "utility-reader"
ROLES: tuple[str, ...] = (OPERATOR, UTILITY_READER)
READERS: frozenset[str] = frozenset(ROLES)
WRITERS: frozenset[str] = frozenset({OPERATOR})


def token_path(state_dir: Path, role: str) -> Path:
    if role not in ROLES:
        raise MeshagentError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return state_dir / "api" / f"{role}.token"


def ensure_token(state_dir: Path, role: str, *, rotate: bool = False) -> tuple[str, bool]:
    """The role's token, made (mode 0600) if absent or ``rotate``; returns (token, made)."""
    path = token_path(state_dir, role)
    if path.exists() and not rotate:
        return read_token_file(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return token, True


def read_token_file(path: Path) -> str:
    """A token file's token; refused when others may read it (like an SSH key)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise MeshagentError(f"cannot read token file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise MeshagentError(f"token file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    if not text:
        raise MeshagentError(f"token file {path} is empty")
    return text


@attrs.define
class Tokens:
    """The tokens this agent accepts, role by role."""

    by_role: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def load(cls, state_dir: Path) -> Tokens:
        return cls({role: ensure_token(state_dir, role)[0] for role in ROLES})

    def role_of(self, presented: str) -> str | None:
        found = None
        for role, token in self.by_role.items():
            # every role is compared, so the time taken does not say which one nearly matched
            if hmac.compare_digest(presented.encode(), token.encode()):
                found = role
        return found
