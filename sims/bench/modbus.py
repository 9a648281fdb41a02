"""``meshagent bench modbus``: meter read latency over Modbus TCP and RTU, setpoint latency.

Method: one simulated site (a meter unit and a charger unit) behind a real pymodbus server
in this process (its own thread and asyncio loop), TCP on 127.0.0.1 and RTU on a pty pair
(``PtyLine``, no baud-rate pacing: a pty moves bytes at memory speed, so the RTU figure is
the software cost; ``rtu_wire_ms_115200`` adds what the same frames take on a real
115200 baud line). Each meter read is the production hot path: ``ModbusSiteMeter.read()``,
one function-3 request of 36 registers, decoded and range-checked. Timed with
``perf_counter`` around each call, sequentially; p50/p99 over all calls.

Also measured: the same reads through pymodbus' sync client in a worker thread
(``ThreadedSyncLink``, the alternative the driver did not choose: ``tcp_thread_read_*``);
``setpoint_applied_ms``, from calling ``set_power`` until ``status()`` reports the new
setpoint in force (write + read back, over TCP), and ``setpoint_settled_ms``, until the
power stage has ramped there (includes the simulated 80 ms full-swing ramp); and a 10 ms
meter poll held for a few seconds over TCP: late polls and the worst read.
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

from meshagent.errors import MeshagentError
from protocol.stats import percentile
from sims.bench import BenchResult, machine

POLL_PERIOD_S = 0.010
SETTLE_TIMEOUT_S = 2.0  # the simulated ramp takes 80 ms full swing: 25x headroom
WATTS_TOLERANCE = 1.0  # "there" = within 1 W (the registers carry watts; never compare floats exactly)


async def _until(what: str, read, target: float) -> None:  # type: ignore[no-untyped-def]
    """Poll ``read()`` until it is within ``WATTS_TOLERANCE`` of ``target``; bounded."""
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    while True:
        value = await read()
        if math.isclose(value, target, abs_tol=WATTS_TOLERANCE):
            return
        if time.perf_counter() > deadline:
            raise MeshagentError(
                f"bench modbus: {what} still {value} W after {SETTLE_TIMEOUT_S} s (wanted {target} W)"
            )


async def _field(charger, name: str) -> float:  # type: ignore[no-untyped-def]
    return float(getattr(await charger.inverter.status(), name))


async def _reads(meter, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await meter.read()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def _main(quick: bool) -> dict[str, Any]:
    from hardware.connect import open_charger, open_device
    from hardware.interfaces import DeviceKind, parse_device_url
    from hardware.modbus.link import ThreadedSyncLink
    from hardware.simulated import SimulatedSite, VehicleConfig
    from hardware.simulated.serve import PtyLine, SimServer, site_units

    n = 300 if quick else 3000
    site = SimulatedSite.with_chargers(time.monotonic, 1, vehicles=[VehicleConfig.of("ford-f150-lightning-er")])
    units = site_units(site)
    data: dict[str, Any] = {}
    line = PtyLine().open()
    tcp = SimServer(units)
    rtu = SimServer(units, kind="rtu", serial_path=line.server_path)
    try:
        await tcp.start()
        await rtu.start()
        clock: dict[str, Any] = {"clock": time.monotonic}
        meter = open_device(tcp.url(1), DeviceKind.METER, **clock)
        await _reads(meter, 20)  # connect, discover, warm up
        tcp_ms = await _reads(meter, n)
        rtu_meter = open_device(f"modbus+rtu://{line.client_path}?baud=115200&unit=1", DeviceKind.METER, **clock)
        await _reads(rtu_meter, 20)
        rtu_ms = await _reads(rtu_meter, n)
        await rtu_meter.aclose()
        thread_link = ThreadedSyncLink(parse_device_url(tcp.url(1)), timeout_s=1.0)
        thread_meter = open_device(tcp.url(1), DeviceKind.METER, link=thread_link, **clock)
        await _reads(thread_meter, 20)
        thread_ms = await _reads(thread_meter, n)
        await thread_link.aclose()

        # setpoint: write -> reported in force, and -> ramped there
        applied_ms: list[float] = []
        settled_ms: list[float] = []
        async with open_charger(tcp.url(11), **clock) as ch:
            for i in range(10 if quick else 40):
                target = 5000.0 if i % 2 else -5000.0
                t0 = time.perf_counter()
                applied = await ch.inverter.set_power(target)
                await _until("setpoint", lambda: _field(ch, "setpoint_w"), applied)
                applied_ms.append((time.perf_counter() - t0) * 1e3)
                await _until("actual power", lambda: _field(ch, "actual_power_w"), applied)
                settled_ms.append((time.perf_counter() - t0) * 1e3)
            await ch.inverter.set_power(0)

        # a 10 ms meter poll, held
        hold_s = 2.0 if quick else 10.0
        late = worst_ms = 0.0
        polls = 0
        start = trio.current_time()
        deadline = start
        while deadline - start < hold_s:
            t0 = time.perf_counter()
            await meter.read()
            worst_ms = max(worst_ms, (time.perf_counter() - t0) * 1e3)
            polls += 1
            deadline += POLL_PERIOD_S
            if trio.current_time() > deadline:
                late += 1
            await trio.sleep_until(deadline)
        await meter.aclose()
    finally:
        await rtu.stop()
        await tcp.stop()
        line.close()

    # RTU wire time of one meter read at 115200 baud, 10 bits per byte:
    # request 8 bytes; reply 1 unit + 1 function + 1 count + 72 data + 2 CRC = 77 bytes.
    wire_ms = (8 + 77) * 10 / 115200 * 1e3
    data.update(
        tcp_read_p50_ms=round(percentile(tcp_ms, 0.5), 3), tcp_read_p99_ms=round(percentile(tcp_ms, 0.99), 3),
        rtu_read_p50_ms=round(percentile(rtu_ms, 0.5), 3), rtu_read_p99_ms=round(percentile(rtu_ms, 0.99), 3),
        tcp_thread_read_p50_ms=round(percentile(thread_ms, 0.5), 3), tcp_thread_read_p99_ms=round(percentile(thread_ms, 0.99), 3),
        setpoint_applied_ms=round(percentile(applied_ms, 0.5), 3),
        setpoint_settled_ms=round(percentile(settled_ms, 0.5), 3),
        rtu_wire_ms_115200=round(wire_ms, 2),
        poll_10ms_polls=polls, poll_10ms_late=int(late), poll_10ms_worst_read_ms=round(worst_ms, 3),
        tcp_poll_10ms_margin=round(POLL_PERIOD_S * 1e3 / percentile(tcp_ms, 0.99), 1),
        # sustainable: under 1 % of polls late while held, and the median read leaves 4x headroom
        tcp_poll_10ms_sustainable=bool(late <= polls * 0.01 and percentile(tcp_ms, 0.5) < POLL_PERIOD_S * 1e3 / 4),
        reads=n,
    )
    return data


def run(quick: bool = False) -> BenchResult:
    data = trio.run(_main, quick)
    rows = [
        ("meter read, Modbus TCP loopback p50 / p99", f"{data['tcp_read_p50_ms']} / {data['tcp_read_p99_ms']} ms"),
        ("meter read, Modbus RTU on a pty p50 / p99", f"{data['rtu_read_p50_ms']} / {data['rtu_read_p99_ms']} ms"),
        ("  + wire time of those frames at 115200 baud", f"{data['rtu_wire_ms_115200']} ms"),
        ("meter read, pymodbus sync client in a thread", f"{data['tcp_thread_read_p50_ms']} / "
                                                         f"{data['tcp_thread_read_p99_ms']} ms"),
        ("setpoint write -> in force (TCP, p50)", f"{data['setpoint_applied_ms']} ms"),
        ("setpoint write -> power there (incl. ramp, p50)", f"{data['setpoint_settled_ms']} ms"),
        ("10 ms poll over TCP: polls / late / worst read", f"{data['poll_10ms_polls']} / {data['poll_10ms_late']} / "
                                                           f"{data['poll_10ms_worst_read_ms']} ms"),
        ("10 ms poll sustainable over TCP (<1% late, p50 < 2.5 ms)", f"{data['tcp_poll_10ms_sustainable']} "
                                                           f"(10 ms / p99 = x{data['tcp_poll_10ms_margin']})"),
        ("reads per series", str(data["reads"])),
    ]
    data = {**data, "machine": machine()}
    return BenchResult("modbus", rows, data)
