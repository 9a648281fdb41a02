"""Simulated devices served by real pymodbus servers: Modbus TCP on loopback, RTU on a pty pair.

Theory of operation
-------------------
The units (``hardware.simulated.images``: a ``MeterUnit`` or ``ChargerUnit`` rendering its
register image from the physics) plug into pymodbus as ``SimDevice``s whose ``action`` hook
runs on every request.

``SimServer`` runs one pymodbus server (TCP or serial, several units on it like an RS-485
line) on its own asyncio event loop in a thread: pymodbus is asyncio, the agent is trio,
and a thread is the honest boundary. The simulated objects are shared between that thread
and the caller, which is why they hold a lock. ``await server.start()`` returns once the
server listens; ``server.url(unit)`` is what a driver connects to. ``site_units`` is a
whole site on one line.

``PtyLine`` is a null-modem cable made of two ``os.openpty`` pairs and a bridge thread
copying bytes between their masters (what ``socat`` does): the server opens one slave and
the client the other, both as genuine serial ports through pyserial. The bridge can cut the
cable or inject bytes, and can pace bytes at the line's baud rate.

Faults a test injects on the server (``SimServer.faults``): answer every request with a
Modbus exception code, delay replies (timeouts), or replace reply bytes with garbage
(through pymodbus' ``trace_packet`` hook, so the bytes really cross the wire).
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

import attrs
import trio
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from hardware.simulated.images import ChargerUnit, MeterUnit, Unit
from hardware.simulated.site import SimulatedSite


@attrs.define
class ServerFaults:
    """Set from the test's thread, read by the server's; plain attribute writes are atomic."""

    exception_code: int | None = None  # answer every request with this Modbus exception
    delay_s: float = 0.0  # hold every reply this long (the client times out)
    garbage: bytes | None = None  # send these bytes instead of each reply
    silent: bool = False  # never answer


@attrs.define(eq=False)
class SimServer:
    """One pymodbus server (TCP or RTU) for several units, in its own thread."""

    units: dict[int, Unit]
    kind: str = "tcp"  # "tcp" or "rtu"
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    serial_path: str = ""
    baud: int = 115200
    faults: ServerFaults = attrs.field(factory=ServerFaults)
    tick_s: float = 0.02  # how often the units' timers run with no request
    requests: int = attrs.field(init=False, default=0)
    unknown_unit_requests: int = attrs.field(init=False, default=0)
    log: Callable[[str], None] = attrs.field(default=lambda line: None, kw_only=True)  # one line per event
    _asked_unit: int | None = attrs.field(init=False, default=None)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(init=False, default=None)
    _server: Any = attrs.field(init=False, default=None)
    _stop: asyncio.Event | None = attrs.field(init=False, default=None)
    _ready: threading.Event = attrs.field(init=False, factory=threading.Event)
    _error: BaseException | None = attrs.field(init=False, default=None)

    def url(self, unit_id: int) -> str:
        if self.kind == "tcp":
            return f"modbus+tcp://{self.host}:{self.port}/{unit_id}"
        return f"modbus+rtu://{self.serial_path}?baud={self.baud}&unit={unit_id}"

    def _device(self, unit_id: int, unit: Unit) -> SimDevice:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
            self.requests += 1
            unit.tick()
            f = self.faults
            if f.delay_s:
                await asyncio.sleep(f.delay_s)
            if f.exception_code is not None:
                return ExcCodes(f.exception_code)
            if set_values is not None and function_code in (6, 16):
                return unit.apply_write(address, [int(v) for v in set_values])
            unit.render_into(registers, start_address, address, count)
            return None

        blank = SimData(unit.layout.base, values=[0] * unit.layout.size, datatype=DataType.REGISTERS)
        return SimDevice(unit_id, simdata=[blank], action=action)

    def _catch_all(self) -> SimDevice:
        """pymodbus hands a request for a unit it does not know to device 0 (and, with none,
        logs a traceback and hex dumps): ours answers GATEWAY_NO_RESPONSE (0x0B, "gateway
        target device failed to respond": no such unit behind this server) and logs one line."""

        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
            self.unknown_unit_requests += 1
            asked = "?" if self._asked_unit is None else str(self._asked_unit)
            self.log(f"request for unit {asked}, which this server does not serve (units "
                     f"{', '.join(str(u) for u in sorted(self.units))}): answered Modbus exception 0x0B")
            return ExcCodes.GATEWAY_NO_RESPONSE

        everywhere = SimData(0, values=[0] * 0x10000, datatype=DataType.REGISTERS)  # no ILLEGAL_ADDRESS first
        return SimDevice(0, simdata=[everywhere], action=action)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and self.kind == "tcp" and len(data) >= 7:
            self._asked_unit = data[6]  # the MBAP header's unit id
        elif not sending and data:
            self._asked_unit = data[0]  # RTU: the address byte
        if sending and self.faults.garbage is not None:
            return self.faults.garbage
        if sending and self.faults.silent:
            return b""
        return data

    async def _main(self) -> None:
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        devices = [self._device(uid, unit) for uid, unit in self.units.items()]
        if 0 not in self.units:
            devices.append(self._catch_all())
        if self.kind == "tcp":
            server: Any = ModbusTcpServer(devices, address=(self.host, self.port), trace_packet=self._trace_packet)
        else:
            server = ModbusSerialServer(devices, port=self.serial_path, baudrate=self.baud,
                                        trace_packet=self._trace_packet, reconnect_delay=0.1)
        self._server = server
        self._stop = asyncio.Event()
        await server.serve_forever(background=True)
        if self.kind == "tcp":
            self.port = server.transport.sockets[0].getsockname()[1]
        self._ready.set()

        async def tick() -> None:  # the units' own timers run whether or not anyone asks
            while True:
                await asyncio.sleep(self.tick_s)
                for unit in self.units.values():
                    unit.tick()

        ticker = asyncio.get_running_loop().create_task(tick())
        await self._stop.wait()
        ticker.cancel()
        await server.shutdown()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    def start_sync(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"modbus-{self.kind}-server", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None or not self._ready.is_set():
            self.stop_sync()
            raise OSError(f"modbus {self.kind} server did not start: {self._error}")
        self._loop = self._server.loop

    def stop_sync(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(10.0)
        self._thread = None

    async def start(self) -> SimServer:
        await trio.to_thread.run_sync(self.start_sync)
        return self

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.stop_sync)

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@attrs.define(eq=False)
class PtyLine:
    """A serial null-modem cable from two pty pairs: ``server_path`` <-> ``client_path``."""

    baud: int = 115200
    pace: bool = False  # delay bytes by their time on a real line at ``baud`` (10 bits/byte)
    cut: bool = False  # drop everything (cable pulled)
    inject_to_client: bytes = b""
    server_path: str = attrs.field(init=False, default="")
    client_path: str = attrs.field(init=False, default="")
    _fds: list[int] = attrs.field(init=False, factory=list)
    _wake: tuple[int, int] | None = attrs.field(init=False, default=None)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _stopping: bool = attrs.field(init=False, default=False)

    def open(self) -> PtyLine:
        m1, s1 = os.openpty()
        m2, s2 = os.openpty()
        for fd in (s1, s2):
            tty.setraw(fd)  # no echo, no line discipline, before anyone opens them
        self._fds = [m1, s1, m2, s2]
        self.server_path, self.client_path = os.ttyname(s1), os.ttyname(s2)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._bridge, args=(m1, m2), name="pty-line", daemon=True)
        self._thread.start()
        return self

    def _bridge(self, server_master: int, client_master: int) -> None:
        assert self._wake is not None
        peer = {server_master: client_master, client_master: server_master}
        while not self._stopping:
            readable, _, _ = select.select([server_master, client_master, self._wake[0]], [], [], 0.5)
            for fd in readable:
                if fd == self._wake[0]:
                    os.read(fd, 64)
                    continue
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: nobody has the slave open right now
                    time.sleep(0.001)
                    continue
                if self.cut or not data:
                    continue
                if fd == server_master and self.inject_to_client:
                    data, self.inject_to_client = self.inject_to_client, b""
                if self.pace:
                    time.sleep(len(data) * 10 / self.baud)
                try:
                    os.write(peer[fd], data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopping = True
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        for fd in [*self._fds, *(self._wake or ())]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds, self._wake = [], None

    def __enter__(self) -> PtyLine:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def site_units(site: SimulatedSite, meter_unit: int = 1, first_charger_unit: int = 11,
               standard: bool = False) -> dict[int, Unit]:
    """The units of a whole site on one line: meter at ``meter_unit``, charger i at first+i-1.
    ``standard``: the chargers implement only the SunSpec Alliance's models (no 64900)."""
    units: dict[int, Unit] = {meter_unit: MeterUnit.of(site, meter_unit)}
    for i, c in enumerate(site.chargers):
        uid = first_charger_unit + i
        if uid > 247:
            raise ValueError("more chargers than Modbus unit ids")
        units[uid] = ChargerUnit.of(c, uid, site, standard=standard)
    return units
