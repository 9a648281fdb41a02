"""Vehicles arriving and leaving on a schedule (``hardware.simulated.visits``): the pure
schedule from a table, then the driver moving vehicles on a site in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from hardware.simulated import SimulatedSite, VehicleConfig
from hardware.simulated.visits import Visit, Visits, drive_visits
from meshagent.config.units import parse_duration_s


@pytest.mark.parametrize(("spec", "want"), [
    ("5min/1min", Visits(300.0, 60.0)),
    (" 2s / 500ms ", Visits(2.0, 0.5)),
    ("none", None),
])
def test_parse(spec: str, want: Visits | None) -> None:
    assert Visits.parse(spec, parse_duration_s) == want


@pytest.mark.parametrize(("spec", "says"), [
    ("5min", "expected STAY/AWAY"),
    ("5x/1s", "STAY"),
    ("1s/0s", "AWAY must be a positive duration"),
    ("1s/-2s", "AWAY"),
])
def test_bad_spellings_get_one_line(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        Visits.parse(spec, parse_duration_s)
    assert "\n" not in str(info.value) and repr(spec) in str(info.value)


def test_one_charger_leaves_after_stay_and_the_next_arrives_after_away() -> None:
    v = Visits(10.0, 2.0)
    assert v.events(0, 30, 1) == [Visit(10, 0, False, 0), Visit(12, 0, True, 1),
                                  Visit(22, 0, False, 1), Visit(24, 0, True, 2)]
    assert v.events(10, 12, 1) == [Visit(12, 0, True, 1)]  # after lo, up to hi inclusive
    assert v.next_after(0, 1) == 10 and v.next_after(10, 1) == 12 and v.next_after(12, 1) == 22


def test_chargers_are_staggered_over_one_period() -> None:
    v = Visits(10.0, 2.0)  # period 12 s, 3 chargers: shifted by 4 s each
    leaves = [(e.at_s, e.charger_index) for e in v.events(0, 22, 3) if not e.arrives]
    assert leaves == [(10.0, 0), (14.0, 1), (18.0, 2), (22.0, 0)]
    assert v.next_after(10.0, 3) == 12.0  # charger 1's next vehicle, before charger 2 leaves


async def test_the_driver_moves_vehicles_in_virtual_time(autojump_clock: Any) -> None:
    site = SimulatedSite.with_chargers(trio.current_time, 1, vehicles=[VehicleConfig.of("nissan-leaf-40")])
    charger = site.chargers[0]
    seen: list[tuple[float, bool, str]] = []

    def visitor(index: int, visit: int) -> VehicleConfig:
        return VehicleConfig.of("ford-f150-lightning-er", vehicle_id=f"V{index}-{visit}")

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(lambda task_status: drive_visits(
                site, Visits(60.0, 15.0), visitor, task_status=task_status,
                on_visit=lambda v, car: seen.append((trio.current_time() - t0, v.arrives,
                                                     car.vehicle_id if car else ""))))
            await trio.sleep(59.9)
            assert charger.vehicle is not None  # the vehicle plugged in at the start is still there
            await trio.sleep(0.2)
            assert charger.vehicle is None and charger.snapshot().vehicle_connected is False
            await trio.sleep(15.0)
            assert charger.vehicle is not None and charger.snapshot().vehicle_id == "V0-1"
            await trio.sleep(75.0)
            nursery.cancel_scope.cancel()
    assert seen == [(60.0, False, ""), (75.0, True, "V0-1"), (135.0, False, ""), (150.0, True, "V0-2")]
