"""The report of one run: JSON, a terminal table (rich) and PNG plots (matplotlib).

Theory of operation
-------------------
``build_report`` puts the baselines' totals side by side under one JSON object with the
scenario, the seed, how the mesh's latency was obtained (``calibration``) and the wall time.
``summary_table`` renders the figures an engineer compares first; ``write_plots`` draws one
column per baseline: site load against the limit, frequency, transformer loading and
hot spot, and per-node discharge (up to 48 nodes), all on shared axes so columns compare.

The fleet level hands ``write_plots`` its ``Trace``s. The packet level (``sims.virtual``)
steps every 10 ms of virtual time, far more steps than a plot has pixels: its ``drive`` loop
adds a sample to a ``SeriesRecorder`` every ``every``-th step (about ``SERIES_POINTS`` in all,
so recording costs a few hundred appends however long the run), and ``write_series_plots``
draws them as the fleet level's plots, in one column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sims.fleet import TRACE_NODES, Trace

SERIES_POINTS = 1000  # samples a SeriesRecorder keeps at most, whatever the number of steps

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


class SeriesRecorder:
    """A step loop's time series, decimated to at most ``SERIES_POINTS`` samples.

    The loop tests ``k % recorder.every == 0`` itself (no call on the steps it skips) and then
    calls ``add``; ``trace`` gives the samples as a ``Trace`` for ``write_plots``.
    """

    def __init__(self, steps: int, nodes: int, points: int = SERIES_POINTS) -> None:
        self.every = max(1, -(-steps // points))  # ceil: never more than ``points`` samples
        self.shown = min(nodes, TRACE_NODES)
        self.t_s: list[float] = []
        self.site_kw: list[float] = []
        self.frequency_hz: list[float] = []
        self.tx_loading_max: list[float] = []
        self.hot_spot_max_c: list[float] = []
        self.node_discharge_kw: list[Any] = []

    def add(self, t_s: float, site_kw: float, frequency_hz: float, tx_loading_max: float,
            hot_spot_max_c: float, charger_power_w: Any) -> None:
        """One sample; ``charger_power_w``: every charger's power (+ charge, - discharge)."""
        self.t_s.append(t_s)
        self.site_kw.append(site_kw)
        self.frequency_hz.append(frequency_hz)
        self.tx_loading_max.append(tx_loading_max)
        self.hot_spot_max_c.append(hot_spot_max_c)
        self.node_discharge_kw.append(np.maximum(-np.asarray(charger_power_w[: self.shown], float), 0.0) / 1000)

    def __len__(self) -> int:
        return len(self.t_s)

    def trace(self, baseline: str, limit_kw: float, totals: dict[str, Any]) -> Trace:
        nodes = (np.vstack(self.node_discharge_kw) if self.node_discharge_kw
                 else np.zeros((0, self.shown)))
        return Trace(baseline, np.asarray(self.t_s), np.asarray(self.site_kw), limit_kw,
                     np.asarray(self.frequency_hz), np.asarray(self.tx_loading_max),
                     np.asarray(self.hot_spot_max_c), nodes, totals)


def write_series_plots(series: SeriesRecorder, out: Path, title: str, limit_kw: float,
                       totals: dict[str, Any], baseline: str = "mesh") -> Path:
    """The packet level's plots: ``write_plots`` on the recorded series, one column."""
    return write_plots([series.trace(baseline, limit_kw, totals)], out, title)
