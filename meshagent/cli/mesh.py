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
    from meshagent.mesh.config import DEFAULT_API_PORT, parse_host_port

    try:
        return parse_host_port(text, DEFAULT_API_PORT)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _call(api: str, path: str, method: str = "GET") -> Any:
    import functools

    import trio

    from meshagent.api.http import get_json
    from meshagent.cli.api import current_ssl_context, current_token

    host, port = _api_address(api)
    token = current_token()
    ssl_context = current_ssl_context()
    try:
        status, body = trio.run(functools.partial(get_json, host, port, path, method=method, token=token,
                                                  ssl_context=ssl_context))
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise MeshagentError(f"no agent API at {host}:{port} ({exc.__class__.__name__}); is `meshagent run` running?") from None
    if status >= 400:
        detail = body.get("error") if isinstance(body, dict) else body
        if status == 401:
            detail = f"{detail} (pass --token-file FILE; `meshagent api token --config NODE.toml` prints one)"
        raise MeshagentError(f"agent at {host}:{port} refused: {detail}")
    return body


_api_address_option = click.option("--api", default=DEFAULT_API, show_default=True, help="The running agent's API address.")


def api_option(fn: Any) -> Any:
    """``--api`` and ``--token-file`` (the API asks for a token: ``meshagent api token``)."""
    from meshagent.cli.api import token_file_option

    return token_file_option(_api_address_option(fn))


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
        from meshagent.mesh.config import parse_host_port

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
    @click.option("--peer", default=None,
                  help="Ask this peer: its API (HOST[:7947]), or with --identity its mesh port (HOST[:7946]).")
    @click.option("--identity", "identity_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
                  help="A bundle enrolled with --role utility-reader: ask over the mesh port, signed.")
    @api_option
    def capacity(scope: str, peer: str | None, identity_dir: Path | None, api: str) -> None:
        """Aggregate discharge capacity of the live members in SCOPE, as one peer sees it.

        Without --identity the peer's HTTP API answers (with --token-file: a utility-reader or operator token).
        With --identity the question is a signed message to any member's mesh port; only
        certificates with the utility-reader or operator role get an answer, and the
        answer is signed by the node that gave it.
        """
        import json

        from meshagent.agent import parse_scope

        try:
            parsed = parse_scope(scope)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scope") from None
        if identity_dir is None:
            click.echo(json.dumps(_call(peer or api, f"/v1/capacity?scope={scope}"), sort_keys=True))
            return
        import functools

        import trio

        from meshagent.mesh.config import parse_host_port
        from meshagent.mesh.queries import ask_capacity, new_query_id
        from meshagent.statedir import next_boot_epoch
        from meshagent.trust import keystore
        from protocol.query import CapacityQuery, may_query

        if peer is None:
            raise click.BadParameter("give the member to ask, HOST[:7946]", param_hint="--peer")
        try:
            address = parse_host_port(peer)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--peer") from None
        ident = keystore.load_identity(identity_dir / "node.key", identity_dir / "node.cert", identity_dir / "ca.pub")
        ca_pub = keystore.read_public_key(identity_dir / "ca.pub")
        if not may_query(ident.certificate.roles):  # before touching the bundle's state
            raise MeshagentError(f"{ident.node_id}'s certificate has no utility-reader or operator role; "
                                 "enrol it with --role utility-reader")
        epoch = next_boot_epoch(identity_dir / "state")
        query = CapacityQuery(query_id=new_query_id(), scope=parsed)
        answered_by, answer = trio.run(functools.partial(ask_capacity, ident, ca_pub, address, query, boot_epoch=epoch))
        click.echo(json.dumps({
            "answered_by": answered_by,
            "signed": True,
            "scope": {"kind": answer.scope.kind.name.lower(), "id": answer.scope.id},
            "discharge_available_w": answer.discharge_available_w,
            "energy_above_min_soc_wh": answer.energy_above_min_soc_wh,
            "nodes": answer.nodes,
            "nodes_with_faults": answer.nodes_with_faults,
            "oldest_updated_at_ms": answer.oldest_updated_at_ms or None,
        }, sort_keys=True))

    @cli.command("revoke")
    @click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @api_option
    def revoke(files: tuple[Path, ...], api: str) -> None:
        """Hand revocation files (from `meshagent ca revoke`) to the running agent to spread."""
        from meshagent.trust import keystore

        for path in files:
            record = keystore.dearmor(keystore.REVOCATION, path.read_text(), str(path))
            body = _call(api, f"/v1/revocations?record={record.hex()}", "POST")
            click.echo(f"{path}: {'revoked ' + body['revoked'] if body['revoked'] else 'already known'}")
