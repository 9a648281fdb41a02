"""The ``[control]`` section: thresholds, IEEE 1547 settings and interlock limits.

Theory of operation
-------------------
Two keys keep the names operators already use on site, ``PEAK_LOAD_LIMIT`` and
``SPIKE_SENSITIVITY``; the rest are lower-case like every other section. Every quantity
takes its unit (``"500kW"``, ``"10ms"``, ``"59.5Hz"``, ``"40C"``).

Frequency settings default per nominal frequency: leave a key out and
``frequency_profile()`` fills it from the published defaults for ``nominal_frequency``
(IEEE 1547-2018 for 60 Hz, EN 50549-1:2019 / Regulation (EU) 2016/631 for 50 Hz; see
``meshagent.control.frequency``); set it and it wins. A profile whose windows do not nest
(a fast-trip frequency above the slow one, a return-to-service band outside the trip
limits) is a config error that names the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from meshagent.config import register_section, setting
from meshagent.config.units import (
    parse_duration_s,
    parse_fraction,
    parse_frequency_hz,
    parse_power_w,
    parse_size_bytes,
    parse_temperature_c,
)
from meshagent.errors import ConfigError

if TYPE_CHECKING:
    from meshagent.control.frequency import FrequencyProfile


def _parse_curve(value: object) -> Any:
    from meshagent.control.frequency import parse_curve

    return parse_curve(value)


def _opt_hz(key: str, doc: str) -> Any:
    return setting(None, key=key, parse=parse_frequency_hz, shown="per nominal", doc=doc)


def _opt_s(key: str, doc: str) -> Any:
    return setting(None, key=key, parse=parse_duration_s, shown="per nominal", doc=doc)


@attrs.frozen
class ControlSection:
    # --- detection -------------------------------------------------------------------------
    peak_load_limit_w: float = setting(
        500_000.0, key="PEAK_LOAD_LIMIT", parse=parse_power_w, min_value=1.0, shown='"500kW"',
        doc="Load at the meter above which the excess is a deficit the mesh must cover.",
    )
    spike_sensitivity: float = setting(
        0.05, key="SPIKE_SENSITIVITY", parse=parse_fraction, min_value=0.001, max_value=1.0, shown="0.05",
        doc="A rise of this fraction of PEAK_LOAD_LIMIT within `spike_window` counts as a spike.",
    )
    meter_period_s: float = setting(
        0.010, key="meter_period", parse=parse_duration_s, min_value=0.001, max_value=1.0, shown='"10ms"',
        doc="How often the loop reads the site meter.",
    )
    meter_scope: str = setting(
        "site", choices=("site", "transformer"), shown='"site"',
        doc="What the meter measures: the site's connection point or the transformer it hangs on.",
    )
    spike_window_s: float = setting(
        1.0, key="spike_window", parse=parse_duration_s, min_value=0.02, max_value=60, shown='"1s"',
        doc="Window over which a rise is measured (the baseline is the window's lowest smoothed load).",
    )
    spike_min_duration_s: float = setting(
        0.020, key="spike_min_duration", parse=parse_duration_s, min_value=0, max_value=10, shown='"20ms"',
        doc="A condition must hold this long (from the first sample that shows it) to be a spike.",
    )
    spike_hysteresis: float = setting(
        0.02, parse=parse_fraction, min_value=0, max_value=0.5, shown="0.02",
        doc="A spike ends only below its trigger level minus this fraction of PEAK_LOAD_LIMIT.",
    )
    spike_clear_duration_s: float = setting(
        0.5, key="spike_clear_duration", parse=parse_duration_s, min_value=0, max_value=600, shown='"500ms"',
        doc="The end condition must hold this long before the spike is declared over.",
    )
    rise_hold_s: float = setting(
        30.0, key="rise_hold", parse=parse_duration_s, min_value=0.1, max_value=3600, shown='"30s"',
        doc="A rise spike below the limit is covered this long at most, then the baseline moves up.",
    )
    spike_update_settle_s: float = setting(
        0.2, key="spike_update_settle", parse=parse_duration_s, min_value=0, max_value=10, shown='"200ms"',
        doc="After the mesh's cover of a spike changes, the meter needs this long to show it (the members' "
        "control cycle, their inverters' ramp, a meter sample): no update of the deficit is handed on "
        "meanwhile, so a cover the meter does not show yet is not counted twice.",
    )
    smoothing_s: float = setting(
        0.040, key="smoothing", parse=parse_duration_s, min_value=0, max_value=1, shown='"40ms"',
        doc="Running-median window of the load used for the rise criterion (noise, glitches).",
    )
    # --- frequency: IEEE 1547-2018 droop and the predictive PID -----------------------------
    nominal_frequency_hz: float = setting(
        60.0, key="nominal_frequency", parse=parse_frequency_hz, shown='"60Hz"',
        doc="50Hz or 60Hz; picks the default profile (IEEE 1547-2018 at 60 Hz, EN 50549-1 at 50 Hz).",
    )
    droop_deadband_hz: float | None = _opt_hz("droop_deadband", "Frequency-droop deadband (dbUF = dbOF); 0.036Hz at 60 Hz.")
    droop: float = setting(
        0.05, parse=parse_fraction, min_value=0.01, max_value=0.12, shown="0.05",
        doc="Frequency-droop kUF = kOF (per unit frequency change for full rated power).",
    )
    response_time_s: float = setting(
        5.0, key="response_time", parse=parse_duration_s, min_value=0.2, max_value=10, shown='"5s"',
        doc="Open-loop response time of the droop (time to 90% of a step), IEEE 1547-2018 range 0.2-10 s.",
    )
    fast_response_hz: float | None = _opt_hz(
        "fast_response", "Frequency below which the fast (PID) response runs; 59.5Hz at 60 Hz."
    )
    predict_horizon_s: float = setting(
        0.5, key="predict_horizon", parse=parse_duration_s, min_value=0, max_value=5, shown='"500ms"',
        doc="The PID starts early when the frequency's trajectory crosses `fast_response` within this.",
    )
    rocof_window_s: float = setting(
        0.2, key="rocof_window", parse=parse_duration_s, min_value=0.02, max_value=2, shown='"200ms"',
        doc="Window of the least-squares rate-of-change-of-frequency estimate.",
    )
    min_rocof_hz_per_s: float = setting(
        0.05, key="min_rocof", min_value=0, max_value=10, shown="0.05",
        doc="Falls slower than this (Hz/s) never arm the prediction (meter noise).",
    )
    pid_kp: float = setting(2.0, min_value=0, max_value=1000, doc="Not applied any more (kept so old configs load): "
                            "the prediction only brings the droop forward; see `ffr_curve`.")
    pid_ki: float = setting(1.0, min_value=0, max_value=1000, doc="Not applied any more (see `pid_kp`).")
    pid_kd: float = setting(1.0, min_value=0, max_value=1000, doc="Not applied any more (see `pid_kp`).")
    inverter_nameplate_w: float = setting(
        0.0, key="inverter_nameplate", parse=parse_power_w, min_value=0, max_value=10_000_000, shown='"0W"',
        doc="The inverter's nameplate rating, the base of the droop (IEEE 1547-2018); overrides the device's. "
        "0: the inverter's own rating (SunSpec 702 WMaxRtg), or, for a device that gives none, the largest "
        "limit it has reported since the start (logged once as a warning: set this then).",
    )
    response_ramp_pu_per_s: float = setting(
        1.0, key="response_ramp", min_value=0.001, max_value=1000, shown="1.0",
        doc="The frequency response moves by at most this per unit of nameplate per second (per step: x "
        "meter_period).",
    )
    ffr_curve: tuple[tuple[float, float], ...] = setting(
        (), parse=_parse_curve, shown="[]",
        doc="Fast frequency response beyond droop, only when set: [[Hz, per-unit of nameplate], ...], "
        "frequency falling, response rising (docs/control.md gives the grid codes' curves).",
    )
    ffr_ramp_pu_per_s: float = setting(
        1.0, key="ffr_ramp", min_value=0.001, max_value=1000, shown="1.0",
        doc="The fast frequency response moves by at most this per unit of nameplate per second.",
    )
    # --- trip windows and return to service ----------------------------------------------
    uf1_hz: float | None = _opt_hz("uf1", "Slow under-frequency trip level; 58.5Hz at 60 Hz.")
    uf1_time_s: float | None = _opt_s("uf1_time", "Time below `uf1` before tripping; 300s at 60 Hz.")
    uf2_hz: float | None = _opt_hz("uf2", "Fast under-frequency trip level; 56.5Hz at 60 Hz.")
    uf2_time_s: float | None = _opt_s("uf2_time", "Time below `uf2` before tripping; 0.16s at 60 Hz.")
    of1_hz: float | None = _opt_hz("of1", "Slow over-frequency trip level; 61.2Hz at 60 Hz.")
    of1_time_s: float | None = _opt_s("of1_time", "Time above `of1` before tripping; 300s at 60 Hz.")
    of2_hz: float | None = _opt_hz("of2", "Fast over-frequency trip level; 62.0Hz at 60 Hz.")
    of2_time_s: float | None = _opt_s("of2_time", "Time above `of2` before tripping; 0.16s at 60 Hz.")
    rts_low_hz: float | None = _opt_hz("rts_low", "Return to service: lowest frequency; 59.5Hz at 60 Hz.")
    rts_high_hz: float | None = _opt_hz("rts_high", "Return to service: highest frequency; 60.1Hz at 60 Hz.")
    rts_delay_s: float | None = _opt_s("rts_delay", "Return to service: time inside the band; 300s at 60 Hz.")
    # --- interlocks -------------------------------------------------------------------------
    thermal_derate_c: float = setting(
        40.0, key="thermal_derate", parse=parse_temperature_c, min_value=-50, max_value=150, shown='"40C"',
        doc="Power derates linearly from this temperature ...",
    )
    thermal_stop_c: float = setting(
        50.0, key="thermal_stop", parse=parse_temperature_c, min_value=-50, max_value=150, shown='"50C"',
        doc="... to zero at this one (ERR_THERMAL).",
    )
    thermal_low_c: float = setting(
        -25.0, key="thermal_low", parse=parse_temperature_c, min_value=-60, max_value=50, shown='"-25C"',
        doc="Below this temperature the battery is not cycled (ERR_THERMAL).",
    )
    thermal_hysteresis_c: float = setting(
        2.0, key="thermal_hysteresis", parse=parse_temperature_c, min_value=0, max_value=20, shown='"2C"',
        doc="ERR_THERMAL clears this far inside the limits.",
    )
    soc_hysteresis: float = setting(
        0.01, parse=parse_fraction, min_value=0, max_value=0.2, shown="0.01",
        doc="After ERR_BATTERY_LOWER_LIMIT the vehicle rejoins the offer this far above its minimum SoC.",
    )
    contactor_min_dwell_s: float = setting(
        5.0, key="contactor_min_dwell", parse=parse_duration_s, min_value=0, max_value=3600, shown='"5s"',
        doc="Shortest time between two switchings of the contactors (emergencies excepted).",
    )
    contactor_max_cycles_per_hour: int = setting(
        20, min_value=1, max_value=3600, doc="At most this many closings per rolling hour."
    )
    contactor_open_below_w: float = setting(
        50.0, key="contactor_open_below", parse=parse_power_w, min_value=0, max_value=10_000, shown='"50W"',
        doc="Safe mode opens the contactors only once the AC power is at most this, either way (zero current; "
        "the inverter reports power, not current).",
    )
    contactor_weld_time_s: float = setting(
        5.0, key="contactor_weld_time", parse=parse_duration_s, min_value=0.01, max_value=600, shown='"5s"',
        doc="Contacts still closed this long after the loop asked for them to open at zero current are "
        "welded (ERR_CONTACTOR_WELD); leave room for the inverter's own opening delay.",
    )
    sensor_timeout_s: float = setting(
        0.1, key="sensor_timeout", parse=parse_duration_s, min_value=0.01, max_value=10, shown='"100ms"',
        doc="A silent or frozen meter is caught within this time: discharge to 0, latched ERR_SENSOR_LOST. "
        "The loop raises at this time less two meter_period of silence (the wait for the next cycle, and "
        "the frozen sample's reply in flight with the cycle's own reads). At least three meter_period.",
    )
    device_period_s: float = setting(
        0.05, key="device_period", parse=parse_duration_s, min_value=0, max_value=1, shown='"50ms"',
        doc="The vehicle link, thermal sensor and tamper switch are read this often (meter and inverter: "
        "every cycle).",
    )
    cycle_budget_s: float = setting(
        0.005, key="cycle_budget", parse=parse_duration_s, min_value=0.0001, max_value=1, shown='"5ms"',
        doc="A control cycle that takes longer logs LATENCY_OVER_BUDGET with the figures.",
    )
    telemetry_period_s: float = setting(
        0.1, key="telemetry_period", parse=parse_duration_s, min_value=0.01, max_value=3600, shown='"100ms"',
        doc="One telemetry line (state_dir/telemetry.jsonl) per this period.",
    )

    telemetry_max_size: int = setting(
        20_000_000, parse=parse_size_bytes, min_value=1_000, max_value=10**12, shown='"20MB"',
        doc="telemetry.jsonl is rotated (to telemetry.jsonl.1, .2, ...) before it grows past this ...",
    )
    telemetry_max_age_s: float = setting(
        86_400.0, key="telemetry_max_age", parse=parse_duration_s, min_value=1, max_value=366 * 86_400,
        shown='"24h"', doc="... or once it is this old; SIGHUP reopens it (for an external logrotate).",
    )
    telemetry_keep: int = setting(
        7, min_value=0, max_value=1000, doc="Rotated telemetry files kept (the oldest is deleted).",
    )

    def __attrs_post_init__(self) -> None:
        if self.nominal_frequency_hz not in (50.0, 60.0):
            raise ConfigError(f"control.nominal_frequency: expected 50Hz or 60Hz, got {self.nominal_frequency_hz:g}Hz")
        if not self.thermal_low_c < self.thermal_derate_c < self.thermal_stop_c:
            raise ConfigError("control.thermal_derate: expected thermal_low < thermal_derate < thermal_stop")
        if self.sensor_timeout_s < 3 * self.meter_period_s - 1e-9:
            raise ConfigError(f"control.sensor_timeout: expected at least three meter_period "
                              f"({3 * self.meter_period_s * 1e3:g}ms), got {self.sensor_timeout_s * 1e3:g}ms")
        # Resolving the profile checks that the windows nest; the error names the key.
        self.frequency_profile()

    def frequency_profile(self) -> FrequencyProfile:
        """The resolved frequency settings (defaults for the nominal frequency + the keys set)."""
        from meshagent.control.frequency import FrequencyProfile

        return FrequencyProfile.from_section(self)


register_section("control", ControlSection)
