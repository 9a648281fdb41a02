"""``meshagent api token``, and the ``--token-file`` option every API-calling command takes.

The token file is also read from ``$MESHAGENT_TOKEN_FILE``. Commands that talk to the API add
``token_file_option``; ``current_token()`` is what they send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_chosen: list[Path | None] = [None]


def _remember(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _chosen[0] = value


token_file_option = click.option(
    "--token-file", type=click.Path(dir_okay=False, path_type=Path), envvar="MESHAGENT_TOKEN_FILE",
    expose_value=False, callback=_remember, is_eager=True,
    help="File holding an API token (from `meshagent api token`); also $MESHAGENT_TOKEN_FILE.",
)


def current_token() -> str | None:
    """The token from --token-file / $MESHAGENT_TOKEN_FILE, or None (the agent will answer 401)."""
    from meshagent.api.auth import read_token_file

    path = _chosen[0]
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
