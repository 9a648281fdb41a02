"""The control loop in virtual time against the simulated devices (``hardware.simulated``).

Each test builds one simulated site with one charger, runs the real ``ControlLoop`` on
trio's autojump clock, acts on the physics (load steps, grid frequency, an opened
enclosure, a hot power stage...) and checks what the loop did: the spikes it handed on, the
inverter's power and contactors, the codes in ``errors.jsonl``, the telemetry lines.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hardware.interfaces import ContactorState
from hardware.simulated import (
    SimulatedSite,
    VehicleConfig,
)
from hardware.simulated.charger import UNDER_LOAD_WEAR
from meshagent.control import journal
from meshagent.control.codes import Action, Code
from meshagent.control.detect import Phase, Spike
from meshagent.control.loop import ControlLoop, Devices
from sims.bench.control import GeneratorTrip
from tests.meshagent.control.conftest import section

GUARD_S = 3600  # virtual seconds (trio.fail_after runs on the mock clock)


@attrs.define
class Bench:
    site: SimulatedSite
    loop: ControlLoop
    spikes: list[Spike]
    state_dir: Path
    nursery: trio.Nursery

    @property
    def charger(self) -> Any:
        return self.site.charger(1)

    def codes(self, action: Action | None = None) -> list[str]:
        return [str(e.code) for e in self.loop.events if action is None or e.action is action]

    def error_lines(self) -> list[dict[str, Any]]:
        path = self.state_dir / journal.ERRORS_FILE
        return [json.loads(line) for line in path.read_text().splitlines()]

    async def clear_faults(self) -> None:
        self.loop.request_clear_faults()
        await trio.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], *, step_s: float = 0.01, within_s: float = 600.0) -> float:
    """Poll the physics every ``step_s`` of virtual time; return how long it took."""
    start = trio.current_time()
    for _ in range(round(within_s / step_s) + 1):
        if predicate():
            return trio.current_time() - start
        await trio.sleep(step_s)
    raise AssertionError(f"condition not met within {within_s} s")


def make_devices(site: SimulatedSite) -> Devices:
    return Devices.simulated(site)


async def start_bench(tmp_path: Path, nursery: trio.Nursery, *, vehicle: VehicleConfig | None = None,
                      control: dict[str, Any] | None = None, **site_kw: Any) -> Bench:
    site_kw.setdefault("base_load_w", 400_000.0)
    site_kw.setdefault("frequency_hz", 60.0)
    site = SimulatedSite.with_chargers(trio.current_time, 1, name="site-a",
                                       vehicles=[vehicle or VehicleConfig.of("ford-f150-lightning-er")], **site_kw)
    spikes: list[Spike] = []
    control = {"cycle_budget": "1s", **(control or {})}  # this shared machine's hiccups are not under test
    loop = ControlLoop(section(**control), make_devices(site), node_id="n1", scope_id="site-a",
                       state_dir=tmp_path, on_spike=spikes.append, wall_clock=lambda: 1_764_115_200.0)
    await nursery.start(loop.run)
    return Bench(site, loop, spikes, tmp_path, nursery)


@pytest.fixture
async def bench(tmp_path: Path, autojump_clock: Any) -> AsyncIterator[Bench]:
    """A running loop on a fresh site. Tests that use it also take ``autojump_clock``
    themselves: pytest-trio picks the run's clock from the test's own arguments."""
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery)
            yield b
            nursery.cancel_scope.cancel()


# --- spikes ----------------------------------------------------------------------------------


async def test_a_load_step_is_handed_on_and_the_share_is_applied(bench: Bench, autojump_clock: Any):
    await trio.sleep(1.0)
    bench.site.step_load(120_000)
    t_step = trio.current_time()
    await trio.sleep(0.1)
    start = bench.spikes[0]
    assert start.phase is Phase.START and start.scope == "site" and start.scope_id == "site-a"
    assert start.deficit_w == pytest.approx(20_000)  # 520 kW against the 500 kW limit...
    assert start.at_s - t_step <= 0.03  # three samples: the crossing one + 20 ms
    assert [s.deficit_w for s in bench.spikes if s.phase is Phase.UPDATE] == [pytest.approx(120_000)]  # ...then the rise
    # the allocation (injected here) asks this charger for its share
    bench.loop.set_share(9_000)
    took = await wait_until(lambda: bench.charger.power_w <= -9_000 + 1)
    assert took <= 0.1  # the design's 100 ms to full discharge
    assert bench.loop.last_status.actual_power_w == pytest.approx(-9_000)
    # the spike stays open while covered (its gross load is still over the limit)
    await trio.sleep(2.0)
    assert [s.phase for s in bench.spikes] == [Phase.START, Phase.UPDATE]


async def test_spike_shapes(bench: Bench, autojump_clock: Any):
    site = bench.site
    await trio.sleep(1.0)
    # 1. a 15 ms glitch of +300 kW: nothing
    site.step_load(300_000)
    await trio.sleep(0.015)
    site.step_load(-300_000)
    await trio.sleep(2.0)
    assert bench.spikes == []
    # 2. a ramp of 50 kW/s from 400 kW: crosses the rise threshold (25 kW) ... then the limit
    for _ in range(300):
        site.step_load(500)
        await trio.sleep(0.01)
    assert [s.phase for s in bench.spikes][:1] == [Phase.START]
    assert bench.spikes[0].kind == "rise"
    assert any("limit" in s.kind for s in bench.spikes)
    site.step_load(-150_000)  # back to 400 kW: the spike ends after the clear duration
    await trio.sleep(1.0)
    assert bench.spikes[-1].phase is Phase.END
    # 3. a square pulse of 200 ms over the limit: one more spike, with its own id
    site.step_load(150_000)
    await trio.sleep(0.2)
    site.step_load(-150_000)
    await trio.sleep(1.0)
    ids = sorted({s.spike_id for s in bench.spikes})
    assert ids == ["n1:1", "n1:2"]
    assert bench.loop.statistics().spikes_handed == len(bench.spikes)


async def test_noise_must_not_trigger(tmp_path: Path, autojump_clock: Any):
    rng = random.Random(11)
    noise = {}

    def profile(t: float) -> float:  # 1 % of the limit, new every 10 ms, plus 2-sample glitches
        k = round(t * 100)
        if k not in noise:
            noise[k] = rng.gauss(0, 5_000) + (200_000 if rng.random() < 0.002 else 0.0)
        return noise[k]

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, load_profile=profile, base_load_w=440_000.0)
            await trio.sleep(30.0)
            nursery.cancel_scope.cancel()
    assert b.spikes == []
    assert b.loop.statistics().cycles >= 2_999
    assert b.charger.contactor_cycles == 0  # no needless battery cycle


# --- frequency ---------------------------------------------------------------------------------


async def test_a_generator_trip_starts_discharge_before_59_5_hz(bench: Bench, autojump_clock: Any):
    """The prediction is the response's timing: armed ~0.6 s before the frequency crosses
    59.5 Hz, it brings the droop forward (on the predicted frequency, without the 5 s lag),
    but never past the droop curve's size (IEEE 1547-2018, 5 % on nameplate), and no
    step moves the response more than its ramp (1 pu/s: 0.01 pu per 10 ms cycle)."""
    trip = GeneratorTrip(trip_at_s=0.5)
    t0 = trio.current_time()
    rated = bench.charger.rated_w  # the droop's base: the nameplate, not the Ford's 9.6 kW limit
    responses: list[float] = []

    async def grid() -> None:
        await trio.sleep(0.005)
        while True:
            bench.site.set_grid(frequency_hz=trip.frequency_hz(trio.current_time() - t0))
            await trio.sleep(0.01)
            d = bench.loop.last_decision
            responses.append(d.frequency_response_w if d is not None else 0.0)

    bench.nursery.start_soon(grid)
    crossing = trip.crossing_s(59.5)
    assert crossing is not None
    await trio.sleep(crossing - 0.2)
    pid = bench.loop.logic.pid
    assert pid.armed and pid.armed_at_s - t0 < crossing - 0.4  # 500 ms horizon, less the estimate
    # already on the droop curve at 59.5 Hz (0.155 pu) before the frequency gets there
    assert bench.charger.power_w < -0.12 * rated
    await trio.sleep(10.0)
    assert not bench.loop.logic.latched  # the dip rides through: no trip
    assert max(responses) <= 0.3 * rated  # the old PID gave 1.0 pu; droop at the nadir is 0.2 pu
    assert max(abs(b - a) for a, b in itertools.pairwise(responses)) <= 0.01 * rated + 0.01
    # recovered above the deadband? The governors settle it at ~59.85 Hz, still in droop
    assert bench.loop.last_decision.frequency_response_w > 0


async def test_under_frequency_trip_safe_mode_and_return_to_service(bench: Bench, autojump_clock: Any):
    await trio.sleep(0.5)
    bench.loop.set_share(5_000)
    await trio.sleep(0.5)
    assert bench.charger.power_w == pytest.approx(-5_000)
    bench.site.set_grid(frequency_hz=56.4)
    t_out = trio.current_time()
    await trio.sleep(0.2)
    raised = [e for e in bench.loop.events if e.code is Code.ERR_GRID_SYNC_LOST]
    assert raised and raised[0].action is Action.RAISED and raised[0].figures["stage"] == "UF2"
    assert raised[0].at_s - t_out == pytest.approx(0.16, abs=0.011)
    assert bench.charger.safe_mode
    # 0 W first; the contactors open only at zero power (the inverter's own zero-current opening)
    await trio.sleep(0.1)
    assert bench.charger.power_w == 0
    await trio.sleep(3.0)
    assert bench.charger.contactor is ContactorState.OPEN
    assert bench.charger.contactor_wear == 1  # opened without load: no extra wear
    # clear-faults alone is not enough: the grid must be back in 59.5-60.1 Hz for 300 s
    bench.site.set_grid(frequency_hz=60.0)
    t_back = trio.current_time()
    await bench.clear_faults()
    refused = [e for e in bench.loop.events if e.action is Action.CLEAR_REFUSED]
    assert [str(e.code) for e in refused] == ["ERR_GRID_SYNC_LOST"]
    assert "of 300 s" in refused[0].figures["cause"] and "return-to-service" in refused[0].figures["needs"]
    answer = bench.loop.last_clear
    assert answer is not None and not answer["ok"]
    assert [(c["code"], c["cleared"]) for c in answer["codes"]] == [("ERR_GRID_SYNC_LOST", False)]
    # a refused clear is not remembered: past the 300 s the fault is still latched ...
    await trio.sleep(301.0 - (trio.current_time() - t_back))
    assert Code.ERR_GRID_SYNC_LOST in bench.loop.logic.latched and bench.charger.safe_mode
    assert bench.codes(Action.CLEARED) == []
    # ... until the operator clears again, the cause gone
    await bench.clear_faults()
    assert Code.ERR_GRID_SYNC_LOST not in bench.loop.logic.latched
    assert bench.codes(Action.CLEARED) == ["ERR_GRID_SYNC_LOST"]
    await trio.sleep(0.1)
    assert not bench.charger.safe_mode
    # back in service: the contactor guard's dwell has long passed, the share is applied again
    await trio.sleep(0.2)
    assert bench.charger.power_w == pytest.approx(-5_000)
    await bench.clear_faults()  # nothing latched: no new line
    lines = bench.error_lines()
    assert [(x["code"], x["action"]) for x in lines] == [
        ("ERR_GRID_SYNC_LOST", "raised"), ("ERR_GRID_SYNC_LOST", "clear_refused"),
        ("ERR_GRID_SYNC_LOST", "cleared")]


async def test_over_frequency_slow_window(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, control={"of1_time": "5s"})
            b.site.set_grid(frequency_hz=61.5)
            await trio.sleep(4.9)
            assert not b.loop.logic.latched
            # over-frequency droop: less discharge / more charging
            assert b.loop.last_decision.frequency_response_w < 0
            await trio.sleep(0.2)
            assert b.codes() == ["ERR_GRID_SYNC_LOST"] and b.loop.events[0].figures["stage"] == "OF1"
            nursery.cancel_scope.cancel()


# --- interlocks ----------------------------------------------------------------------------------


async def test_battery_lower_limit_leaves_the_offer_and_rejoins(tmp_path: Path, autojump_clock: Any):
    car = VehicleConfig.of("mitsubishi-outlander-phev", present_soc_pct=20.1, minimum_soc_pct=20.0)
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, vehicle=car)
            b.loop.set_share(7_400)
            await trio.sleep(0.5)
            assert b.loop.last_decision.offer_available
            # 0.1 % of 13.8 kWh at 7.4 kW: about 7 s to the minimum SoC
            await wait_until(lambda: Code.ERR_BATTERY_LOWER_LIMIT in b.codes(), step_s=0.1, within_s=20)
            assert not b.loop.last_decision.offer_available
            await trio.sleep(0.2)
            assert b.charger.power_w == 0 and b.loop.last_decision.setpoint_w == 0
            assert b.charger.vehicle.soc_pct >= 20.0
            # charging brings it back above minimum + 1 % (hysteresis), then it rejoins the offer
            b.loop.set_share(0)
            b.loop.base_setpoint_w = 7_400
            # 1.1 % of 13.8 kWh at 7.4 kW: about 74 s
            await wait_until(lambda: b.codes(Action.CLEARED) == ["ERR_BATTERY_LOWER_LIMIT"], step_s=0.1,
                             within_s=120)
            assert b.charger.vehicle.soc_pct > 21.0
            assert b.loop.last_decision.offer_available
            nursery.cancel_scope.cancel()


async def test_thermal_derates_stops_and_clears(bench: Bench, autojump_clock: Any):
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    assert bench.charger.power_w == pytest.approx(-9_000)
    bench.charger.inject(temperature_c=45.0)  # half way from 40 to 50 C: half the rating
    await trio.sleep(0.5)
    assert bench.loop.last_decision.binding == "thermal"
    assert bench.charger.power_w == pytest.approx(-0.5 * 9_600)
    bench.charger.inject(temperature_c=50.5)
    await trio.sleep(0.5)
    assert bench.charger.power_w == 0
    bench.charger.inject(temperature_c=-26.0)  # the low limit stops it too
    await trio.sleep(0.5)
    assert bench.charger.power_w == 0
    bench.charger.inject(temperature_c=39.0)  # inside the derating band's hysteresis: still ERR_THERMAL
    await trio.sleep(0.5)
    assert "ERR_THERMAL" in bench.loop.last_decision.faults
    bench.charger.inject()
    await trio.sleep(0.5)
    assert bench.charger.power_w == pytest.approx(-9_000)
    levels = [(e.action.value, e.figures["level"]) for e in bench.loop.events if e.code is Code.ERR_THERMAL]
    assert levels == [("raised", "derating"), ("raised", "stop"), ("raised", "derating"), ("cleared", "normal")]


async def test_tamper_latches_until_closed_and_cleared(bench: Bench, autojump_clock: Any):
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    bench.charger.open_enclosure()
    assert await wait_until(lambda: bench.charger.power_w == 0) <= 0.1  # 0 W within the inverter's ramp
    assert bench.codes() == ["ERR_TAMPER"] and bench.charger.safe_mode
    await bench.clear_faults()  # enclosure still open: the inverter refuses, we stay latched
    assert Code.ERR_TAMPER in bench.loop.logic.latched
    assert "enclosure is open" in bench.loop.events[-1].figures["inverter_refused"]
    bench.charger.close_enclosure()
    await trio.sleep(1.0)
    assert Code.ERR_TAMPER in bench.loop.logic.latched  # closing the lid is not enough
    await bench.clear_faults()
    await trio.sleep(0.05)
    assert Code.ERR_TAMPER not in bench.loop.logic.latched
    await trio.sleep(6.0)  # the contactor guard's 5 s dwell since they opened, then back to work
    assert bench.charger.power_w == pytest.approx(-9_000)


async def test_tamper_under_load_opens_the_contactors_within_one_cycle(bench: Bench, autojump_clock: Any):
    ch = bench.charger
    bench.loop.set_share(9_000)
    await trio.sleep(6.0)  # past the contactor guard's dwell: the emergency must not need it anyway
    assert ch.power_w == pytest.approx(-9_000) and ch.contactor is ContactorState.CLOSED
    wear = ch.contactor_wear
    await trio.sleep(0.001)  # just after a cycle: the next one is 9 ms away
    t_open = trio.current_time()
    ch.open_enclosure()
    took = await wait_until(lambda: ch.contactor is ContactorState.OPEN, step_s=0.001, within_s=1.0)
    assert took <= 0.010  # one control cycle, not the 80 ms ramp to 0 W
    assert ch.broken_power_w == pytest.approx(-9_000)  # opened under load...
    assert ch.contactor_wear == wear + UNDER_LOAD_WEAR  # ...at the price of heavy wear
    assert ch.contactors_held_open and ch.safe_mode and ch.power_w == 0
    raised = [e for e in bench.loop.events if e.code is Code.ERR_TAMPER]
    assert [e.action for e in raised] == [Action.RAISED] and raised[0].at_s - t_open <= 0.010
    assert raised[0].figures["under_load"] is True
    assert raised[0].figures["broken_power_w"] == pytest.approx(-9_000)
    line = bench.error_lines()[0]
    assert line["code"] == "ERR_TAMPER" and line["contactor"] == "open" and line["under_load"] is True
    stats = bench.loop.statistics()
    assert (stats.emergency_openings, stats.contactor_commands) == (1, 1)
    # latched: they stay open however long the share is asked for
    await trio.sleep(10.0)
    assert ch.contactor is ContactorState.OPEN and ch.contactor_cycles == 1
    # shut and cleared: the hold is released and the share applied again, one more closing
    ch.close_enclosure()
    await bench.clear_faults()
    await trio.sleep(0.1)
    assert Code.ERR_TAMPER not in bench.loop.logic.latched
    assert ch.power_w == pytest.approx(-9_000) and not ch.contactors_held_open
    assert ch.contactor_cycles == 2 and ch.contactor_wear == wear + UNDER_LOAD_WEAR + 1
    assert bench.loop.statistics().contactor_commands == 2  # the open, then the release


async def test_safe_mode_opens_the_contactors_at_zero_current_after_the_dwell(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, control={"rts_delay": "1s"})
            ch = b.charger
            ch.contactor_open_delay_s = 600.0  # the inverter's own idle opening does not come into it
            b.loop.set_share(5_000)
            await trio.sleep(0.05)
            assert ch.contactor is ContactorState.CLOSED
            t_closed = trio.current_time()
            await trio.sleep(0.95)
            b.site.set_grid(frequency_hz=56.4)  # UF2: safe mode after 0.16 s
            await trio.sleep(0.3)
            assert Code.ERR_GRID_SYNC_LOST in b.loop.logic.latched and ch.safe_mode
            assert ch.power_w == 0  # 0 W first...
            # ...but the contactors stay closed until the guard's 5 s dwell since they closed
            await trio.sleep(t_closed + 4.9 - trio.current_time())
            assert ch.contactor is ContactorState.CLOSED
            await trio.sleep(0.2)
            assert ch.contactor is ContactorState.OPEN and ch.contactors_held_open  # by command
            assert ch.broken_power_w == 0 and ch.contactor_wear == 1  # at zero current: no extra wear
            assert b.loop.statistics().emergency_openings == 0
            # back to normal frequency, cleared: released after the 1 s return to service, then
            # the hold is released once the dwell since the opening has passed
            b.site.set_grid(frequency_hz=60.0)
            await trio.sleep(1.05)  # the 1 s return to service, then clear-faults
            await b.clear_faults()
            await trio.sleep(0.13)
            assert not b.loop.logic.latched and not ch.safe_mode
            assert ch.contactor is ContactorState.OPEN  # the dwell since they opened is not over
            await wait_until(lambda: ch.power_w < -4_500, within_s=10.0)  # the share (and droop)
            assert trio.current_time() >= t_closed + 9.9  # opened ~5 s after closing, closed 5 s after that
            assert not ch.contactors_held_open and ch.contactor_cycles == 2
            assert b.loop.statistics().contactor_commands == 2
            assert b.loop.statistics().device_faults == 0
            nursery.cancel_scope.cancel()


async def test_welded_contactor_latches_until_replaced(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, control={"contactor_min_dwell": "0s"})
            b.charger.contactor_cycle_budget = 3
            # spikes of 1 s every 4 s: the inverter opens its contactors 2 s after each one
            for _ in range(4):
                b.loop.set_share(5_000)
                await trio.sleep(1.0)
                b.loop.set_share(0)
                await trio.sleep(3.0)
            assert b.charger.contactor is ContactorState.WELDED
            assert "ERR_CONTACTOR_WELD" in b.codes(Action.RAISED)
            await b.clear_faults()
            assert Code.ERR_CONTACTOR_WELD in b.loop.logic.latched
            assert "welded" in b.loop.events[-1].figures["inverter_refused"]
            assert b.loop.statistics().device_faults == 0  # no open command sent to welded contacts
            b.charger.replace_contactor()
            await b.clear_faults()
            await trio.sleep(0.05)
            assert Code.ERR_CONTACTOR_WELD not in b.loop.logic.latched
            nursery.cancel_scope.cancel()


async def test_contactor_guard_caps_cycles_per_hour(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, control={"contactor_max_cycles_per_hour": 3})
            for _ in range(6):  # a share every 10 s, each long enough for the contactors to open
                b.loop.set_share(5_000)
                await trio.sleep(1.0)
                b.loop.set_share(0)
                await trio.sleep(9.0)
            assert b.charger.contactor_cycles == 3
            assert b.loop.last_decision.setpoint_w == 0
            nursery.cancel_scope.cancel()


async def test_sensor_loss_latches_and_clears(bench: Bench, autojump_clock: Any):
    bench.loop.set_share(9_000)
    await trio.sleep(0.5)
    bench.site.freeze()  # the meter still answers, but its sample stops advancing
    took = await wait_until(lambda: Code.ERR_SENSOR_LOST in bench.loop.logic.latched)
    # caught within sensor_timeout (100 ms) of the freeze: at 80 ms of silence, on the 10 ms grid
    assert 0.07 - 1e-6 <= took <= 0.1
    await trio.sleep(0.1)
    assert bench.charger.power_w == 0
    assert not bench.charger.safe_mode  # 0 W, but no safe mode for a lost meter
    bench.site.unfreeze()
    bench.site.inject(frequency_hz=float("nan"))  # answers, but with garbage: still lost
    await bench.clear_faults()
    await trio.sleep(0.5)
    assert Code.ERR_SENSOR_LOST in bench.loop.logic.latched
    assert bench.codes(Action.CLEAR_REFUSED) == ["ERR_SENSOR_LOST"]
    bench.site.inject()
    await trio.sleep(0.05)
    assert Code.ERR_SENSOR_LOST in bench.loop.logic.latched  # the refused clear is not remembered
    await bench.clear_faults()
    assert Code.ERR_SENSOR_LOST not in bench.loop.logic.latched
    await trio.sleep(0.2)
    assert bench.charger.power_w == pytest.approx(-9_000)
    assert bench.loop.statistics().meter_faults > 0


class SlowReads:
    """A device whose reads take ``delay_s`` of virtual time (a loaded Modbus line)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.hung = False  # a meter that stops answering

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read(self) -> Any:
        while self.hung:  # noqa: ASYNC110 (no reply until it answers again)
            await trio.sleep(0.001)
        await trio.sleep(self.delay_s)
        return await self.inner.read()

    async def status(self) -> Any:
        await trio.sleep(self.delay_s)
        return await self.inner.status()


async def test_slow_device_reads_never_delay_the_sensor_loss(tmp_path: Path, autojump_clock: Any):
    """The meter has its own task: with every device read taking 12 ms (a slow cycle 48 ms,
    periods missed), a frozen meter still latches ERR_SENSOR_LOST at 80 ms of silence and
    0 W is written at once, outside the cycle. Read in the cycle, it came up to 50 ms late."""
    site = SimulatedSite.with_chargers(trio.current_time, 1, name="site-a", base_load_w=400_000.0,
                                       frequency_hz=60.0, vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
    d = make_devices(site)
    devices = Devices(d.meter, SlowReads(d.inverter, 0.012), SlowReads(d.vehicle, 0.012),
                      SlowReads(d.thermal, 0.012), SlowReads(d.tamper, 0.012))
    loop = ControlLoop(section(cycle_budget="1s"), devices, node_id="n1", scope_id="site-a", state_dir=tmp_path)
    rng = random.Random(5)
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.set_share(5_000)
            for _ in range(5):
                await wait_until(lambda: site.charger(1).power_w <= -4_999, step_s=0.001, within_s=5)
                await trio.sleep(rng.uniform(0.0, 0.01))
                site.freeze()
                frozen_at = trio.current_time()
                await wait_until(lambda t=frozen_at: (loop.actuator.zeroed_at_s or 0.0) > t, step_s=0.001, within_s=1)
                raised = loop.logic.latched[Code.ERR_SENSOR_LOST].raised_at_s - frozen_at
                assert raised == pytest.approx(0.080, abs=1e-4)  # the frozen sample was taken at the freeze (+ 1000 ppm drift)
                assert loop.actuator.zeroed_at_s - frozen_at == pytest.approx(0.080, abs=1e-4)
                site.unfreeze()
                await trio.sleep(0.05)
                assert (await loop.clear_faults())["ok"]
            nursery.cancel_scope.cancel()
    stats = loop.statistics()
    assert stats.missed_periods > 100 and stats.meter_missed_periods == 0
    assert stats.sensor_zero_writes == 5


async def test_a_meter_that_stops_answering_is_caught_at_the_deadline(tmp_path: Path, autojump_clock: Any):
    """No reply at all (the read hangs, its link's timeout is 300 ms): the read in flight is
    given up at the sensor deadline, 80 ms after the last sample, and the power goes to 0."""
    site = SimulatedSite.with_chargers(trio.current_time, 1, name="site-a", base_load_w=400_000.0,
                                       frequency_hz=60.0, vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
    d = make_devices(site)
    meter = SlowReads(d.meter, 0.0)
    loop = ControlLoop(section(cycle_budget="1s"), attrs.evolve(d, meter=meter), node_id="n1", scope_id="site-a",
                       state_dir=tmp_path)
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.set_share(5_000)
            await wait_until(lambda: site.charger(1).power_w <= -4_999, within_s=5)
            await trio.sleep(0.003)
            meter.hung = True
            hung_at = trio.current_time()
            await wait_until(lambda: Code.ERR_SENSOR_LOST in loop.logic.latched, step_s=0.001, within_s=1)
            raised = loop.logic.latched[Code.ERR_SENSOR_LOST].raised_at_s - hung_at
            assert 0.070 - 1e-6 <= raised <= 0.080 + 1e-6  # 80 ms after the last sample, read before the hang
            await trio.sleep(0.1)
            assert site.charger(1).power_w == 0
            assert loop.meter.statistics().cut_off + loop.meter.statistics().deadline_raises >= 1
            meter.hung = False
            await trio.sleep(0.05)
            assert (await loop.clear_faults())["ok"]
            await wait_until(lambda: site.charger(1).power_w <= -4_999, within_s=5)
            nursery.cancel_scope.cancel()


async def test_cycle_over_budget_is_logged_with_figures(tmp_path: Path, autojump_clock: Any):
    fake = [0.0]
    slow = {"on": False}

    class SlowMeter:
        def __init__(self, meter: Any) -> None:
            self.meter = meter

        async def read(self) -> Any:
            fake[0] += 0.007 if slow["on"] else 0.0001  # "real" time this read took
            return await self.meter.read()

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            site = SimulatedSite.with_chargers(trio.current_time, 1, name="site-a", frequency_hz=60.0,
                                               vehicles=[VehicleConfig.of("nissan-leaf-40")])
            devices = attrs.evolve(make_devices(site), meter=SlowMeter(make_devices(site).meter))
            loop = ControlLoop(section(), devices, state_dir=tmp_path, perf_clock=lambda: fake[0])
            await nursery.start(loop.run)
            await trio.sleep(1.0)
            assert not loop.events
            slow["on"] = True
            await trio.sleep(70.0)
            slow["on"] = False
            await trio.sleep(55.0)
            nursery.cancel_scope.cancel()
    over = [e for e in loop.events if e.code is Code.LATENCY_OVER_BUDGET]
    # the first occurrence, then one count per minute while it repeats (the last one partial)
    assert len(over) == 3
    assert over[0].figures["elapsed_ms"] == pytest.approx(7.0, abs=0.2) and over[0].figures["budget_ms"] == 5
    counts = [e.figures["repeated"] for e in over[1:]]
    assert counts[0] == pytest.approx(5999, abs=2) and counts[1] == pytest.approx(1000, abs=2)
    assert over[1].figures["max_elapsed_ms"] == pytest.approx(7.0, abs=0.2)
    assert [round(e.at_s - over[0].at_s) for e in over] == [0, 60, 120]
    assert 7_000 <= loop.statistics().over_budget <= 7_001  # every cycle of the 70 s (both ends)


# --- logs and persistence ---------------------------------------------------------------------


async def test_telemetry_lines_every_100_ms(bench: Bench, autojump_clock: Any):
    bench.loop.set_share(3_000)
    await trio.sleep(1.0)
    lines = [json.loads(x) for x in (bench.state_dir / journal.TELEMETRY_FILE).read_text().splitlines()]
    assert len(lines) == 10
    assert [round(x["t_s"] - lines[0]["t_s"], 3) for x in lines] == [round(0.1 * i, 3) for i in range(10)]
    last = lines[-1]
    for key in ("load_w", "frequency_hz", "setpoint_w", "soc_pct", "share_w", "faults"):
        assert key in last
    assert last["setpoint_w"] == -3_000 and last["share_w"] == 3_000 and last["frequency_hz"] == 60.0
    assert last["load_w"] == pytest.approx(400_000 - 3_000) and last["faults"] == []


async def test_latched_faults_survive_a_restart_and_the_clear_file(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery)
            b.charger.open_enclosure()
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert json.loads((tmp_path / journal.FAULTS_FILE).read_text()) == {"latched": ["ERR_TAMPER"]}
        async with trio.open_nursery() as nursery:
            b2 = await start_bench(tmp_path, nursery)  # a new site: enclosure shut, nothing latched there
            await trio.sleep(0.1)
            assert Code.ERR_TAMPER in b2.loop.logic.latched and b2.charger.safe_mode
            assert b2.loop.events[0].figures == {"restored": True}
            journal.request_clear(tmp_path, wall_s=0.0)  # what `meshagent clear-faults` leaves
            journal.request_clear(tmp_path, wall_s=1.0)  # twice: still one request
            await trio.sleep(0.2)
            assert not (tmp_path / journal.CLEAR_REQUEST_FILE).exists()
            assert not b2.loop.logic.latched
            assert b2.codes(Action.CLEARED) == ["ERR_TAMPER"]
            nursery.cancel_scope.cancel()
    assert json.loads((tmp_path / journal.FAULTS_FILE).read_text()) == {"latched": []}


def test_clear_faults_cli_with_no_agent_running_leaves_a_request_and_says_so(tmp_path):
    """`meshagent clear-faults --config` through the real console script with no agent
    running: one line, nonzero exit, and the request waits for the next start."""
    import subprocess
    import sys
    from pathlib import Path

    from meshagent.control import journal

    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nid = "c1"\nstate_dir = "state"\n')
    (tmp_path / "state").mkdir()
    journal.save_latched(tmp_path / "state", ["ERR_TAMPER"])
    script = Path(sys.executable).with_name("meshagent")
    r = subprocess.run([str(script), "clear-faults", "--config", str(cfg), "--wait", "0.2"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no running agent answered" in r.stderr and "ERR_TAMPER" in r.stderr
    assert journal.take_clear_request(tmp_path / "state") is not None
    assert journal.take_clear_request(tmp_path / "state") is None


async def test_the_load_coming_back_as_the_droop_lets_go_is_not_a_spike(tmp_path: Path, autojump_clock: Any):
    """A dip to 59.3 Hz: every charger's IEEE 1547 droop discharges; when the frequency is
    back they let go and the meter sees the load rise. This charger counts its own release
    (it knows its discharge), not its neighbours': their release (here 3 kW over the first
    second, as a load ramp) looked like a spike to the rise criterion, and the mesh covered
    the droop's release for up to rise_hold. Now the rise criterion waits while this charger
    answers the grid and for one spike window after; a real rise after that is one."""
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, base_load_w=60_000.0,
                                  control={"PEAK_LOAD_LIMIT": "100kW", "SPIKE_SENSITIVITY": "1%"})
            await trio.sleep(2.0)
            b.site.set_grid(frequency_hz=59.3)
            b.site.step_load(-6_000)  # the neighbours' droop
            await trio.sleep(8.0)
            assert b.charger.power_w < -2_000  # this charger's droop answers the dip
            b.site.set_grid(frequency_hz=60.0)
            for _ in range(10):  # the neighbours let go: 3 kW in the first second, the rest after
                b.site.step_load(300)
                await trio.sleep(0.1)
            for _ in range(30):
                b.site.step_load(100)
                await trio.sleep(0.5)
            await trio.sleep(10.0)
            assert b.charger.power_w > -150  # let go
            assert b.spikes == []
            b.site.step_load(3_000)  # a real rise of 3 kW, later
            await trio.sleep(0.5)
            assert [s.phase for s in b.spikes] == [Phase.START] and b.spikes[0].kind == "rise"
            nursery.cancel_scope.cancel()
