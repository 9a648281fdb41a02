"""The ``meshagent`` command.

Every subcommand has ``--help``. A mistake by the user (a bad flag, a missing file, a key
with the wrong mode) prints exactly one line, ``meshagent: error: ...``, and exits nonzero
(2 for usage, 1 for everything else); a traceback means a bug.

Subcommands of other layers live in their own modules and are attached in ``_attach``;
``demo``, ``bench`` and ``sim`` reach into ``sims`` only when they run, so the agent itself
never imports the simulator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from meshagent import __version__
from meshagent.errors import MeshagentError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshagent")
def cli() -> None:
    """meshagent: a peer-to-peer mesh of V2G chargers that shares discharge during demand spikes."""


# --- identity: keygen, ca, enroll ------------------------------------------------------------


@cli.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("node.key"),
              show_default=True, help="Where to write the private key (mode 0600); the public key goes to OUT.pub.")
def keygen(out: Path) -> None:
    """Make a node key on the charger itself, so the private key never leaves it.

    Hand OUT.pub to whoever runs `meshagent enroll --public-key`.
    """
    from meshagent.trust import keystore

    key = keystore.new_key()
    keystore.write_private_key(out, key)
    pub = out.with_name(out.name + ".pub")
    keystore.write_public(pub, keystore.PUBLIC_KEY, key.public_key)
    click.echo(f"private key: {out} (mode 0600)")
    click.echo(f"public key:  {pub}  {key.public_key.hex()}")


@cli.group()
def ca() -> None:
    """The operator CA that signs node certificates and revocations."""


@ca.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def ca_init(directory: Path) -> None:
    """Create a new CA in DIRECTORY (keep it offline)."""
    from meshagent.trust import keystore

    authority = keystore.ca_init(directory)
    click.echo(f"CA created in {directory}")
    click.echo(f"public key: {authority.public_key.hex()}  (issuer id {authority.issuer_id.hex()})")


@ca.command("revoke")
@click.argument("node_id")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The CA directory.")
def ca_revoke(node_id: str, ca_dir: Path) -> None:
    """Revoke every certificate issued to NODE_ID; prints the revocation files to distribute."""
    from meshagent.trust import keystore

    authority = keystore.ca_load(ca_dir)
    written = keystore.revoke(authority, node_id)
    if not written:
        click.echo(f"{node_id}: already revoked, nothing new to sign")
    for path in written:
        click.echo(f"revoked: {path}")


@cli.command()
@click.argument("node_id")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The CA directory.")
@click.option("--site", required=True, help="Site id the charger belongs to.")
@click.option("--transformer", required=True, help="Transformer id that feeds the charger.")
@click.option("--role", "roles", multiple=True,
              help="A role to grant (detector, utility-reader, operator); repeatable.")
@click.option("--public-key", "public_key_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Certify a key made on the charger with `meshagent keygen` instead of making one here.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory [default: ./NODE_ID].")
@click.option("--days", default=825, show_default=True, type=int, help="Certificate validity in days.")
def enroll(node_id: str, ca_dir: Path, site: str, transformer: str, roles: tuple[str, ...],
           public_key_path: Path | None, out_dir: Path | None, days: int) -> None:
    """Issue a certificate for NODE_ID and write its bundle (key, certificate, CA key, node.toml)."""
    from meshagent.trust import keystore

    authority = keystore.ca_load(ca_dir)
    pub = keystore.read_public_key(public_key_path) if public_key_path else None
    bundle = keystore.enroll(
        authority, node_id, out_dir or Path(node_id), site_id=site, transformer_id=transformer,
        roles=roles, public_key=pub, valid_days=days,
    )
    cert = bundle.certificate
    click.echo(f"enrolled {cert.node_id}: site {cert.site_id}, transformer {cert.transformer_id}, "
               f"roles {','.join(cert.roles) or '-'}, serial {cert.serial:016x}")
    click.echo(f"bundle: {bundle.directory} ({'node.key, ' if bundle.key_written else ''}node.cert, ca.pub, node.toml)")


# --- config ----------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Check a node's configuration file, or print the reference."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def config_check(path: Path) -> None:
    """Validate PATH and its key, certificate and CA files."""
    from meshagent.config import load_config
    from meshagent.trust import keystore

    cfg = load_config(path)
    ident = keystore.load_identity(cfg.node.key, cfg.node.certificate, cfg.node.ca, cfg.node.id)
    c = ident.certificate
    click.echo(f"{path}: ok; node {c.node_id}, site {c.site_id}, transformer {c.transformer_id}, "
               f"roles {','.join(c.roles) or '-'}")


@config.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown; docs/config.md is this output)."""
    from meshagent.config import reference_markdown

    click.echo(reference_markdown(), nl=False)


# --- demo and benchmarks (reach into sims only when run) -------------------------------------


@cli.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the plots go (written when matplotlib is installed: pip install -e '.[sim]').")
def demo(out: Path) -> None:
    """Run the demo on embedded defaults: 24 chargers' agents on one simulated site, a surge, a dip."""
    from sims.demo import run_demo

    sys.exit(run_demo(out))


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object as the last line.")
@click.option("--quick", is_flag=True, help="Fewer repetitions (for smoke tests; figures are noisier).")
def bench(name: str, as_json: bool, quick: bool) -> None:
    """Run benchmark NAME and print a table (see BENCHMARKS.md).

    Names: wire, gossip, urgent, modbus, control, ocpp, allocation, sunspec, api, sim.
    """
    from sims.bench import run_benchmark

    result = run_benchmark(name, quick=quick)
    click.echo(result.table())
    if as_json:
        click.echo(json.dumps(result.data, sort_keys=True))


# Modules that define more subcommands; each has ``register(cli: click.Group) -> None``.
# A layer adds its module here (importing it must stay cheap: heavy imports go inside the
# command functions).
COMMAND_MODULES: tuple[str, ...] = (
    "meshagent.cli.mesh", "meshagent.cli.csms", "meshagent.cli.hardware", "meshagent.cli.api",
    "meshagent.cli.sim",
)


def _attach() -> None:
    """Attach the subcommands that other layers define in their own modules."""
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)


_attach()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one line per user error, never a traceback for one."""
    try:
        cli.main(args=argv, prog_name="meshagent", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("meshagent: aborted", err=True)
        return 130
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "meshagent"
        click.echo(f"{cmd}: error: {exc.format_message()} (see '{cmd} --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"meshagent: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except MeshagentError as exc:
        click.echo(f"meshagent: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
