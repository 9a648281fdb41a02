"""Mesh subcommands: ``run``, ``join``, ``leave``, ``members``, ``capacity``, ``revoke``.

``run`` starts the agent in the foreground. The others talk to a running agent through its
HTTP API (``mesh.api``, 127.0.0.1:7947 by default): ``--api`` names another one, and
``members --peer HOST[:PORT]`` asks any peer whose API is reachable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from meshagent.errors import MeshagentError

DEFAULT_API = "127.0.0.1:7947"


def _api_address(text: str) -> tuple[str, int]:
    from meshagent.mesh_config import DEFAULT_API_PORT, parse_host_port

    try:
        return parse_host_port(text, DEFAULT_API_PORT)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _call(api: str, path: str, method: str = "GET") -> Any:
    import functools

    import trio

    from meshagent.api import get_json

    host, port = _api_address(api)
    try:
        status, body = trio.run(functools.partial(get_json, host, port, path, method=method))
    except (OSError, trio.TooSlowError) as exc:
        raise MeshagentError(f"no agent API at {host}:{port} ({exc.__class__.__name__}); is `meshagent run` running?") from None
    if status >= 400:
        detail = body.get("error") if isinstance(body, dict) else body
        raise MeshagentError(f"agent at {host}:{port} refused: {detail}")
    return body


api_option = click.option("--api", default=DEFAULT_API, show_default=True, help="The running agent's API address.")


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="The node's TOML configuration.")
    @click.option("--verbose", "-v", is_flag=True, help="Log debug detail.")
    def run(config_path: Path, verbose: bool) -> None:
        """Run this node's agent in the foreground until SIGINT/SIGTERM (then leave gracefully)."""
        import logging

        import trio

        from meshagent.agent import run_agent
        from meshagent.config import load_config

        config = load_config(config_path)
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        trio.run(run_agent, config)

    @cli.command()
    @click.option("--seed", "seeds", multiple=True, required=True, help="A member to join through, HOST[:PORT]; repeatable.")
    @api_option
    def join(seeds: tuple[str, ...], api: str) -> None:
        """Join the running agent to a mesh through one or more seeds (remembered across restarts)."""
        from meshagent.mesh_config import parse_host_port

        for s in seeds:
            try:
                parse_host_port(s)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--seed") from None
        body = _call(api, "/v1/join?seeds=" + ",".join(seeds), "POST")
        click.echo(f"joining through {', '.join(body['joining'])}")

    @cli.command()
    @api_option
    def leave(api: str) -> None:
        """Leave the mesh gracefully and stop the running agent."""
        body = _call(api, "/v1/leave", "POST")
        click.echo(f"{body['leaving']} is leaving the mesh")

    @cli.command()
    @click.option("--peer", default=None, help="Ask this peer's API instead of the local agent (HOST[:PORT]).")
    @api_option
    @click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
    def members(peer: str | None, api: str, as_json: bool) -> None:
        """Show a running node's view of the mesh: state, incarnation, address, record age."""
        import json

        body = _call(peer or api, "/v1/members")
        if as_json:
            click.echo(json.dumps(body, sort_keys=True))
            return
        rows = body["members"]
        header = ("NODE", "STATE", "INC", "ADDRESS", "SITE", "TRANSFORMER", "RECORD AGE")
        table = [header] + [
            (r["node_id"], r["status"], str(r["incarnation"]), r["address"], r["site_id"], r["transformer_id"],
             "-" if r["record_age_s"] is None else f"{r['record_age_s']:.1f}s")
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    @cli.command()
    @click.option("--scope", default="all", show_default=True, help="all, site:ID or transformer:ID.")
    @click.option("--peer", default=None, help="Ask this peer's API instead of the local agent.")
    @api_option
    def capacity(scope: str, peer: str | None, api: str) -> None:
        """Aggregate discharge capacity of the live members in SCOPE, as one peer sees it."""
        import json

        from meshagent.agent import parse_scope

        try:
            parse_scope(scope)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scope") from None
        click.echo(json.dumps(_call(peer or api, f"/v1/capacity?scope={scope}"), sort_keys=True))

    @cli.command("revoke")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @api_option
    def revoke(files: tuple[Path, ...], api: str) -> None:
        """Hand revocation files (from `meshagent ca revoke`) to the running agent to spread."""
        from meshagent import keystore

        for path in files:
            record = keystore.dearmor(keystore.REVOCATION, path.read_text(), str(path))
            body = _call(api, f"/v1/revocations?record={record.hex()}", "POST")
            click.echo(f"{path}: {'revoked ' + body['revoked'] if body['revoked'] else 'already known'}")
