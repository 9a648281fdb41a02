"""Benchmarks: ``meshagent bench NAME [--json]``.

Each benchmark module exposes ``run(quick: bool) -> BenchResult``. The result prints as a
readable table; ``data`` is the JSON object printed as the last line with ``--json``, whose
keys are named by the issue that asked for the benchmark. Figures go to BENCHMARKS.md with
the command, the machine and the date.
"""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any

import attrs

from meshagent.errors import MeshagentError

# name -> module; add a line here when a layer brings a benchmark
BENCHMARKS: dict[str, str] = {
    "wire": "sims.bench.wire",
    "ocpp": "sims.bench.ocpp",
    "gossip": "sims.bench.gossip",
    "urgent": "sims.bench.urgent",
    "control": "sims.bench.control",
    "modbus": "sims.bench.modbus",
    "api": "sims.bench.api",
}


@attrs.frozen
class BenchResult:
    name: str
    rows: list[tuple[str, str]]  # (label, formatted value) for the table
    data: dict[str, Any]  # the JSON object

    def table(self) -> str:
        width = max(len(label) for label, _ in self.rows)
        lines = [f"meshagent bench {self.name}", "-" * (width + 24)]
        lines += [f"{label:<{width}}  {value}" for label, value in self.rows]
        return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "system": platform.system(),
    }


def run_benchmark(name: str, *, quick: bool = False) -> BenchResult:
    module_name = BENCHMARKS.get(name)
    if module_name is None:
        raise MeshagentError(f"unknown benchmark {name!r} (known: {', '.join(sorted(BENCHMARKS))})")
    module = importlib.import_module(module_name)
    result: BenchResult = module.run(quick=quick)
    return result
