"""A simulated site: building load, grid, a meter at the connection point, and its chargers.

Theory of operation
-------------------
The site meter measures what the site draws from the grid: the building's base load plus
every charger's power (+ charging, - discharging; see ``hardware.interfaces``). The base
load is ``base_load_w`` plus an optional ``load_profile(t)`` (a simulation's arrivals,
a demand spike) plus ``load_steps_w`` added by tests; frequency and voltage are set by the
grid model (``set_grid``). The meter integrates import and export energy as the physics
advances, like a revenue meter's registers.

Faults a test can inject: ``freeze()`` (the meter stops sampling: readers see STALE) and
``inject(frequency_hz=nan, ...)`` (raw values that the range checks must refuse).

``SimWorld`` names sites for ``sim://SITE/DEVICE`` URLs; an unknown site name is created
with defaults on first use, so ``meshagent read sim://site-a/meter`` works on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

import attrs

from hardware.simulated.charger import SimulatedCharger
from hardware.simulated.faults import FaultHooks
from hardware.simulated.vehicles import VehicleConfig


@attrs.frozen
class MeterSnapshot:
    """Raw meter values (our sign: + import) before any range check."""

    taken_at_s: float
    active_power_w: float
    frequency_hz: float
    voltage_v: float
    energy_import_wh: float
    energy_export_wh: float
    sample_count: int


@attrs.define(eq=False)
class SimulatedSite(FaultHooks):
    SNAPSHOT_TYPE: ClassVar[type] = MeterSnapshot

    clock: Callable[[], float]
    name: str = "site-a"
    base_load_w: float = 40_000.0
    load_profile: Callable[[float], float] | None = None
    frequency_hz: float = 50.0
    voltage_v: float = 230.0
    lock: threading.RLock = attrs.field(factory=threading.RLock)
    chargers: list[SimulatedCharger] = attrs.field(factory=list)
    load_steps_w: float = 0.0
    energy_import_wh: float = attrs.field(init=False, default=0.0)
    energy_export_wh: float = attrs.field(init=False, default=0.0)
    sample_count: int = attrs.field(init=False, default=0)
    frozen: MeterSnapshot | None = attrs.field(init=False, default=None)
    overrides: dict[str, float] = attrs.field(init=False, factory=dict)
    _t: float = attrs.field(init=False)
    _p: float = attrs.field(init=False, default=0.0)  # building load at _t

    def __attrs_post_init__(self) -> None:
        self._t = self.clock()
        self._p = self._building_w(self._t)

    @classmethod
    def with_chargers(cls, clock: Callable[[], float], n: int = 1, *, name: str = "site-a",
                      vehicles: list[VehicleConfig] | None = None, **kw: object) -> SimulatedSite:
        """A site with ``n`` chargers; ``vehicles[i]`` (if given) plugged into charger ``i``."""
        site = cls(clock, name, **kw)  # type: ignore[arg-type]
        for i in range(n):
            site.add_charger()
            if vehicles and i < len(vehicles):
                site.chargers[i].connect_vehicle(vehicles[i])
        return site

    def add_charger(self, **kw: object) -> SimulatedCharger:
        with self.lock:
            charger = SimulatedCharger(self.clock, name=f"{self.name}/charger-{len(self.chargers) + 1}",
                                       lock=self.lock, **kw)  # type: ignore[arg-type]
            self.chargers.append(charger)
            return charger

    def charger(self, index: int) -> SimulatedCharger:
        """1-based, as in ``sim://site-a/inverter-2``."""
        if not 1 <= index <= len(self.chargers):
            raise LookupError(f"site {self.name!r} has {len(self.chargers)} charger(s), no charger {index}")
        return self.chargers[index - 1]

    def _power_now(self, t: float) -> float:
        return self._building_w(t) + sum(c.power_w for c in self.chargers)

    def _building_w(self, t: float) -> float:
        load = self.base_load_w + self.load_steps_w
        if self.load_profile is not None:
            load += self.load_profile(t)
        return load

    def advance(self) -> float:
        """Integrate to ``clock()``: the building's energy by trapezoid (exact for steps,
        which only change through ``step_load`` after an advance), the chargers' exactly
        from their own integrators. Import and export are netted per advance."""
        with self.lock:
            now = self.clock()
            before = sum(c.energy_in_wh - c.energy_out_wh for c in self.chargers)
            for c in self.chargers:
                c._advance(now)
            if now > self._t:
                chargers_wh = sum(c.energy_in_wh - c.energy_out_wh for c in self.chargers) - before
                building_wh = (self._p + self._building_w(now)) / 2.0 * (now - self._t) / 3600.0
                energy_wh = building_wh + chargers_wh
                if energy_wh >= 0:
                    self.energy_import_wh += energy_wh
                else:
                    self.energy_export_wh -= energy_wh
                self._p, self._t = self._building_w(now), now
            return now

    def snapshot(self) -> MeterSnapshot:
        with self.lock:
            now = self.advance()
            if self.frozen is not None:
                return self.frozen
            self.sample_count += 1
            snap = MeterSnapshot(now, self._power_now(now), self.frequency_hz, self.voltage_v,
                                 self.energy_import_wh, self.energy_export_wh, self.sample_count)
            return self._measured(snap)

    # --- the world acting on the site ------------------------------------------------------

    def set_grid(self, *, frequency_hz: float | None = None, voltage_v: float | None = None) -> None:
        with self.lock:
            self.advance()
            if frequency_hz is not None:
                self.frequency_hz = frequency_hz
            if voltage_v is not None:
                self.voltage_v = voltage_v

    def step_load(self, delta_w: float) -> None:
        """Add ``delta_w`` to the building load from now on (a demand spike)."""
        with self.lock:
            self.advance()
            self.load_steps_w += delta_w
            self._p = self._building_w(self._t)


@attrs.define
class SimWorld:
    """Simulated sites by name, for ``sim://`` URLs. One clock for the whole world.

    The default clock is ``time.monotonic`` because a world served over Modbus is read from
    the server's thread, outside trio; a simulation in virtual time passes
    ``trio.current_time`` (under a MockClock) and keeps the world inside trio.
    """

    clock: Callable[[], float] = time.monotonic
    sites: dict[str, SimulatedSite] = attrs.field(factory=dict)
    default_chargers: int = 1
    default_vehicle: str = "nissan-leaf-40"

    def site(self, name: str) -> SimulatedSite:
        if name not in self.sites:
            vehicles = [VehicleConfig.of(self.default_vehicle)] * self.default_chargers
            self.sites[name] = SimulatedSite.with_chargers(self.clock, self.default_chargers, name=name,
                                                           vehicles=vehicles)
        return self.sites[name]

    def add(self, site: SimulatedSite) -> SimulatedSite:
        self.sites[site.name] = site
        return site
