"""Open a device from its URL: the one place that maps a URL and a kind to an implementation.

Theory of operation
-------------------
``open_device(url, kind)`` returns an object implementing the interface for ``kind``
(``DeviceKind.METER`` -> ``SiteMeter``, ``INVERTER`` -> ``Inverter``, ...):

* ``modbus+tcp://`` and ``modbus+rtu://`` -> the Modbus drivers; a Modbus URL names a
  unit, the kind says which of its models to use (a charger unit serves all four charger
  kinds). ``open_charger(url)`` opens the four over one shared link.
* ``sim://SITE/DEVICE`` -> the in-process simulated device in ``world`` (a ``SimWorld``;
  a fresh default one if none is given). The kind must agree with the URL's device part.

Nothing touches the network until the first call: opening is synchronous and cheap.
Close devices with ``await device.aclose()`` (or ``async with``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from hardware.interfaces import DeviceKind, DeviceUrl, DeviceUrlError, parse_device_url

_SIM_CLASSES = {
    DeviceKind.INVERTER: "SimInverter",
    DeviceKind.THERMAL: "SimThermalSensor",
    DeviceKind.TAMPER: "SimTamperSwitch",
    DeviceKind.VEHICLE: "SimVehicleLink",
}
_MODBUS_CLASSES = {
    DeviceKind.METER: "ModbusSiteMeter",
    DeviceKind.INVERTER: "ModbusInverter",
    DeviceKind.THERMAL: "ModbusThermalSensor",
    DeviceKind.TAMPER: "ModbusTamperSwitch",
    DeviceKind.VEHICLE: "ModbusVehicleLink",
}


def _parse(url: str | DeviceUrl) -> DeviceUrl:
    return url if isinstance(url, DeviceUrl) else parse_device_url(url)


def open_device(url: str | DeviceUrl, kind: DeviceKind, *, world: Any = None, clock: Callable[[], float] | None = None,
                timeout_s: float = 0.5, stale_after_s: float = 0.5, link: Any = None,
                revert_after_s: int | None = None) -> Any:
    """An object implementing ``kind``'s interface for the device at ``url``.

    ``revert_after_s``: a Modbus inverter's SunSpec 704 reversion time (WSetRvrtTms), after
    which a device no longer written to returns to no power by itself.
    """
    u = _parse(url)
    if u.scheme == "sim":
        from hardware.simulated import devices as sim
        from hardware.simulated.site import SimWorld

        w = world if world is not None else SimWorld()
        site = w.site(u.site)
        if u.device != "charger" and u.device != kind.value:
            raise DeviceUrlError(f"{u}: names a {u.device}, not a {kind.value}")
        if kind is DeviceKind.METER:
            return sim.SimSiteMeter(str(u), stale_after_s, site=site)
        try:
            charger = site.charger(u.index)
        except LookupError as exc:
            raise DeviceUrlError(f"{u}: {exc}") from None
        return getattr(sim, _SIM_CLASSES[kind])(str(u), stale_after_s, charger=charger)
    from hardware.modbus import devices as mb
    from hardware.modbus.link import open_link
    from hardware.modbus.sunspec import SunSpecUnit

    owns = link is None
    if link is None:
        link = open_link(u, timeout_s=timeout_s)
    elif u.scheme != link.url.scheme or (u.host, u.port, u.serial_path) != (link.url.host, link.url.port,
                                                                               link.url.serial_path):
        raise DeviceUrlError(f"{u}: not on the same line as {link.url}")
    unit = SunSpecUnit(link, u.unit)
    device = getattr(mb, _MODBUS_CLASSES[kind])(unit, clock or trio.current_time, stale_after_s, owns)
    if kind is DeviceKind.INVERTER and revert_after_s is not None:
        device.revert_after_s = int(revert_after_s)
    return device


@attrs.define(eq=False)
class Charger:
    """The four devices of one charger, sharing one link when over Modbus."""

    inverter: Any
    thermal: Any
    tamper: Any
    vehicle: Any
    _link: Any = None

    async def aclose(self) -> None:
        for d in (self.inverter, self.thermal, self.tamper, self.vehicle):
            await d.aclose()
        if self._link is not None:
            await self._link.aclose()

    async def __aenter__(self) -> Charger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def open_charger(url: str | DeviceUrl, **kw: Any) -> Charger:
    u = _parse(url)
    link = None
    if u.scheme != "sim":
        from hardware.modbus.link import open_link

        link = open_link(u, timeout_s=kw.get("timeout_s", 0.5))
        kw["link"] = link
    kinds = (DeviceKind.INVERTER, DeviceKind.THERMAL, DeviceKind.TAMPER, DeviceKind.VEHICLE)
    if u.scheme == "sim" and u.device not in ("charger",):
        u = attrs.evolve(u, device="charger")
    inverter, thermal, tamper, vehicle = (open_device(u, k, **kw) for k in kinds)
    return Charger(inverter, thermal, tamper, vehicle, link)


def open_site_meter(url: str | DeviceUrl, **kw: Any) -> Any:
    return open_device(url, DeviceKind.METER, **kw)


def open_inverter(url: str | DeviceUrl, **kw: Any) -> Any:
    return open_device(url, DeviceKind.INVERTER, **kw)
