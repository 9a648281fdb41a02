"""``meshagent api token``, and the ``--token-file`` option every API-calling command takes.

The token file is also read from ``$MESHAGENT_TOKEN_FILE``. Commands that talk to the API add
``token_file_option``; ``current_token()`` is what they send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_chosen: dict[str, Path] = {}


def _remember(_ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None and param.name is not None:
        _chosen[param.name] = value


def _path_option(flag: str, envvar: str, text: str) -> Any:
    return click.option(flag, type=click.Path(dir_okay=False, path_type=Path), envvar=envvar,
                        expose_value=False, callback=_remember, is_eager=True, help=text)


_token = _path_option("--token-file", "MESHAGENT_TOKEN_FILE",
                      "File holding an API token (from `meshagent api token`); also $MESHAGENT_TOKEN_FILE.")
_cert = _path_option("--client-cert", "MESHAGENT_CLIENT_CERT",
                     "Operator's client certificate (PEM) for the API's TLS listener (api.tls); also $MESHAGENT_CLIENT_CERT.")
_key = _path_option("--client-key", "MESHAGENT_CLIENT_KEY", "Its private key (PEM); also $MESHAGENT_CLIENT_KEY.")
_server_ca = _path_option("--server-ca", "MESHAGENT_SERVER_CA",
                          "CA (PEM) that signed the agent's TLS certificate; also $MESHAGENT_SERVER_CA.")


def token_file_option(fn: Any) -> Any:
    """``--token-file``, or ``--client-cert``/``--client-key``/``--server-ca`` for TLS."""
    return _token(_cert(_key(_server_ca(fn))))


def current_ssl_context() -> Any:
    """A TLS context with the client certificate, or None when --client-cert is not given."""
    import ssl

    from meshagent.errors import MeshagentError

    cert = _chosen.get("client_cert")
    if cert is None:
        return None
    key, server_ca = _chosen.get("client_key"), _chosen.get("server_ca")
    if key is None or server_ca is None:
        raise MeshagentError("--client-cert needs --client-key and --server-ca too")
    try:
        ctx = ssl.create_default_context(cafile=str(server_ca))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise MeshagentError(f"cannot use --client-cert {cert} / --client-key {key} / --server-ca {server_ca}: {exc}") from None
    return ctx


def current_token() -> str | None:
    """The token from --token-file / $MESHAGENT_TOKEN_FILE, or None (the agent will answer 401)."""
    from meshagent.api.auth import read_token_file

    path = _chosen.get("token_file")
    return None if path is None else read_token_file(path)


def register(cli: click.Group) -> None:
    @cli.group("api")
    def api() -> None:
        """The node's HTTP API: tokens for operators and utilities."""

    @api.command("token")
    @click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="The node's TOML configuration (its state directory holds the tokens).")
    @click.option("--role", type=click.Choice(["operator", "utility-reader"]), default="operator", show_default=True,
                  help="Whose token.")
    @click.option("--rotate", is_flag=True, help="Make a new token (restart the agent to apply it).")
    def token(config_path: Path, role: str, rotate: bool) -> None:
        """Print ROLE's API token for this node (made, mode 0600, if it does not exist yet).

        Give it to the client as `Authorization: Bearer TOKEN`, or save it in a file (mode 0600)
        for `--token-file`. The agent reads the tokens when it starts.
        """
        from meshagent.api.auth import ensure_token, token_path
        from meshagent.config import load_config
        from meshagent.statedir import ensure_state_dir

        cfg = load_config(config_path)
        state_dir = ensure_state_dir(cfg.node.state_dir)
        value, made = ensure_token(state_dir, role, rotate=rotate)
        click.echo(value)
        note: Any = "new; restart the agent to apply" if made and rotate else ("new" if made else "existing")
        click.echo(f"{role} token ({note}), kept in {token_path(state_dir, role)}", err=True)
