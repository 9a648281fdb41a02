"""``meshagent sim sweep``: one scenario over many seeds and parameter values.

Theory of operation
-------------------
A sweep is a list of independent cases (scenario, seed, overrides); each case is one call of
``run_case``, a plain function of plain values returning a plain dict, so it runs anywhere:

* by default on local processes (``concurrent.futures.ProcessPoolExecutor``, one per core);
* given ``address``, on an existing Dask cluster (``distributed.Client(address)``).

Why Dask rather than Ray: a sweep is a map of independent pure functions, which is all
``Client.map`` needs; ``distributed`` is pure Python (a light optional extra, ``cluster``), runs
a ``LocalCluster`` in-process for the test, and adds no daemon or native runtime to the
install, where Ray brings a large native wheel and its own object store for features a sweep
does not use. Results are identical either way (each case seeds its own world).

``--set section.key=v1,v2`` varies a scenario key; the cases are the product of seeds and
values. Each case's row is the baselines' key figures.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sims.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

KEY_FIGURES = ("peak_site_kw", "limits_violated", "frequency_nadir_hz", "peak_hot_spot_c")


def run_case(scenario: str, seed: int, nodes: int | None, overrides: dict[str, float],
             duration_s: float | None = None) -> dict[str, Any]:
    from sims.runner import run

    sc = load_scenario(scenario)
    if overrides:
        sc = _apply(sc, overrides)
    report = run(sc, nodes=nodes, seed=seed, duration_s=duration_s)
    return {
        "seed": seed,
        "overrides": overrides,
        "baselines": {b: {k: t[k] for k in KEY_FIGURES} for b, t in report["baselines"].items()},
    }


def _apply(sc: Scenario, overrides: dict[str, float]) -> Scenario:
    raw: dict[str, Any] = {s: dict(v) for s, v in sc.sections.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in raw or key not in raw[section]:
            raise ScenarioError(f"--set {dotted}: no such key")
        raw[section][key] = type(raw[section][key])(value) if raw[section][key] is not None else value
    raw["events"] = [{"kind": e.kind, "at_s": e.at_s, **e.args} for e in sc.events]
    return parse_scenario(raw, sc.source)


def parse_sets(sets: tuple[str, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item in sets:
        key, eq, values = item.partition("=")
        if not eq or "." not in key:
            raise ScenarioError(f"--set {item!r}: expected section.key=v1,v2")
        try:
            out[key] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ScenarioError(f"--set {key}: values must be numbers, got {values!r}") from None
    return out


def sweep(
    scenario: str, seeds: list[int], *, nodes: int | None = None, sets: dict[str, list[float]] | None = None,
    address: str | None = None, workers: int | None = None, duration_s: float | None = None,
) -> list[dict[str, Any]]:
    load_scenario(scenario)  # fail early, in this process, on a bad file
    sets = sets or {}
    keys = list(sets)
    combos = list(itertools.product(*(sets[k] for k in keys))) if keys else [()]
    cases = [(scenario, s, nodes, dict(zip(keys, combo, strict=True)), duration_s) for s in seeds for combo in combos]
    if address:
        try:
            from distributed import Client
        except ImportError:
            raise ScenarioError("--address needs Dask: pip install 'meshagent[cluster]'") from None
        with Client(address) as client:  # type: ignore[no-untyped-call]
            futures = client.map(lambda c: run_case(*c), cases, pure=False)
            return list(client.gather(futures))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(run_case, *zip(*cases, strict=True)))
