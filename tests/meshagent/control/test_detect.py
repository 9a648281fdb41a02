"""Spike detection from load traces: shapes that must trigger, noise and glitches that must not."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import pytest

from meshagent.control.detect import DetectorSettings, Phase, Spike, SpikeDetector

DT = 0.01
LIMIT = 500_000.0


def run(trace: Callable[[float], float], seconds: float, settings: DetectorSettings | None = None,
        covered: Callable[[float], float] = lambda t: 0.0) -> list[Spike]:
    det = SpikeDetector(settings or DetectorSettings(), scope="site", scope_id="site-a", node_id="n1")
    out: list[Spike] = []
    for i in range(round(seconds / DT) + 1):
        t = round(i * DT, 2)
        out += det.step(trace(t), t, covered(t))
    return out


def starts(spikes: list[Spike]) -> list[Spike]:
    return [s for s in spikes if s.phase is Phase.START]


def test_step_over_the_limit_yields_deficit_scope_and_id():
    spikes = run(lambda t: 400_000 if t < 1.0 else 560_000, 3.0)
    start, update = spikes
    assert start.phase is Phase.START and start.kind == "limit"
    assert start.first_sample_s == 1.0 and start.at_s == 1.02  # 20 ms minimum duration
    assert start.deficit_w == 60_000  # over the limit
    assert (start.scope, start.scope_id, start.spike_id) == ("site", "site-a", "n1:1")
    # the running median sees the jump 20 ms later: then the whole rise is the deficit
    assert update.phase is Phase.UPDATE and update.kind == "limit+rise" and update.at_s == 1.04
    assert update.deficit_w == 160_000 and update.spike_id == "n1:1"


@pytest.mark.parametrize(
    ("name", "trace", "deficit_w", "kind"),
    [
        # a slow ramp that crosses the limit: only the limit criterion (no 25 kW jump in 1 s)
        ("slow ramp", lambda t: 480_000 + 2_000 * t, None, "limit"),
        # a fast rise that stays under the limit: the rise criterion, deficit = the rise
        ("fast rise under limit", lambda t: 300_000 if t < 1 else 340_000, 40_000, "rise"),
        # a triangle pulse over the limit, 200 ms wide
        ("triangle", lambda t: 450_000 + max(0.0, 100_000 - abs(t - 2.0) * 1_000_000), None, "rise"),
    ],
)
def test_spike_shapes_trigger(name, trace, deficit_w, kind):
    spikes = run(trace, 15.0)
    assert len(starts(spikes)) == 1, name
    start = starts(spikes)[0]
    assert start.kind == kind
    if name == "triangle":  # the rise shows first, then the limit joins it
        assert any(s.kind == "limit+rise" for s in spikes)
    if deficit_w is not None:
        assert start.deficit_w == pytest.approx(deficit_w)
    assert start.deficit_w > 0


def test_a_slow_ramp_starts_when_the_limit_is_crossed():
    (start,) = starts(run(lambda t: 480_000 + 2_000 * t, 15.0))
    assert start.first_sample_s == pytest.approx(10.01)  # 480 kW + 2 kW/s passes 500 kW after 10 s
    assert start.deficit_w == pytest.approx(60.0, abs=1)  # 20 ms later: 60 W over the limit


def test_noise_does_not_trigger():
    rng = random.Random(7)
    samples = {round(i * DT, 2): 420_000 + rng.gauss(0, 5_000) for i in range(3001)}  # 1 % of the limit
    assert run(lambda t: samples[t], 30.0) == []


def test_noise_just_below_the_limit_does_not_trigger():
    rng = random.Random(8)
    samples = {round(i * DT, 2): 490_000 + rng.uniform(-2_000, 2_000) for i in range(3001)}
    assert run(lambda t: samples[t], 30.0) == []


@pytest.mark.parametrize("width_s", [0.01, 0.02])
def test_glitches_shorter_than_the_minimum_duration_do_not_trigger(width_s):
    spikes = run(lambda t: 700_000 if 1.0 <= t < 1.0 + width_s - 1e-9 else 400_000, 3.0)
    assert spikes == []


def test_oscillation_inside_the_hysteresis_band_is_one_spike():
    # over the limit for 1 s, then wobbling between 495 and 505 kW: still one spike, no flapping
    def trace(t: float) -> float:
        if t < 1.0:
            return 400_000
        if t < 2.0:
            return 530_000
        return 500_000 + (5_000 if int(t * 10) % 2 else -5_000)

    spikes = run(trace, 20.0)
    assert len(starts(spikes)) == 1
    assert not [s for s in spikes if s.phase is Phase.END]


def test_the_end_needs_the_band_and_the_clear_duration():
    trace = lambda t: 530_000 if 1.0 <= t < 3.0 else 480_000  # noqa: E731 (480 kW < 500 - 10 kW band)
    spikes = run(trace, 6.0, DetectorSettings(sensitivity=0.5))  # limit criterion alone
    (end,) = [s for s in spikes if s.phase is Phase.END]
    assert end.at_s == pytest.approx(3.5)  # 500 ms below the band
    assert end.deficit_w == 0 and end.spike_id == "n1:1"


def test_updates_follow_real_changes_only():
    def trace(t: float) -> float:
        if t < 1.0:
            return 400_000
        return 520_000 if t < 2.0 else 560_000

    spikes = run(trace, 3.0, DetectorSettings(sensitivity=0.5))
    assert [s.phase for s in spikes] == [Phase.START, Phase.UPDATE]
    assert spikes[1].deficit_w == 60_000


def test_cover_from_the_mesh_does_not_end_the_spike():
    # the meter sees the net load: once the mesh covers the excess it reads the limit
    def net(t: float) -> float:
        return 560_000 - (60_000 if t >= 1.2 else 0)

    spikes = run(lambda t: 400_000 if t < 1.0 else net(t), 5.0, DetectorSettings(sensitivity=0.5),
                 covered=lambda t: 60_000 if t >= 1.2 else 0)
    assert [s.phase for s in spikes] == [Phase.START]
    assert spikes[0].deficit_w == 60_000


def test_a_rise_is_covered_for_rise_hold_then_the_baseline_moves():
    spikes = run(lambda t: 300_000 if t < 1 else 340_000, 40.0, DetectorSettings(rise_hold_s=30.0))
    assert [s.phase for s in spikes] == [Phase.START, Phase.END]
    assert spikes[0].at_s == pytest.approx(1.04)  # the median's 20 ms, then the minimum 20 ms
    assert spikes[1].at_s == pytest.approx(1.04 + 30.0)


def test_a_cover_the_meter_does_not_show_yet_is_not_an_update():
    """The mesh's ACKs count 60 kW of cover at 1.2 s; the meter shows it 150 ms later (the
    members' cycle and ramp). Counted twice meanwhile, the gross load would seem 60 kW higher:
    without the settle time that is an update and a second plan for a load that never grew."""
    def net(t: float) -> float:
        return 560_000 - (60_000 if t >= 1.35 else 0)

    def cover(t: float) -> float:
        return 60_000 if t >= 1.2 else 0

    settings = DetectorSettings(sensitivity=0.5)  # the limit criterion alone
    spikes = run(net, 3.0, settings, covered=cover)
    assert [s.phase for s in spikes] == [Phase.START]
    assert spikes[0].deficit_w == 60_000
    unsettled = run(net, 3.0, attrs.evolve(settings, update_settle_s=0.0), covered=cover)
    assert [s.phase for s in unsettled] == [Phase.START, Phase.UPDATE, Phase.UPDATE]  # 120 kW, then back


def test_a_real_growth_is_handed_on_once_the_cover_has_settled():
    def net(t: float) -> float:
        load = 560_000 if t < 1.3 else 600_000  # the load grows by 40 kW at 1.3 s
        return load - (60_000 if t >= 1.35 else 0)

    spikes = run(net, 3.0, DetectorSettings(sensitivity=0.5), covered=lambda t: 60_000 if t >= 1.2 else 0)
    start, update = spikes
    assert start.deficit_w == 60_000
    assert update.phase is Phase.UPDATE and update.deficit_w == 100_000
    assert update.at_s == pytest.approx(1.4)  # held until 200 ms after the cover moved


def test_a_disarmed_rise_criterion_waits_and_the_limit_still_holds():
    det = SpikeDetector(DetectorSettings(), scope="site", scope_id="site-a", node_id="n1")
    out: list[Spike] = []
    for i in range(301):
        t = round(i * DT, 2)
        load = 300_000 if t < 1.0 else (340_000 if t < 2.0 else 560_000)
        out += det.step(load, t, rise_armed=False)  # a 40 kW rise under the limit, then over it
    assert [(s.phase, s.kind) for s in out] == [(Phase.START, "limit")]
    assert out[0].at_s == pytest.approx(2.02)


class _BruteForceWindow(SpikeDetector):
    """The detector with the rise criterion's window minimum taken by rescanning the window."""

    def _window_min(self, now_s: float) -> float | None:
        q = self._smooth
        while q and now_s - q[0][0] > self.settings.window_s + 1e-9:
            q.popleft()
        return min((w for _, w in q), default=None)

    def _add_smoothed(self, now_s: float, smooth_w: float) -> None:
        self._smooth.append((now_s, smooth_w))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_running_window_minimum_decides_as_a_rescan_of_the_window(seed):
    # random walks with steps, dips and irregular sample times: every event must be the same
    rng = random.Random(seed)
    settings = DetectorSettings(window_s=0.3, rise_hold_s=1.5)
    fast = SpikeDetector(settings, node_id="n1")
    slow = _BruteForceWindow(settings, node_id="n1")
    load, t, events = 420_000.0, 0.0, 0
    for _ in range(3000):
        t = round(t + rng.choice((0.005, 0.01, 0.01, 0.02)), 3)
        load += rng.gauss(0, 4_000) + rng.choice((0.0,) * 40 + (60_000.0, -60_000.0))
        load = min(max(load, 300_000.0), 620_000.0)
        covered = rng.choice((0.0, 0.0, 10_000.0))
        got = fast.step(load, t, covered)
        assert got == slow.step(load, t, covered)
        assert fast._window_min(t) == slow._window_min(t)
        events += len(got)
    assert events > 10  # the walk did make spikes
