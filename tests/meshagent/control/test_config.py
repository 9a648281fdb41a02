"""The [control] section: operator names, units, defaults, errors that name the key."""

from __future__ import annotations

import pytest

from meshagent.config import load_config
from meshagent.errors import ConfigError
from tests.meshagent.control.conftest import section


def test_defaults():
    s = section()
    assert s.peak_load_limit_w == 500_000 and s.spike_sensitivity == 0.05
    assert s.meter_period_s == 0.010 and s.sensor_timeout_s == 0.1 and s.telemetry_period_s == 0.1
    assert (s.thermal_derate_c, s.thermal_stop_c, s.thermal_low_c) == (40, 50, -25)
    p = s.frequency_profile()
    assert (p.nominal_hz, p.deadband_hz, p.droop, p.response_time_s, p.fast_response_hz) == (60, 0.036, 0.05, 5, 59.5)
    assert [(x.name, x.limit_hz, x.clearing_time_s) for x in p.stages] == [
        ("UF2", 56.5, 0.16), ("UF1", 58.5, 300), ("OF2", 62.0, 0.16), ("OF1", 61.2, 300)]
    assert (p.rts_low_hz, p.rts_high_hz, p.rts_delay_s) == (59.5, 60.1, 300)


def test_operator_names_and_units(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nid = "n1"\n[control]\nPEAK_LOAD_LIMIT = "1.2MW"\nSPIKE_SENSITIVITY = "10%"\n'
                    'meter_period = "20ms"\nthermal_derate = "35C"\nresponse_time = "1s"\n')
    s = load_config(path).section("control")
    assert (s.peak_load_limit_w, s.spike_sensitivity, s.meter_period_s) == (1.2e6, 0.1, 0.02)
    assert s.thermal_derate_c == 35 and s.response_time_s == 1


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"PEAK_LOAD_LIMIT": "500"}, "control.PEAK_LOAD_LIMIT: expected a power"),
        ({"PEAK_LOAD_LIMT": "500kW"}, "unknown key control.PEAK_LOAD_LIMT (did you mean control.PEAK_LOAD_LIMIT?)"),
        ({"SPIKE_SENSITIVITY": 2}, "control.SPIKE_SENSITIVITY: must be at most 1.0"),
        ({"meter_period": "2s"}, "control.meter_period: must be at most 1.0"),
        ({"thermal_derate": "60C"}, "control.thermal_derate: expected thermal_low < thermal_derate < thermal_stop"),
        ({"meter_period": "50ms"}, "control.sensor_timeout: expected at least three meter_period (150ms), got 100ms"),
        ({"meter_scope": "feeder"}, "control.meter_scope: expected one of 'site', 'transformer'"),
    ],
)
def test_errors_name_the_key(keys, message):
    with pytest.raises(ConfigError) as info:
        section(**keys)
    assert message in str(info.value)
