# ruff: noqa: F811  (the `bench` fixture is imported from test_loop and used as a parameter)
"""While a code is active, the power it governs stays where the code says (the real loop).

Each test runs the real ``ControlLoop`` on trio's autojump clock against the simulated
charger and moves the cause back and forth inside the code's hysteresis: power must not
come back until the code clears, and both the raise and the clear are logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hardware.simulated import VehicleConfig
from meshagent.control.codes import Action, Code
from tests.meshagent.control.test_loop import GUARD_S, Bench, bench, start_bench, wait_until  # noqa: F401

RATED_W = 9_600.0  # the simulated charger's inverter


def thermal_lines(b: Bench) -> list[tuple[str, str]]:
    return [(e.action.value, e.figures["level"]) for e in b.loop.events if e.code is Code.ERR_THERMAL]


async def test_thermal_stop_holds_power_at_zero_until_the_code_clears(bench: Bench, autojump_clock: Any):
    ch = bench.charger
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    assert ch.power_w == pytest.approx(-9_000)
    ch.inject(temperature_c=50.5)
    await trio.sleep(0.5)
    assert ch.power_w == 0 and "ERR_THERMAL" in bench.loop.last_decision.faults
    # 49 C: below the stop, but inside its 2 C hysteresis: the code stays, and so does 0 W
    ch.inject(temperature_c=49.0)
    await trio.sleep(1.0)
    assert "ERR_THERMAL" in bench.loop.last_decision.faults
    assert ch.power_w == 0 and bench.loop.last_decision.setpoint_w == 0
    # 47.9 C: out of the stop's hysteresis; still derating, from the stop's end of the curve
    ch.inject(temperature_c=47.9)
    await trio.sleep(0.5)
    assert bench.loop.last_decision.setpoint_w == pytest.approx(-RATED_W * (50 - 49.9) / 10, abs=1)
    # cooling hands power back along the curve shifted by the hysteresis ...
    ch.inject(temperature_c=39.0)
    await trio.sleep(0.5)
    assert "ERR_THERMAL" in bench.loop.last_decision.faults
    assert bench.loop.last_decision.setpoint_w == pytest.approx(-RATED_W * 0.9, abs=1)
    # ... and all of it only when the code clears
    ch.inject(temperature_c=37.9)
    await trio.sleep(0.5)
    assert "ERR_THERMAL" not in bench.loop.last_decision.faults
    assert ch.power_w == pytest.approx(-9_000)
    assert thermal_lines(bench) == [("raised", "stop"), ("raised", "derating"), ("cleared", "normal")]


async def test_thermal_low_limit_holds_power_at_zero_until_the_code_clears(bench: Bench, autojump_clock: Any):
    ch = bench.charger
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    ch.inject(temperature_c=-26.0)
    await trio.sleep(0.5)
    assert ch.power_w == 0
    ch.inject(temperature_c=-24.5)  # above the -25 C limit, inside its hysteresis
    await trio.sleep(1.0)
    assert "ERR_THERMAL" in bench.loop.last_decision.faults and ch.power_w == 0
    ch.inject(temperature_c=-22.9)
    await trio.sleep(0.5)
    assert "ERR_THERMAL" not in bench.loop.last_decision.faults
    assert ch.power_w == pytest.approx(-9_000)
    assert thermal_lines(bench) == [("raised", "stop"), ("cleared", "normal")]


async def test_thermal_derating_never_gives_power_back_on_the_way_up_the_hysteresis(bench: Bench,
                                                                                   autojump_clock: Any):
    ch = bench.charger
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    ch.inject(temperature_c=45.0)  # half way from 40 to 50 C: half the rating
    await trio.sleep(0.5)
    assert bench.loop.last_decision.binding == "thermal"
    assert ch.power_w == pytest.approx(-0.5 * RATED_W)
    ch.inject(temperature_c=43.5)  # 1.5 C cooler, inside the hysteresis: held at the 45 C level
    await trio.sleep(0.5)
    assert ch.power_w == pytest.approx(-0.5 * RATED_W)
    ch.inject(temperature_c=46.0)  # hotter again: follows the curve down at once
    await trio.sleep(0.5)
    assert ch.power_w == pytest.approx(-0.4 * RATED_W)


async def test_minimum_soc_holds_discharge_at_zero_until_the_hysteresis(tmp_path: Path, autojump_clock: Any):
    car = VehicleConfig.of("mitsubishi-outlander-phev", present_soc_pct=20.1, minimum_soc_pct=20.0)
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, vehicle=car)
            b.loop.set_share(7_400)
            await wait_until(lambda: Code.ERR_BATTERY_LOWER_LIMIT in b.codes(), step_s=0.1, within_s=20)
            await trio.sleep(0.2)
            assert b.charger.power_w == 0
            # charge a little: the SoC is above the minimum, but not by the 1 % hysteresis
            b.loop.set_share(0)
            b.loop.base_setpoint_w = 7_400
            await wait_until(lambda: b.charger.vehicle.soc_pct > 20.4, step_s=0.1, within_s=60)
            b.loop.base_setpoint_w = 0
            b.loop.set_share(7_400)
            for _ in range(20):  # 2 s: the code is still listed, and discharge stays at 0
                await trio.sleep(0.1)
                d = b.loop.last_decision
                assert "ERR_BATTERY_LOWER_LIMIT" in d.faults and not d.offer_available
                assert d.setpoint_w == 0 and b.charger.power_w == 0
            assert b.loop.last_decision.binding == "battery_lower_limit"
            assert b.codes(Action.CLEARED) == []
            nursery.cancel_scope.cancel()


# --- the property: no cycle commands power an active code forbids ------------------------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hardware.simulated import SimulatedSite  # noqa: E402
from meshagent.control.limits import thermal_factor  # noqa: E402
from meshagent.control.logic import ThermalLevel  # noqa: E402
from meshagent.control.loop import ControlLoop  # noqa: E402
from tests.meshagent.control.conftest import section  # noqa: E402
from tests.meshagent.control.test_loop import make_devices  # noqa: E402


class CheckedInverter:
    """The simulated inverter, checking every setpoint the loop writes against the codes
    active in the loop's logic at that moment."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.loop: ControlLoop | None = None
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def set_power(self, setpoint_w: float) -> float:
        assert self.loop is not None
        logic = self.loop.logic
        dev = self.loop.last_device_state
        assert dev is not None  # no device state: the loop must not write anything but 0 anyway
        if logic.latched:
            assert setpoint_w == 0, f"{setpoint_w} W with {sorted(logic.latched)} latched"
        if logic.thermal is ThermalLevel.STOP:
            assert setpoint_w == 0, f"{setpoint_w} W with ERR_THERMAL stop"
        elif logic.thermal is ThermalLevel.DERATING:
            peak = min(logic.thermal_peak_c, dev.temperature_max_c + logic.section.thermal_hysteresis_c)
            factor = thermal_factor(peak, dev.temperature_min_c, logic.limits)
            assert abs(setpoint_w) <= factor * RATED_W + 1e-6, f"{setpoint_w} W past the derating {factor}"
        if logic.lower_limit:
            assert setpoint_w >= 0, f"discharge {setpoint_w} W with ERR_BATTERY_LOWER_LIMIT"
        self.writes += 1
        return float(await self.inner.set_power(setpoint_w))


actions = st.lists(
    st.tuples(
        st.sampled_from(["temperature", "soc", "freeze", "unfreeze", "open", "close", "clear", "share"]),
        # temperature (C), also SoC (% = value + 40) and share (W = |value| x 200); the values
        # at the edges of each limit's hysteresis come up often
        st.one_of(st.sampled_from([-26.0, -24.5, -23.5, -19.9, -19.5, -18.0, 37.9, 39.0, 43.0, 45.0, 48.5, 49.0,
                                   50.5]), st.floats(-30.0, 55.0)),
        st.integers(1, 30),  # cycles to run after the action
    ),
    min_size=1, max_size=25,
)


@given(steps=actions)
@example(steps=[("temperature", 50.5, 10), ("temperature", 49.0, 30)])  # the defects the issue found
@example(steps=[("temperature", -26.0, 10), ("temperature", -24.5, 30)])
@example(steps=[("soc", -20.0, 10), ("soc", -19.5, 30)])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_cycle_of_the_real_loop_commands_power_an_active_code_forbids(steps: list[tuple[str, float, int]],
                                                                          tmp_path_factory: Any):
    state_dir = tmp_path_factory.mktemp("prop")

    async def main() -> None:
        site = SimulatedSite.with_chargers(trio.current_time, 1, name="site-a", base_load_w=400_000.0,
                                           frequency_hz=60.0, vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
        ch = site.charger(1)
        devices = make_devices(site)
        inverter = CheckedInverter(devices.inverter)
        import attrs

        devices = attrs.evolve(devices, inverter=inverter)
        loop = ControlLoop(section(cycle_budget="1s", contactor_min_dwell="0s"), devices, node_id="n1",
                           scope_id="site-a", state_dir=state_dir)
        inverter.loop = loop
        with trio.fail_after(GUARD_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(loop.run)
                loop.set_share(9_000)
                for what, x, cycles in steps:
                    if what == "temperature":
                        ch.inject(temperature_c=x)
                    elif what == "soc" and ch.vehicle is not None:
                        ch.vehicle.soc_pct = min(100.0, max(ch.vehicle.config.minimum_soc_pct, x + 40.0))
                    elif what == "freeze":
                        site.freeze()
                    elif what == "unfreeze":
                        site.unfreeze()
                    elif what == "open":
                        ch.open_enclosure()
                    elif what == "close":
                        ch.close_enclosure()
                    elif what == "clear":
                        loop.request_clear_faults()
                    elif what == "share":
                        loop.set_share(abs(x) * 200.0)
                    await trio.sleep(cycles * 0.01)
                nursery.cancel_scope.cancel()
        assert loop.statistics().cycles > 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
