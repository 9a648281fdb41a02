"""Stable error codes of the control loop, and the events that carry them.

Theory of operation
-------------------
Operators grep logs and alarm systems match on these strings, so they never change meaning
and are never reused. Each code says whether it *latches*: a latched fault keeps the
inverter at 0 W until an operator runs ``meshagent clear-faults`` and the code's own
release condition holds (the grid back in its return-to-service band for long enough, the
tamper switch closed, the meter answering again). A non-latched code clears by itself,
with hysteresis, when its cause goes away.

``FaultEvent`` is the one record written to the error log (one JSON line each): the code,
whether the fault was raised or cleared (or, for budget overruns, merely reported), a short
human message, and the figures that explain it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class Code(enum.StrEnum):
    ERR_GRID_SYNC_LOST = "ERR_GRID_SYNC_LOST"
    ERR_BATTERY_LOWER_LIMIT = "ERR_BATTERY_LOWER_LIMIT"
    ERR_THERMAL = "ERR_THERMAL"
    ERR_CONTACTOR_WELD = "ERR_CONTACTOR_WELD"
    ERR_TAMPER = "ERR_TAMPER"
    ERR_SENSOR_LOST = "ERR_SENSOR_LOST"
    LATENCY_OVER_BUDGET = "LATENCY_OVER_BUDGET"


# Codes that stay raised until `meshagent clear-faults` and their release condition.
LATCHED: frozenset[Code] = frozenset(
    {Code.ERR_GRID_SYNC_LOST, Code.ERR_CONTACTOR_WELD, Code.ERR_TAMPER, Code.ERR_SENSOR_LOST}
)


class Action(enum.StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"
    REPORTED = "reported"  # a one-off report that holds no state (budget overruns)
    CLEAR_REQUESTED = "clear_requested"  # older logs: an operator's request (no longer written)
    CLEAR_REFUSED = "clear_refused"  # operator asked while the cause is present: still latched


@attrs.frozen
class FaultEvent:
    code: Code
    action: Action
    at_s: float
    message: str
    figures: Mapping[str, Any] = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "code": str(self.code),
            "action": str(self.action),
            "t_s": round(self.at_s, 6),
            "message": self.message,
            **{k: _plain(v) for k, v in self.figures.items()},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, enum.Enum):
        return value.value
    return value
