"""The ``[allocation]`` section: transformer ratings, where headroom comes from, round timers.

A detector plans within each transformer's headroom. It knows the ratings written here
(``transformers = ["tx-1=400kW", ...]``, one entry per transformer of the scopes it may
detect for); a transformer with no rating is not constrained. ``headroom_source`` says how
a rating becomes headroom: ``rating`` uses it as is; ``rating-minus-load`` takes away the
loading this node's meter measures when that meter is on the transformer
(``[control].meter_scope = "transformer"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from meshagent.config import register_section, setting
from meshagent.config.units import parse_duration_s, parse_power_w
from protocol.identity import check_id


def _ratings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f'expected a list like ["tx-1=400kW"], got {value!r}')
    out = []
    seen = set()
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f'expected "TRANSFORMER_ID=POWER", got {item!r}')
        tid, power = (p.strip() for p in item.split("=", 1))
        check_id("transformer id", tid, 64)
        if tid in seen:
            raise ValueError(f"transformer {tid!r} rated twice")
        seen.add(tid)
        watts = parse_power_w(power)
        if watts <= 0:
            raise ValueError(f"rating of {tid!r} must be above 0")
        out.append(f"{tid}={watts!r}")
    return tuple(out)


@attrs.frozen
class AllocationSection:
    transformers: tuple[str, ...] = setting(
        (), parse=_ratings, shown="[]",
        doc='Transformer ratings known to this node, `["tx-1=400kW"]`; an unrated transformer is not constrained.',
    )
    headroom_source: str = setting(
        "rating", choices=("rating", "rating-minus-load"), shown='"rating"',
        doc="Headroom of a transformer: its rating, or its rating less the loading this node's meter measures on it.",
    )
    round2_after_s: float = setting(
        0.02, key="round2_after", parse=parse_duration_s, min_value=0.001, max_value=5, shown='"20ms"',
        doc="Re-plan the residual this long after a plan (about two round trips) unless every ACK is in sooner.",
    )
    renew_every_s: float = setting(
        1.0, key="renew_every", parse=parse_duration_s, min_value=0.05, max_value=60, shown='"1s"',
        doc="The proposer re-sends its latest plan this often while the spike lasts.",
    )
    share_ttl_s: float = setting(
        5.0, key="share_ttl", parse=parse_duration_s, min_value=0.1, max_value=600, shown='"5s"',
        doc="A share not renewed for this long lapses (a lost proposer never leaves vehicles discharging).",
    )

    def ratings_w(self) -> Mapping[str, float]:
        return {tid: float(w) for tid, w in (e.split("=", 1) for e in self.transformers)}


register_section("allocation", AllocationSection)
