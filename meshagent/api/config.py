"""The ``[api]`` section: the API's TLS listener with operator client certificates.

The plain listener is ``mesh.api`` (tokens). With ``api.tls`` set, the agent also listens
there with TLS and **requires** a client certificate issued by ``api.client_ca`` (an X.509 CA
the operator keeps for people, not the mesh's node CA); a client that presents one is an
operator, without a token. Utilities use a token or the signed mesh query instead.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from meshagent.config import register_section, setting
from meshagent.errors import ConfigError


def _address(value: object) -> str:
    from meshagent.mesh.config import parse_host_port

    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if value:
        parse_host_port(value, 7948)
    return value


@attrs.frozen
class ApiSection:
    tls: str = setting("", parse=_address, shown='""',
                       doc="HOST:PORT of the TLS listener for operators' client certificates (empty: none).")
    tls_certificate: Path | None = setting(None, path=True, shown='""', doc="This agent's TLS certificate (PEM).")
    tls_key: Path | None = setting(None, path=True, shown='""', doc="Its private key (PEM, mode 0600).")
    client_ca: Path | None = setting(None, path=True, shown='""',
                                     doc="X.509 CA (PEM) whose client certificates are operators.")

    def __attrs_post_init__(self) -> None:
        if self.tls and not (self.tls_certificate and self.tls_key and self.client_ca):
            raise ConfigError("api.tls: also set api.tls_certificate, api.tls_key and api.client_ca")

    @property
    def tls_address(self) -> tuple[str, int] | None:
        from meshagent.mesh.config import parse_host_port

        return parse_host_port(self.tls, 7948) if self.tls else None


register_section("api", ApiSection)
