"""Register maps as data, the codec, the generated document, and device URLs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hardware.interfaces import DeviceUrlError, parse_device_url
from hardware.modbus.registers import (
    CHARGER_LAYOUT,
    METER_LAYOUT,
    MODELS,
    RegisterError,
    decode,
    encode,
    register_map_markdown,
)

REPO = Path(__file__).resolve().parents[2]


def test_model_lengths_are_sunspecs() -> None:
    # L of each model as published by the SunSpec Alliance
    assert {m: MODELS[m].length for m in (1, 213, 701, 702, 704, 713)} == {
        1: 66, 213: 124, 701: 153, 702: 50, 704: 65, 713: 7}


def test_meter_hot_path_is_one_read() -> None:
    first = METER_LAYOUT.address(64901, "Age")
    last = METER_LAYOUT.address(213, "W") + 2
    assert last - first <= 125


@pytest.mark.parametrize("model,point,value,sf", [
    (704, "WSet", -12345.6, -1), (701, "W", -32767, 0), (701, "Hz", 49.987, -3), (213, "W", 512_345.6, 0),
    (64900, "EVId", "EV001-leaf", 0), (713, "SoC", 55.5, -1), (702, "WMaxRtg", 22_000, 0),
])
def test_encode_decode_round_trip(model: int, point: str, value: object, sf: int) -> None:
    p = MODELS[model].point(point)
    got = decode(p, encode(p, value, sf), sf)
    if isinstance(value, float):
        assert got == pytest.approx(value, abs=0.05 if p.type == "float32" else 10.0 ** sf / 2)
    else:
        assert got == value


def test_not_implemented_values_decode_to_none() -> None:
    for model, point in ((701, "W"), (701, "Hz"), (702, "WMaxRtg"), (213, "W"), (701, "TotWhInj")):
        p = MODELS[model].point(point)
        assert decode(p, encode(p, None)) is None
        assert decode(p, encode(p, math.nan)) is None


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(RegisterError):
        encode(MODELS[701].point("W"), 40_000, 0)  # int16
    with pytest.raises(RegisterError):
        decode(MODELS[704].point("WSet"), [1])


def test_register_map_document_is_generated_from_the_data() -> None:
    doc = (REPO / "docs" / "register-map.md").read_text()
    assert doc == register_map_markdown(), "regenerate: python -m hardware.modbus.registers > docs/register-map.md"
    for layout in (METER_LAYOUT, CHARGER_LAYOUT):
        for mid in layout.model_ids:
            for p in MODELS[mid].points:
                assert f"| `{p.name}` |" in doc


@pytest.mark.parametrize("text,expect", [
    ("modbus+tcp://127.0.0.1:5020/1", {"host": "127.0.0.1", "port": 5020, "unit": 1}),
    ("modbus+tcp://127.0.0.1", {"port": 502, "unit": 1}),
    ("modbus+tcp://[::1]:5020?unit=7", {"host": "::1", "unit": 7}),
    ("modbus+rtu:///dev/ttyUSB0?baud=115200&unit=1", {"serial_path": "/dev/ttyUSB0", "baud": 115200, "unit": 1}),
    ("modbus+rtu:///dev/ttyS1?parity=e", {"parity": "E", "baud": 19200}),
    ("sim://site-a/meter", {"site": "site-a", "device": "meter"}),
    ("sim://site-b/inverter-3", {"site": "site-b", "device": "inverter", "index": 3}),
])
def test_device_urls(text: str, expect: dict[str, object]) -> None:
    url = parse_device_url(text)
    for key, value in expect.items():
        assert getattr(url, key) == value
    assert str(url) == text


@pytest.mark.parametrize("text,message", [
    ("", "empty"), ("http://x/1", "unknown scheme"), ("modbus+tcp://:5020/1", "missing host"),
    ("modbus+tcp://h:70000/1", "bad port"), ("modbus+tcp://h/0", "unit id"), ("modbus+tcp://h/1?unit=2", "twice"),
    ("modbus+tcp://h/1?speed=9", "unknown parameter"), ("modbus+rtu://host/dev/x", "three slashes"),
    ("modbus+rtu:///dev/x?baud=fast", "baud"), ("modbus+rtu:///dev/x?parity=Q", "parity"),
    ("sim://site-a", "sim://SITE/DEVICE"), ("sim://site-a/toaster", "unknown simulated device"),
    ("sim://site-a/meter-2", "one meter"), ("modbus+tcp://h/1#frag", "fragment"),
])
def test_bad_device_urls_say_why(text: str, message: str) -> None:
    with pytest.raises(DeviceUrlError, match=message):
        parse_device_url(text)
