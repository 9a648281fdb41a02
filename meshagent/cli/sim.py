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
    meshagent sim SCENARIO [--nodes N] [--seed S] [--out DIR] [--json]
    meshagent sim sweep SCENARIO --seeds 1-8 [--set section.key=v1,v2] [--address ADDR]
    Built-in scenarios: sims/scenarios/*.toml (see docs/simulation.md).
    """


@sim.command("run")
@click.argument("scenario")
@click.option("--nodes", type=int, help="Chargers (the site scales with them).")
@click.option("--seed", type=int, help="Seed of the world (default: the scenario's).")
@click.option("--duration", type=float, help="Simulated seconds (default: the scenario's).")
@click.option("--dt", type=float, help="Step length in seconds (default: the scenario's).")
@click.option("--real-network", "real_network", is_flag=True,
              help="Measure the mesh's delivery latency with agents over real UDP on loopback.")
@click.option("--virtual", is_flag=True,
              help="Measure it with complete agents on the in-memory network in virtual time.")
@click.option("--netns", is_flag=True, help="Agents in network namespaces (root; not built yet).")
@click.option("--packet", is_flag=True,
              help="Run the scenario with complete agents (mesh, control loop, allocation, simulated devices) "
                   "in virtual time instead of the fleet level: the mesh only, every packet signed.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("sim-out"), show_default=True,
              help="Directory for report.json and summary.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object, last line.")
def sim_run(scenario: str, nodes: int | None, seed: int | None, duration: float | None, dt: float | None,
            real_network: bool, virtual: bool, netns: bool, out: Path, as_json: bool, packet: bool = False) -> None:
    """Run SCENARIO under none, droop, central and mesh; print the summary; write the plots."""
    _need_sim_extra()
    if sum((real_network, virtual, netns)) > 1:
        raise click.UsageError("choose one of --real-network, --virtual, --netns")
    if packet and (real_network or virtual or netns or dt is not None):
        raise click.UsageError("--packet runs complete agents on its own 10 ms grid: it takes no "
                               "--real-network, --virtual, --netns or --dt")
    if netns:
        raise MeshagentError("--netns: the network-namespace runner is not built yet (issue 14); "
                             "use --real-network")
    from rich.console import Console
    from rich.progress import Progress

    from sims.report import summary_table
    from sims.runner import run

    latency = "real-network" if real_network else "virtual" if virtual else "calibrated"
    console = Console(stderr=as_json)
    with Progress(console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(baseline: str, fraction: float) -> None:
            if baseline not in tasks:
                tasks[baseline] = bar.add_task(baseline, total=1.0)
            bar.update(tasks[baseline], completed=fraction)

        report = run(scenario, nodes=nodes, seed=seed, duration_s=duration, dt_s=dt, out=out,
                     mesh_latency=latency, progress=progress, level="packet" if packet else "fleet")
    console.print(summary_table(report))
    if report.get("level") == "packet":
        applied = report["baselines"]["mesh"]["spike_to_applied_ms"]
        console.print(f"packet level ({report['runner']}): spike to every member's share applied "
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
