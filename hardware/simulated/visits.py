"""Vehicles arriving at and leaving a simulated site's chargers, on a repeating schedule.

Theory of operation
-------------------
The emulator and the agent's own ``sim://`` world start with a vehicle plugged into every
charger. A real site's vehicles come and go, and each visit is a charging session (a
transaction at the CSMS), so ``Visits`` gives each charger a cycle: a vehicle stays
``stay_s``, leaves, the charger is empty for ``away_s``, the next vehicle arrives, and so
on. Charger ``i`` of ``n`` runs the same cycle shifted by ``i/n`` of a period, so departures
spread out instead of emptying the site at once.

``Visits`` is pure: ``events(lo, hi, n)`` lists what happens in ``[lo, hi)`` seconds since
the start, and ``next_after(t, n)`` when the next thing does. ``drive_visits`` is the trio
shell: it sleeps until the next event on trio's clock and connects or disconnects
vehicles on the site, so it runs in real time (the emulator) or in virtual time
(the agent's ``sim://`` world under a MockClock, and the tests).

The spelling in configuration and on the command line is ``STAY/AWAY`` with units
(``"5min/1min"``: stay five minutes, gone one), or ``"none"``: plugged in for good.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import trio

from hardware.simulated.site import SimulatedSite
from hardware.simulated.vehicles import VehicleConfig

log = logging.getLogger(__name__)

DEFAULT_VISITS = "5min/1min"  # a vehicle leaving and another arriving every few minutes


@attrs.frozen
class Visit:
    """One change on one charger: ``arrives`` (a vehicle plugs in) or not (it leaves)."""

    at_s: float  # since the schedule's start
    charger_index: int  # 0-based
    arrives: bool
    number: int  # the charger's visit count: 0 is the vehicle plugged in at the start


@attrs.frozen
class Visits:
    stay_s: float
    away_s: float

    @classmethod
    def parse(cls, spec: str, duration_s: Callable[[str], float]) -> Visits | None:
        """``"STAY/AWAY"`` (e.g. ``"5min/1min"``), or ``None`` for ``"none"`` (plugged in for good).

        ``duration_s`` reads one duration with its unit (the caller's, so the spelling is
        the one its configuration uses). Raises ``ValueError`` with one line quoting ``spec``.
        """
        text = spec.strip()
        if text.lower() == "none":
            return None
        stay, sep, away = text.partition("/")
        if not sep:
            raise ValueError(f"{spec!r}: expected STAY/AWAY (e.g. 5min/1min: each vehicle stays 5 minutes, the "
                             "charger is then empty for 1 minute), or none")
        out = []
        for what, part in (("STAY", stay), ("AWAY", away)):
            try:
                value = float(duration_s(part.strip()))
            except ValueError as exc:
                raise ValueError(f"{spec!r}: {what}: {exc}") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{spec!r}: {what} must be a positive duration")
            out.append(value)
        return cls(out[0], out[1])

    @property
    def period_s(self) -> float:
        return self.stay_s + self.away_s

    def _offset_s(self, index: int, n: int) -> float:
        return self.period_s * index / n

    def events(self, lo_s: float, hi_s: float, n: int) -> list[Visit]:
        """Every departure and arrival after ``lo_s`` up to ``hi_s`` (inclusive) on ``n``
        chargers, in time order."""
        out: list[Visit] = []
        for i in range(n):
            first_leave = self.stay_s + self._offset_s(i, n)
            k = max(0, math.floor((lo_s - first_leave) / self.period_s) - 1)
            while True:
                leave = first_leave + k * self.period_s
                arrive = leave + self.away_s
                if leave > hi_s:
                    break
                if leave > lo_s:
                    out.append(Visit(leave, i, False, k))
                if lo_s < arrive <= hi_s:
                    out.append(Visit(arrive, i, True, k + 1))
                k += 1
        return sorted(out, key=lambda v: (v.at_s, v.charger_index, v.arrives))

    def next_after(self, t_s: float, n: int) -> float:
        """The time of the first event strictly after ``t_s``."""
        best = math.inf
        for i in range(n):
            first_leave = self.stay_s + self._offset_s(i, n)
            k = max(0, math.floor((t_s - first_leave) / self.period_s))
            for kk in (k, k + 1):
                for at in (first_leave + kk * self.period_s, first_leave + kk * self.period_s + self.away_s):
                    if at > t_s:
                        best = min(best, at)
        return best


async def drive_visits(site: SimulatedSite, visits: Visits, make_vehicle: Callable[[int, int], VehicleConfig], *,
                       on_visit: Callable[[Visit, VehicleConfig | None], None] | None = None,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Move vehicles in and out of ``site``'s chargers per ``visits``, until cancelled.

    ``make_vehicle(charger_index, visit_number)`` is the vehicle of each new arrival;
    ``on_visit`` hears of each change (the emulator prints one line).
    """
    start = trio.current_time()
    n = len(site.chargers)
    done_s = 0.0
    task_status.started()
    if n == 0:
        await trio.sleep_forever()
    while True:
        due = visits.next_after(done_s, n)
        await trio.sleep_until(start + due)
        now_s = max(due, trio.current_time() - start)  # never short of it by a rounding
        for visit in visits.events(done_s, now_s, n):
            charger = site.chargers[visit.charger_index]
            vehicle = make_vehicle(visit.charger_index, visit.number) if visit.arrives else None
            if vehicle is not None:
                charger.connect_vehicle(vehicle)
                log.info("%s: vehicle %s arrived", charger.name, vehicle.vehicle_id or vehicle.spec.model)
            else:
                charger.disconnect_vehicle()
                log.info("%s: vehicle left", charger.name)
            if on_visit is not None:
                on_visit(visit, vehicle)
        done_s = now_s
