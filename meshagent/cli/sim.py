"""``meshagent sim``: run a scenario under every baseline and report; ``meshagent sim sweep``.

Reaches into ``sims`` only when a command runs (the agent never imports the simulator).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from meshagent.errors import MeshagentError


class _DefaultToRun(click.Group):
    """``meshagent sim SCENARIO`` runs; ``meshagent sim sweep ...`` sweeps."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _need_sim_extra() -> None:
    try:
        import matplotlib  # noqa: F401
        import numpy  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        raise MeshagentError(f"the simulator needs {exc.name}: pip install 'meshagent[sim]'") from None


@click.group(cls=_DefaultToRun)
def sim() -> None:
    """Simulate a scenario under every baseline: SCENARIO is a name or a TOML file.

    \b
    meshagent sim SCENARIO [--nodes N] [--seed S] [--virtual] [--out DIR] [--json]
    meshagent sim SCENARIO --real-network [--nodes N] [--workers W] [--duration HOLD_S]
    meshagent sim SCENARIO --netns [--nodes N] [--loss PCT] [--duration HOLD_S]
    meshagent sim SCENARIO --packet [--warm] [--nodes N] [--seed S] [--duration S]
    meshagent sim sweep SCENARIO --seeds 1-8 [--set section.key=v1,v2] [--address ADDR]
    Built-in scenarios: sims/scenarios/*.toml (see docs/simulation.md).
    """


@sim.command("run")
@click.argument("scenario")
@click.option("--nodes", type=int, help="Chargers (the site scales with them).")
@click.option("--seed", type=int, help="Seed of the world (default: the scenario's).")
@click.option("--duration", type=float,
              help="Simulated seconds (default: the scenario's); with --real-network/--netns: "
                   "seconds the spike is held (default 6).")
@click.option("--dt", type=float, help="Step length in seconds (default: the scenario's).")
@click.option("--real-network", "real_network", is_flag=True,
              help="Play the spike with real agents in worker processes over real UDP on loopback.")
@click.option("--virtual", is_flag=True,
              help="Fleet level, the mesh's latency measured with complete agents in virtual time.")
@click.option("--netns", is_flag=True,
              help="Play the spike with one agent process per network namespace (root; nftables).")
@click.option("--packet", is_flag=True,
              help="Complete agents (mesh, control loop, allocation, simulated devices) in virtual time: "
                   "the mesh only, measured.")
@click.option("--warm", is_flag=True,
              help="With --packet: the agents start from one verified membership instead of joining "
                   "(for spikes at hundreds of agents; the join is not simulated).")
@click.option("--workers", type=int, help="With --real-network: worker processes for the agents other than the "
              "detector, which has one of its own (default: one per 25 agents, at least 2).")
@click.option("--loss", type=float, help="With --netns: random drop of the mesh's datagrams, percent.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("sim-out"), show_default=True,
              help="Directory for report.json and summary.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object, last line.")
def sim_run(scenario: str, nodes: int | None, seed: int | None, duration: float | None, dt: float | None,
            real_network: bool, virtual: bool, netns: bool, workers: int | None, loss: float | None,
            out: Path, as_json: bool, packet: bool = False, warm: bool = False) -> None:
    """Run SCENARIO under none, droop, central and mesh; print the summary; write the plots.

    \b
    default          the fleet level: every baseline, the mesh's latency from calibration
    --virtual        the same, the mesh's latency measured in this run (virtual time)
    --real-network   the scenario's spike answered by real agents in separate processes over
                     real UDP on 127.86.x.y:7946, the site over Modbus TCP (none, central
                     with its OCPP dispatch timed for real, mesh); a generator trip plays
                     as a frequency event (the area model drives the meter's frequency)
    --netns          the same, one agent per network namespace; partitions and --loss are
                     nftables rules between them (root, ip, nft; none and mesh)
    --packet         complete agents in one process in virtual time, every packet signed:
                     the mesh only, with its spike-to-applied latency measured
                     (--warm: start from a formed membership, no join)
    """
    _need_sim_extra()
    chosen = [flag for flag, on in (("--real-network", real_network), ("--virtual", virtual), ("--netns", netns),
                                    ("--packet", packet)) if on]
    if len(chosen) > 1:
        raise MeshagentError(f"{chosen[0]} with {chosen[1]}: choose one of --real-network, --virtual, --netns, --packet")
    if warm and not packet:
        raise MeshagentError("--warm: only with --packet (the other runners join for real or have no join)")
    if workers is not None and not real_network:
        raise MeshagentError("--workers: only with --real-network (--netns runs one process per namespace)")
    if workers is not None and not 1 <= workers <= 64:
        raise MeshagentError(f"--workers: expected 1 to 64, got {workers}")
    if loss is not None and not netns:
        raise MeshagentError("--loss: only with --netns (the drop is an nftables rule between namespaces)")
    if loss is not None and not 0 <= loss <= 100:
        raise MeshagentError(f"--loss: expected a percentage 0 to 100, got {loss:g}")
    if dt is not None and (real_network or netns):
        raise MeshagentError(f"--dt: {chosen[0]} runs on the real clock, not in steps")
    if dt is not None and packet:
        raise MeshagentError("--dt: --packet runs every agent on its own 10 ms control cycle, not in steps")
    if duration is not None and (real_network or netns) and not 1 <= duration <= 600:
        raise MeshagentError(f"--duration: with {chosen[0]}, the spike's hold in seconds, 1 to 600; got {duration:g}")
    from rich.console import Console
    from rich.progress import Progress

    from sims.report import summary_table

    console = Console(stderr=as_json)
    if real_network or netns:
        from sims.realnet import HOLD_S, run_real

        report = run_real(scenario, mode="netns" if netns else "real-network", nodes=nodes, seed=seed,
                          workers=workers, loss_pct=loss or 0.0, hold_s=duration or HOLD_S, out=out,
                          progress=lambda line: console.print(f"[dim]{line}[/dim]"))
        console.print(summary_table(report))
        console.print(f"runner: {report['runner']}")
    else:
        from sims.runner import run

        latency = "virtual" if virtual else "calibrated"
        with Progress(console=console, transient=True) as bar:
            tasks: dict[str, Any] = {}

            def progress(baseline: str, fraction: float) -> None:
                if baseline not in tasks:
                    tasks[baseline] = bar.add_task(baseline, total=1.0)
                bar.update(tasks[baseline], completed=fraction)

            report = run(scenario, nodes=nodes, seed=seed, duration_s=duration, dt_s=dt, out=out,
                         mesh_latency=latency, progress=progress, level="packet" if packet else "fleet",
                         warm=warm)
        console.print(summary_table(report))
        if packet:
            applied = report["baselines"]["mesh"]["spike_to_applied_ms"]
            console.print(f"runner: {report['runner']}\nspike to every member's share applied: "
                          f"p50 {applied['p50']} / max {applied['max']} virtual ms")
    files = report["files"]
    console.print(f"report: {files['json']}" + (f"\nplots:  {files['plots']}" if "plots" in files else ""))
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected 1-8 or 1,2,5, got {text!r}", param_hint="--seeds") from None


@sim.command("sweep")
@click.argument("scenario")
@click.option("--seeds", default="1-4", show_default=True, help="Seeds: 1-8 or 1,2,5.")
@click.option("--set", "sets", multiple=True, help="Vary a key: section.key=v1,v2 (repeatable).")
@click.option("--nodes", type=int)
@click.option("--duration", type=float, help="Simulated seconds per case.")
@click.option("--workers", type=int, help="Local processes (default: one per core).")
@click.option("--address", help="Run on this Dask scheduler (tcp://host:8786) instead.")
@click.option("--json", "as_json", is_flag=True)
def sim_sweep(scenario: str, seeds: str, sets: tuple[str, ...], nodes: int | None, duration: float | None,
              workers: int | None, address: str | None, as_json: bool) -> None:
    """Run SCENARIO for many seeds / values on local processes or a Dask cluster."""
    _need_sim_extra()
    from rich.console import Console
    from rich.table import Table

    from sims.sweep import parse_sets, sweep

    rows = sweep(scenario, _seeds(seeds), nodes=nodes, sets=parse_sets(sets), address=address,
                 workers=workers, duration_s=duration)
    table = Table(title=f"sweep {scenario}: {len(rows)} cases")
    for col in ("seed", "values", "baseline", "peak site kW", "violations", "nadir Hz"):
        table.add_column(col)
    for r in rows:
        for b, t in r["baselines"].items():
            table.add_row(str(r["seed"]), json.dumps(r["overrides"]), b, str(t["peak_site_kw"]),
                          str(t["limits_violated"]), str(t["frequency_nadir_hz"]))
    Console(stderr=as_json).print(table)
    if as_json:
        click.echo(json.dumps({"scenario": scenario, "cases": rows}, sort_keys=True))


def register(cli: click.Group) -> None:
    cli.add_command(sim)
