"""The ``[devices]`` section: where this charger's site meter and power stage are.

Both are device URLs (``hardware.interfaces.parse_device_url``): ``modbus+tcp://HOST:PORT/UNIT``,
``modbus+rtu:///dev/ttyUSB0?baud=115200&unit=1`` or ``sim://SITE/DEVICE`` for a simulated site
in the agent's own process. With both set, ``meshagent run`` starts the control loop and
publishes this node's state record (its discharge offer) to the mesh; with neither, the node
is a member without an offer (a seed or a utility-facing peer).
"""

from __future__ import annotations

from typing import Any

import attrs

from hardware.simulated.visits import DEFAULT_VISITS
from meshagent.config import register_section, setting
from meshagent.config.units import parse_duration_s


def _url(value: object) -> str:
    from hardware.interfaces import DeviceUrlError, parse_device_url

    if not isinstance(value, str):
        raise ValueError(f"expected a device URL string, got {value!r}")
    if value == "":
        return ""
    try:
        parse_device_url(value)
    except DeviceUrlError as exc:
        raise ValueError(str(exc)) from None
    return value


def _visits(value: object) -> str:
    from hardware.simulated.visits import Visits

    if not isinstance(value, str):
        raise ValueError(f"expected STAY/AWAY (e.g. \"5min/1min\") or \"none\", got {value!r}")
    Visits.parse(value, parse_duration_s)  # one line naming what is wrong
    return value


@attrs.frozen
class DevicesSection:
    meter: str = setting("", parse=_url, shown='""', doc="The site meter's URL, e.g. `modbus+tcp://10.20.0.5:502/1`.")
    charger: str = setting("", parse=_url, shown='""',
                           doc="This charger's power stage (inverter, vehicle link, thermal, tamper) URL.")
    record_period_s: float = setting(1.0, key="record_period", parse=parse_duration_s, min_value=0.1, max_value=3600,
                                     shown='"1s"', doc="How often the offer is checked for a change worth publishing.")
    record_heartbeat_s: float = setting(30.0, key="record_heartbeat", parse=parse_duration_s, min_value=1, max_value=86400,
                                        shown='"30s"', doc="Publish the offer at least this often, changed or not.")

    setpoint_reversion_s: float = setting(
        3.0, key="setpoint_reversion", parse=parse_duration_s, min_value=1, max_value=3600, shown='"3s"',
        doc="A Modbus inverter not written to for this long returns to no power by itself (SunSpec 704 "
            "WSetRvrtTms, whole seconds): the agent renews it every second, so a dead agent stops discharging.")

    modbus_timeout_s: float = setting(
        0.5, key="modbus_timeout", parse=parse_duration_s, min_value=0.02, max_value=10, shown='"500ms"',
        doc="How long one Modbus request (meter or charger) may wait for its reply before the link counts a "
            "timeout fault and reconnects. Raise it for a slow RS-485 line (low baud, many units); a silent "
            "meter is still caught within `[control] sensor_timeout`, whatever this is.")

    sim_arrivals: str = setting(
        DEFAULT_VISITS, parse=_visits, shown=f'"{DEFAULT_VISITS}"',
        doc="Only for `sim://` devices: each simulated vehicle stays STAY, leaves, and another arrives AWAY later "
            "(each visit is a charging session at the CSMS); \"none\": plugged in for good.")

    def visits(self) -> Any:
        """The ``sim_arrivals`` schedule (``hardware.simulated.visits.Visits``), or None."""
        from hardware.simulated.visits import Visits

        return Visits.parse(self.sim_arrivals, parse_duration_s)

    @property
    def configured(self) -> bool:
        return bool(self.meter and self.charger)


register_section("devices", DevicesSection)
