"""Quantities as people write them on site: ``500kW``, ``10 kW``, ``0.1W``, ``30s``, ``10ms``.

Each parser returns a plain float in the SI base unit that the receiving name carries
(``*_w``, ``*_s``, ``*_wh``, ``*_bytes``) and raises ``ValueError`` with a message that says
what was expected; the config loader prefixes it with the key.

Unit symbols are case-sensitive where case carries meaning (``mW`` is not ``MW``); the one
forgiving spelling accepted is ``KW`` for ``kW``, because nameplates use it.
"""

from __future__ import annotations

import math
import re

_QUANTITY = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*")

POWER_UNITS = {"W": 1.0, "kW": 1e3, "KW": 1e3, "MW": 1e6}
ENERGY_UNITS = {"Wh": 1.0, "kWh": 1e3, "KWh": 1e3, "MWh": 1e6}
DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS = {"B": 1, "kB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GiB": 1024**3}
FREQUENCY_UNITS = {"Hz": 1.0, "mHz": 1e-3}
TEMPERATURE_UNITS = {"C": 1.0, "degC": 1.0}


def _parse(value: object, units: dict[str, float], what: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected {what} with a unit, such as '{example}', got {value!r}")
    m = _QUANTITY.fullmatch(value)
    if not m or m.group(2) not in units:
        known = ", ".join(units)
        raise ValueError(f"expected {what} such as '{example}' (units: {known}), got {value!r}")
    result = float(m.group(1)) * units[m.group(2)]
    if not math.isfinite(result):
        raise ValueError(f"expected a finite {what}, got {value!r}")
    return result


def parse_power_w(value: object) -> float:
    return _parse(value, POWER_UNITS, "a power", "500kW")


def parse_energy_wh(value: object) -> float:
    return _parse(value, ENERGY_UNITS, "an energy", "60kWh")


def parse_duration_s(value: object) -> float:
    return _parse(value, DURATION_UNITS, "a duration", "30s")


def parse_frequency_hz(value: object) -> float:
    return _parse(value, FREQUENCY_UNITS, "a frequency", "59.5Hz")


def parse_temperature_c(value: object) -> float:
    return _parse(value, TEMPERATURE_UNITS, "a temperature", "40C")


def parse_size_bytes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size in bytes, got {value!r}")
        return value
    result = _parse(value, {k: float(v) for k, v in SIZE_UNITS.items()}, "a size", "4MiB")
    if result < 0 or result != int(result):
        raise ValueError(f"expected a whole number of bytes, got {value!r}")
    return int(result)


def parse_fraction(value: object) -> float:
    """``0.05`` or ``"5%"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            result = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"expected a fraction such as 0.05 or '5%', got {value!r}") from None
    else:
        raise ValueError(f"expected a fraction such as 0.05 or '5%', got {value!r}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite fraction, got {value!r}")
    return result


def format_power(w: float) -> str:
    """Human form for tables: 1234.5 -> '1.2345 kW'."""
    a = abs(w)
    if a >= 1e6:
        return f"{w / 1e6:g} MW"
    if a >= 1e3:
        return f"{w / 1e3:g} kW"
    return f"{w:g} W"


def format_duration(s: float) -> str:
    if s >= 1 or s == 0:
        return f"{s:g}s"
    if s >= 1e-3:
        return f"{s * 1e3:g}ms"
    return f"{s * 1e6:g}us"
