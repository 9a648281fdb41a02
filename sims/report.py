"""The report of one run: JSON, a terminal table (rich) and PNG plots (matplotlib).

Theory of operation
-------------------
``build_report`` puts the baselines' totals side by side under one JSON object with the
scenario, the seed, how the mesh's latency was obtained (``calibration``) and the wall time.
``summary_table`` renders the figures an engineer compares first; ``write_plots`` draws one
column per baseline: site load against the limit, frequency, transformer loading and
hot spot, and per-node discharge (up to 48 nodes), all on shared axes so columns compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sims.fleet import Trace

ROWS: tuple[tuple[str, str], ...] = (
    ("peak site load kW", "peak_site_kw"),
    ("site limit kW", "site_limit_kw"),
    ("limits violated", "limits_violated"),
    ("spike-to-response p50 s", "spike_to_response_s.p50"),
    ("spike-to-response max s", "spike_to_response_s.max"),
    ("peak transformer loading", "peak_transformer_loading"),
    ("peak hot spot °C", "peak_hot_spot_c"),
    ("frequency nadir Hz", "frequency_nadir_hz"),
    ("RoCoF Hz/s", "rocof_hz_per_s"),
    ("discharged/vehicle kWh (mean)", "energy_discharged_per_vehicle_kwh.mean"),
    ("SoC fairness (Jain)", "soc_fairness_jain"),
    ("messages/node", "messages_per_node"),
    ("bytes/node", "bytes_per_node"),
    ("billing completeness", "billing_completeness"),
)


def _get(totals: dict[str, Any], path: str) -> Any:
    value: Any = totals
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    baselines = list(report["baselines"])
    table = Table(title=f"{report['scenario']} ({report['nodes']} nodes, seed {report['seed']})")
    table.add_column("figure")
    for b in baselines:
        table.add_column(b, justify="right")
    for label, path in ROWS:
        table.add_row(label, *(_fmt(_get(report["baselines"][b], path)) for b in baselines))
    return table


def write_plots(traces: list[Trace], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cols = len(traces)
    fig, axes = plt.subplots(4, cols, figsize=(4.2 * cols, 11), sharex=True, sharey="row", squeeze=False)
    for c, tr in enumerate(traces):
        ax = axes[0][c]
        ax.plot(tr.t_s, tr.site_kw, lw=1, label="site load")
        ax.axhline(tr.limit_kw, color="red", ls="--", lw=1, label="limit")
        ax.set_title(tr.baseline)
        if c == 0:
            ax.set_ylabel("site load kW")
            ax.legend(loc="lower right", fontsize=7)
        ax = axes[1][c]
        ax.plot(tr.t_s, tr.frequency_hz, lw=1, color="tab:purple")
        ax.axhline(59.5, color="red", ls=":", lw=1)
        if c == 0:
            ax.set_ylabel("frequency Hz")
        ax = axes[2][c]
        ax.plot(tr.t_s, tr.tx_loading_max, lw=1, color="tab:orange", label="max loading (pu)")
        ax.axhline(1.0, color="red", ls="--", lw=1)
        twin = ax.twinx()
        twin.plot(tr.t_s, tr.hot_spot_max_c, lw=1, color="tab:brown", label="hot spot °C")
        twin.set_ylim(20, 160)
        if c == 0:
            ax.set_ylabel("transformer loading pu")
        if c == cols - 1:
            twin.set_ylabel("hot spot °C")
        ax = axes[3][c]
        if tr.node_discharge_kw.size:
            ax.plot(tr.t_s, tr.node_discharge_kw, lw=0.6)
        ax.set_xlabel("time s")
        if c == 0:
            ax.set_ylabel("discharge per node kW")
    fig.suptitle(title)
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_json(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return path
