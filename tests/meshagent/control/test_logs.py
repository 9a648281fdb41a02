"""The loop's logs stay readable and bounded: rotation, SIGHUP, resolution, idle volume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import trio

from meshagent.control import journal
from tests.meshagent.control.test_loop import GUARD_S, start_bench


def test_rotation_by_size_keeps_the_configured_number_of_files(tmp_path: Path):
    path = tmp_path / "telemetry.jsonl"
    log = journal.RotatingJsonLines(path, max_bytes=1_000, max_age_s=1e9, keep=3)
    for i in range(200):
        log.write({"i": i, "pad": "x" * 40}, float(i))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["telemetry.jsonl", "telemetry.jsonl.1", "telemetry.jsonl.2", "telemetry.jsonl.3"]
    assert all(p.stat().st_size <= 1_000 for p in tmp_path.iterdir())
    # the newest lines are in the live file, the ones before in .1, .2, .3, none lost in between
    seq = []
    for name in reversed(files[1:]):
        seq += [json.loads(x)["i"] for x in (tmp_path / name).read_text().splitlines()]
    seq += [json.loads(x)["i"] for x in path.read_text().splitlines()]
    assert seq == list(range(seq[0], 200))


def test_rotation_by_age(tmp_path: Path):
    path = tmp_path / "telemetry.jsonl"
    log = journal.RotatingJsonLines(path, max_bytes=10**9, max_age_s=3600.0, keep=2)
    for t in range(0, 4 * 3600, 60):
        log.write({"t": t}, float(t))
    log.close()
    assert log.rotations == 3
    assert json.loads(path.read_text().splitlines()[0])["t"] == 3 * 3600
    assert not (tmp_path / "telemetry.jsonl.3").exists()


async def test_sighup_reopens_the_logs_after_a_logrotate(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery)
            await trio.sleep(0.5)
            os.replace(tmp_path / journal.TELEMETRY_FILE, tmp_path / "moved.jsonl")  # what logrotate does
            await trio.sleep(0.5)
            assert not (tmp_path / journal.TELEMETRY_FILE).exists()  # still writing to the moved file
            os.kill(os.getpid(), signal.SIGHUP)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    assert (tmp_path / journal.TELEMETRY_FILE).read_text().count("\n") >= 4
    assert (tmp_path / "moved.jsonl").read_text().count("\n") >= 9
    assert b.loop.statistics().telemetry_lines >= 14


async def test_values_are_written_to_their_resolution(tmp_path: Path, autojump_clock: Any):
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            b = await start_bench(tmp_path, nursery, control={"inverter_nameplate": "11kW"})
            b.loop.set_share(1_234.567891)
            b.site.set_grid(frequency_hz=59.873)  # a droop response of an arbitrary float
            await trio.sleep(3.0)
            nursery.cancel_scope.cancel()
    lines = [json.loads(x) for x in (tmp_path / journal.TELEMETRY_FILE).read_text().splitlines()]
    for line in lines:
        for key in ("load_w", "setpoint_w", "actual_w", "share_w", "response_w"):
            value = line[key]
            assert value is None or len(repr(value).split(".")[-1]) <= 1, (key, value)
    assert lines[-1]["share_w"] == 1234.6 and lines[-1]["response_w"] != 0


def sizes(state_dir: Path) -> tuple[int, int]:
    errors = state_dir / journal.ERRORS_FILE
    return (sum(p.stat().st_size for p in state_dir.glob("telemetry.jsonl*")),
            errors.stat().st_size if errors.exists() else 0)


async def test_the_log_volume_of_an_idle_day(tmp_path: Path, autojump_clock: Any):
    """An idle minute of the real loop in virtual time, extrapolated to a day: the
    telemetry volume the rotation keeps bounded, and an error log that stays empty."""
    minutes = 1
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await start_bench(tmp_path, nursery)
            await trio.sleep(minutes * 60.0)
            nursery.cancel_scope.cancel()
    telemetry, errors = sizes(tmp_path)
    per_day = (telemetry + errors) * (1440 / minutes)
    print(f"idle day: telemetry {telemetry * 1440 / minutes / 1e6:.1f} MB, errors {errors * 1440 / minutes} B "
          f"({per_day / 1e6:.1f} MB/day; on disk at most 20 MB x 8 files with the defaults)")
    assert errors == 0
    assert 100e6 <= per_day <= 250e6  # ~1 line of ~300 B per 100 ms
