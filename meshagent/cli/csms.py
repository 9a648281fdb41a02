"""``meshagent csms`` (the development CSMS, and its ``billing`` report) and ``meshagent csms-queue``.

Click structure: ``csms`` is a group with ``invoke_without_command=True``. Run bare
(``meshagent csms --listen HOST:PORT --db PATH``) it serves; with a subcommand
(``meshagent csms billing --db PATH``) the group's own body does nothing and the
subcommand runs. The same shape for ``csms-queue``: bare it shows the queue, ``retry``
puts dead letters back. The development CSMS lives in ``sims`` and is imported only inside
the command function, so the agent never imports the simulator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meshagent.cli.api import token_file_option
from meshagent.errors import MeshagentError

DEFAULT_DB = "csms.sqlite3"


def register(cli: click.Group) -> None:
    cli.add_command(csms)
    cli.add_command(csms_queue)
    cli.add_command(authorize)


@click.command("authorize")
@click.argument("id_token")
@click.option("--type", "token_type", default="ISO14443", show_default=True, help="The idToken's type.")
@click.option("--api", default="127.0.0.1:7947", show_default=True, help="The running agent's API address.")
@token_file_option
def authorize(id_token: str, token_type: str, api: str) -> None:
    """Ask a running agent whether its local list authorizes ID_TOKEN (as with the CSMS down).

    Exit status 0 when accepted, 3 when refused (blocked, expired, unknown...).
    """
    import functools
    from urllib.parse import quote

    import trio

    from meshagent.api.http import get_json
    from meshagent.cli.api import current_ssl_context, current_token
    from meshagent.mesh.config import DEFAULT_API_PORT, parse_host_port

    try:
        host, port = parse_host_port(api, DEFAULT_API_PORT)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--api") from None
    path = f"/v1/authorize?id_token={quote(id_token, safe='')}&type={quote(token_type, safe='')}"
    try:
        status, body = trio.run(functools.partial(get_json, host, port, path, token=current_token(),
                                                  ssl_context=current_ssl_context()))
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise MeshagentError(f"no agent API at {host}:{port} ({exc.__class__.__name__}); "
                             "is `meshagent run` running?") from None
    if status != 200 or not isinstance(body, dict):
        detail = body.get("error") if isinstance(body, dict) else body
        raise MeshagentError(f"agent at {host}:{port} refused: {detail}")
    verdict = "accepted" if body["accepted"] else "refused"
    click.echo(f"{body['id_token']} ({body['type']}): {verdict}, {body['status']} "
               f"(local list version {body['list_version']} on {body['answered_by']})")
    if not body["accepted"]:
        sys.exit(3)  # click.Context.exit is swallowed by main (standalone_mode=False)


@click.group("csms", invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:9000", show_default=True, metavar="HOST:PORT",
              help="Address to serve OCPP 2.0.1 on (port 0: any free port, printed at start).")
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="SQLite file recording every TransactionEvent.")
@click.option("--auth-list", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help='JSON {"version": N, "entries": [{"idToken", "type", "status", "expiry"}]} pushed to stations.')
@click.option("--password", help="Require HTTP basic auth <station id>:PASSWORD.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="PEM certificate (chain): serve wss:// (security profile 2).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="PEM private key.")
@click.option("--heartbeat-interval", default=300, show_default=True, type=click.IntRange(1, 86400),
              help="Interval in seconds returned in BootNotification.")
@click.option("--call", "calls", multiple=True, metavar="ACTION=JSON",
              help="A call to send once to each station after its boot (repeatable).")
@click.option("--fault-callerror", default=0, type=click.IntRange(0), help="Answer the first N TransactionEvents with CALLERROR.")
@click.option("--fault-silent", default=0, type=click.IntRange(0), help="Record the first N TransactionEvents and never answer.")
@click.option("--fault-close", default=0, type=click.IntRange(0), help="Record the first N TransactionEvents, then drop the connection unanswered.")
@click.pass_context
def csms(ctx: click.Context, listen: str, db_path: Path, auth_list: Path | None, password: str | None,
         tls_cert: Path | None, tls_key: Path | None, heartbeat_interval: int, calls: tuple[str, ...],
         fault_callerror: int, fault_silent: int, fault_close: int) -> None:
    """Run the development CSMS (built on the ocpp package), or a subcommand (billing).

    Stations connect to ws://HOST:PORT/<station id> with subprotocol ocpp2.0.1.
    """
    if ctx.invoked_subcommand is not None:
        return
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert")
    from sims.csms_server import Faults, run_server

    try:
        code = run_server(listen, db_path, auth_list=auth_list, password=password, tls_cert=tls_cert,
                          tls_key=tls_key, heartbeat_interval_s=heartbeat_interval, calls=calls,
                          faults=Faults(fault_callerror, fault_silent, fault_close))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        raise MeshagentError(f"csms: cannot serve on {listen}: {exc.strerror or exc}") from None
    ctx.exit(code)


@csms.command("billing")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The development CSMS's SQLite file.")
def csms_billing(db_path: Path) -> None:
    """Print energy imported and exported per transaction and per idToken."""
    import sqlite3

    from sims.csms_server import billing_report

    try:
        report = billing_report(db_path)
    except sqlite3.Error as exc:
        raise MeshagentError(f"--db {db_path}: not a CSMS database: {exc}") from None
    click.echo(report.table())


def _open_store(db_path: Path | None, config_path: Path | None):  # type: ignore[no-untyped-def]
    from meshagent.csms.store import CsmsStore

    if db_path is None:
        if config_path is None:
            raise click.UsageError("give --db PATH or --config FILE")
        from meshagent.config import load_config

        db_path = load_config(config_path).section("csms").queue
    if not db_path.exists():
        raise MeshagentError(f"--db {db_path}: no such queue file")
    return CsmsStore(db_path)


def _show(store) -> None:  # type: ignore[no-untyped-def]
    stats = store.statistics()
    click.echo(f"queue {store.path}: {stats.pending} pending, {stats.dead_letters} dead-lettered, "
               f"{stats.open_transactions} open transactions, {stats.used_bytes} of {stats.max_bytes} bytes")
    for title, events in (("pending", store.pending(50)), ("dead letters", store.dead_letters(1000))):
        if not events:
            continue
        click.echo(f"\n{title}:")
        click.echo(f"{'id':>8} {'action':<17} {'transaction':<18} {'seqNo':>5} {'type':<8} {'attempts':>8}  last error")
        for e in events:
            kind = e.payload.get("eventType", "-")
            click.echo(f"{e.id:>8} {e.action:<17} {e.transaction_id or '-':<18} "
                       f"{'-' if e.seq_no is None else e.seq_no:>5} {kind:<8} {e.attempts:>8}  {e.last_error or ''}")


@click.group("csms-queue", invoke_without_command=True)
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), help="The queue file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A node config: use its [csms] queue.")
@click.pass_context
def csms_queue(ctx: click.Context, db_path: Path | None, config_path: Path | None) -> None:
    """Show the CSMS queue: pending and dead-lettered events (`retry` sends dead letters again)."""
    ctx.obj = (db_path, config_path)
    if ctx.invoked_subcommand is not None:
        return
    with _open_store(db_path, config_path) as store:
        _show(store)


@csms_queue.command("retry")
@click.option("--id", "ids", multiple=True, type=int, help="Only this dead letter (repeatable); default all.")
@click.pass_context
def csms_queue_retry(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Put dead-lettered events back in the queue, in their original order.

    A running agent picks them up within its queue poll interval.
    """
    db_path, config_path = ctx.obj
    with _open_store(db_path, config_path) as store:
        moved = store.retry_dead_letters(list(ids) if ids else None)
        click.echo(f"{moved} dead letter(s) back in the queue of {store.path}")
