"""SunSpec points as a person reads them: ``meshagent read``'s interpretation of a model.

Theory of operation
-------------------
``interpret(model_id, points)`` takes what ``SunSpecUnit.read_model_points`` returns and
gives, per point, a JSON-friendly value and a line of text:

* Power in the SunSpec DER models (701, 704: a positive ``W`` is generation) is turned into
  the project's sign (+ charge, - discharge) and says which way it flows: SunSpec 701
  ``W`` = 5000 shows as ``-5000 W (discharging)``. Meter models count import as positive,
  as we do, and are shown as they are.
* Enumerations print by name (``InvSt = RUNNING``), bitfields as the names of their set bits
  (``SYMBOLS``, copied from the SunSpec Alliance's JSON models).
* Scale factors are applied by the codec, which rounds to the register's resolution; the
  text prints exactly that many decimals (``Hz = 60.02 Hz``, never 60.019999999999996).
* A not-implemented point shows as ``not implemented`` (JSON ``null``).
"""

from __future__ import annotations

from typing import Any

from hardware.modbus.registers import Point
from hardware.modbus.symbols import SYMBOLS

# Points whose SunSpec sign is + generation (our discharge): shown negated.
GENERATION_POSITIVE = {701: {"W", "WL1", "WL2", "WL3"}, 704: {"WSet", "WSetRvrt"}}
NOT_IMPLEMENTED = "not implemented"


def _decimals(sf: int) -> int:
    return max(0, -sf)


def interpret(model_id: int, points: dict[str, tuple[Point, object, object]],
              scale: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Point name -> {"value": ..., "text": ..., "raw": ...} (ID, L and scale factors included)."""
    scale = scale if scale is not None else {
        name: int(raw) for name, (p, raw, _) in points.items() if p.type == "sunssf" and isinstance(raw, int)}
    symbols = SYMBOLS.get(model_id, {})
    out: dict[str, dict[str, Any]] = {}
    for name, (p, raw, value) in points.items():
        entry: dict[str, Any] = {"raw": raw}
        if value is None:
            entry.update(value=None, text=NOT_IMPLEMENTED)
        elif isinstance(value, str) and value.startswith("<"):
            entry.update(value=None, text=value)
        elif p.type.startswith("enum") and isinstance(value, int):
            label = symbols.get(name, {}).get(value)
            entry.update(value=label or value, text=label or f"{value} (unknown value)")
        elif p.type.startswith("bitfield") and isinstance(value, int):
            names = symbols.get(name, {})
            bits = [names.get(i, f"bit {i}") for i in range(p.size * 16) if value >> i & 1]
            entry.update(value=bits, text=", ".join(bits) if bits else "none")
        elif p.type == "sunssf":
            entry.update(value=value, text=str(value))
        elif isinstance(value, str):
            entry.update(value=value, text=value)
        elif isinstance(value, int | float):
            v: float = value
            flow = ""
            if name in GENERATION_POSITIVE.get(model_id, ()):
                v = -v + 0  # SunSpec + generation -> our - discharge (+ 0: no -0)
                flow = " (discharging)" if v < 0 else " (charging)" if v > 0 else " (idle)"
            if p.type == "float32":
                text = f"{v:.1f}" if p.units in ("W", "VA", "var", "Wh") else f"{v:g}"
            else:
                text = f"{v:.{_decimals(scale.get(p.sf, 0) if p.sf else 0)}f}"
            entry.update(value=v if isinstance(v, int) else float(text),
                         text=f"{text} {p.units}".rstrip() + flow)
        else:
            entry.update(value=value, text=str(value))
        out[name] = entry
    return out


def discharge_caps(old_firmware: bool | None, max_discharge_amps: float | None, discharge_spec_w: float | None,
                   charge_spec_w: float | None, nominal_v: float | None) -> list[dict[str, Any]]:
    """The caps behind EVMaximumDischargePower, each with the limit it sets (W).

    * old firmware: early bidirectional firmware caps discharge at 50 % of the vehicle's
      charge power;
    * MAX_DISCHARGE_AMPS: the charger's discharge current setting, at the battery's nominal
      DC voltage (A x V).
    """
    out: list[dict[str, Any]] = []
    if old_firmware and charge_spec_w:
        out.append({"cap": "old_firmware", "limit_w": round(0.5 * charge_spec_w, 1),
                    "text": f"old firmware: 50 % of the {charge_spec_w:g} W charge power = {0.5 * charge_spec_w:g} W"})
    if max_discharge_amps is not None and max_discharge_amps == max_discharge_amps and nominal_v:
        limit = max_discharge_amps * nominal_v
        out.append({"cap": "MAX_DISCHARGE_AMPS", "limit_w": round(limit, 1), "amps": max_discharge_amps,
                    "text": f"MAX_DISCHARGE_AMPS {max_discharge_amps:g} A x {nominal_v:g} V = {limit:g} W"})
    if discharge_spec_w:
        binding = min([c["limit_w"] for c in out] + [discharge_spec_w])
        for c in out:
            c["binding"] = c["limit_w"] == binding and c["limit_w"] < discharge_spec_w
    return out
