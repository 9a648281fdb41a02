from __future__ import annotations

import pytest

from meshagent.config.units import (
    format_duration,
    format_power,
    parse_duration_s,
    parse_energy_wh,
    parse_fraction,
    parse_power_w,
    parse_size_bytes,
)


@pytest.mark.parametrize(
    ("text", "watts"),
    [("500kW", 500_000.0), ("10 kW", 10_000.0), ("0.1W", 0.1), ("1.5MW", 1.5e6), ("-7 kW", -7000.0), ("22KW", 22_000.0)],
)
def test_power(text, watts):
    assert parse_power_w(text) == pytest.approx(watts)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("10ms", 0.01), ("5 min", 300.0), ("2h", 7200.0), ("250us", 0.00025)])
def test_duration(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["500", 500, "500 kWh", "5mW", "kW", "", "1e999kW", True, "five kW"])
def test_power_errors_say_what_was_expected(bad):
    with pytest.raises(ValueError, match="power"):
        parse_power_w(bad)


def test_energy_size_fraction():
    assert parse_energy_wh("60kWh") == 60_000
    assert parse_size_bytes("4MiB") == 4 * 1024 * 1024
    assert parse_size_bytes(1400) == 1400
    assert parse_fraction(0.05) == 0.05
    assert parse_fraction("5%") == pytest.approx(0.05)
    with pytest.raises(ValueError):
        parse_size_bytes("1.5B")
    with pytest.raises(ValueError):
        parse_fraction("five")


def test_formatting():
    assert format_power(1500) == "1.5 kW"
    assert format_power(2e6) == "2 MW"
    assert format_duration(0.01) == "10ms"
