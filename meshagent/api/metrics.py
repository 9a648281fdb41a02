"""``GET /metrics``: every ``statistics()`` the agent holds, as Prometheus metrics.

Theory of operation
-------------------
``StatsCollector`` renders the node's own statistics (members by state, health score,
drops by reason) with fixed names, then every other source the agent registers
(``AgentView.stats_sources``) generically: a number is a sample, an attrs record one metric
per field, a dict of numbers one metric labelled by ``key`` (drops by reason), anything else
is walked. Counters other parts add therefore appear in /metrics without this file changing,
and a source that raises is logged and left out rather than taking /metrics down.

``ApiMetrics`` is the app's own registry: that collector plus the request and refusal
counters the routes increment.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("meshagent.api")

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _flatten(prefix: str, value: Any, out: list[tuple[str, dict[str, str], float]]) -> None:
    """Numbers become samples; a dict of numbers becomes one metric labelled by ``key``."""
    if attrs.has(type(value)):  # a record: one metric per field
        for field in attrs.fields(type(value)):
            _flatten(f"{prefix}_{field.name}", getattr(value, field.name), out)
        return
    if isinstance(value, bool):
        out.append((prefix, {}, float(value)))
    elif isinstance(value, int | float):
        if math.isfinite(value):
            out.append((prefix, {}, float(value)))
    elif isinstance(value, dict):
        numeric = [isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()]
        if value and all(numeric):  # e.g. drops by reason: one metric, labelled
            for key, sub in value.items():
                if math.isfinite(sub):
                    out.append((prefix, {"key": str(key)}, float(sub)))
        else:
            for key, sub in value.items():
                _flatten(f"{prefix}_{_NAME.sub('_', str(key))}", sub, out)


class StatsCollector:
    """Renders every ``statistics()`` the agent holds, generically (see the module doc)."""

    def __init__(self, node: Any, stats_sources: Mapping[str, Callable[[], Any]]) -> None:
        self.node = node
        self.stats_sources = stats_sources  # read at each scrape: sources added later appear

    def collect(self) -> Iterator[Metric]:
        s = self.node.statistics()
        m = s.membership
        members = GaugeMetricFamily("meshagent_members", "Members in this node's view by state", labels=["status"])
        for status in ("alive", "suspect", "dead", "left"):
            members.add_metric([status], getattr(m, status))
        yield members
        yield GaugeMetricFamily("meshagent_health_score", "Local health (awareness) score; 0 is healthy", value=m.health_score)
        dropped = CounterMetricFamily("meshagent_dropped", "Datagrams dropped, by reason", labels=["reason"])
        for reason, count in sorted(s.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        sources: list[tuple[str, Any]] = [("node", s)]
        for name, fn in sorted(self.stats_sources.items()):
            try:
                sources.append((name, fn()))
            except Exception:  # a broken source must not take /metrics down
                log.exception("statistics source %s failed", name)
        families: dict[str, GaugeMetricFamily] = {}
        for name, stats in sources:
            samples: list[tuple[str, dict[str, str], float]] = []
            _flatten(f"meshagent_{_NAME.sub('_', name)}", stats, samples)
            for metric, labels, value in samples:
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = GaugeMetricFamily(metric, f"{name} statistics", labels=sorted(labels))
                fam.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


class ApiMetrics:
    """One app's registry: the statistics collector and the API's own counters."""

    def __init__(self, node: Any, stats_sources: Mapping[str, Callable[[], Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests_total = Counter("meshagent_api_requests", "API requests by route and status", ["route", "status"],
                                      registry=self.registry)
        self.denied_total = Counter("meshagent_api_denied", "API requests refused by reason", ["reason"],
                                    registry=self.registry)
        self.registry.register(StatsCollector(node, stats_sources))

    def render(self) -> bytes:
        return generate_latest(self.registry)
