"""Modbus links usable from trio: TCP and RTU, with typed faults and reconnect with backoff.

Theory of operation
-------------------
A link carries one request at a time (RTU is master/slave on a shared line, and one
outstanding request per TCP connection keeps replies trivially matched) and offers two
operations, ``read_registers`` (function 3) and ``write_registers`` (function 16). Each
either returns exactly what the device sent, validated, or raises ``DeviceFault``:

    TIMEOUT              no complete reply within ``timeout_s``
    EXCEPTION_RESPONSE   the device answered with a Modbus exception (code kept)
    BAD_FRAME            bytes that are not the reply we asked for: wrong MBAP protocol id,
                         transaction id, unit, function, length or CRC
    DISCONNECTED         connect refused, peer closed, serial port gone, or in backoff

After a TIMEOUT or BAD_FRAME, or a request cancelled by its caller, the connection is
dropped (a late reply would otherwise be read as the answer to the next request) and
reopened on the next call. Reconnects back off
exponentially (``backoff_min_s`` doubling to ``backoff_max_s``); a call made during the
backoff fails at once with DISCONNECTED instead of sleeping, so a 10 ms control loop is
never blocked by a dead device: it sees a fault and acts on it.

Why frames over trio streams and not the pymodbus client in a thread
    ``meshagent bench modbus`` measures both against the same server (TCP loopback, 3000
    meter reads, 2-core VM shared with other work): framing over trio streams p50 0.32 ms,
    p99 3.0 ms; pymodbus' sync ``ModbusTcpClient`` behind ``trio.to_thread.run_sync`` p50
    0.41 ms, p99 3.6 ms (both tails are the loaded machine; see BENCHMARKS.md "modbus").
    Speed is close; the deciding reason is cancellation: a thread call cannot be cancelled,
    so a ``trio.fail_after`` around a hung read waits for pymodbus' own timeout while the
    thread keeps the socket, and a 10 ms control loop would stall with it. Over trio
    streams every await is a cancel point, one task serves one device, and no thread pool
    is needed per device. pymodbus still builds every request (its PDU classes and
    framers) and decodes every reply PDU (``DecodePDU``), and serves the simulated
    devices; what we own is reading untrusted bytes off the stream (``_reply_*_untrusted``),
    strict enough that garbage can only ever be a BAD_FRAME. ``ThreadedSyncLink`` (the
    alternative) is kept for the benchmark.

RTU: the port is opened and configured with pyserial (baud, parity, 8 data bits, 1 stop
bit, exclusive), then read and written through ``trio.lowlevel.FdStream`` on its fd.
"""

from __future__ import annotations

import math
import os
import struct
import termios
from collections.abc import Callable
from typing import Any

import attrs
import trio
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
)

from hardware.interfaces import DeviceFault, DeviceUrl, FaultKind

MAX_READ_REGS = 125
MAX_WRITE_REGS = 123
EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy",
                   8: "memory parity error", 10: "gateway path unavailable", 11: "gateway target failed to respond"}


async def _receive_exactly(stream: trio.abc.ReceiveStream, buf: bytearray, n: int, eof_message: str) -> bytes:
    """Exactly ``n`` bytes from ``stream``, keeping any surplus in ``buf`` for the next call."""
    while len(buf) < n:
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError(eof_message)
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


class _BadFrame(Exception):
    """Raised only by the ``*_untrusted`` readers; becomes DeviceFault(BAD_FRAME)."""


@attrs.frozen
class LinkStatistics:
    requests: int
    replies: int
    faults: dict[str, int]
    connects: int
    reconnect_delay_s: float


@attrs.define(eq=False)
class _LinkBase:
    url: DeviceUrl
    timeout_s: float = 0.5
    connect_timeout_s: float = 1.0
    backoff_min_s: float = 0.05
    backoff_max_s: float = 5.0
    clock: Callable[[], float] = trio.current_time
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    _backoff_s: float = attrs.field(init=False, default=0.0)
    _retry_at: float = attrs.field(init=False, default=-math.inf)
    _requests: int = attrs.field(init=False, default=0)
    _replies: int = attrs.field(init=False, default=0)
    _connects: int = attrs.field(init=False, default=0)
    _faults: dict[str, int] = attrs.field(init=False, factory=dict)
    _decoder: DecodePDU = attrs.field(init=False, factory=lambda: DecodePDU(False))
    _closed: bool = attrs.field(init=False, default=False)

    # subclasses: _is_open, _open, _drop, _transact(request_pdu, expect) -> pdu
    def _is_open(self) -> bool:
        raise NotImplementedError

    async def _open(self) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    async def _transact(self, request: Any) -> Any:
        raise NotImplementedError

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(self._requests, self._replies, dict(self._faults), self._connects, self._backoff_s)

    def _fault(self, kind: FaultKind, message: str, **kw: Any) -> DeviceFault:
        self._faults[kind.value] = self._faults.get(kind.value, 0) + 1
        return DeviceFault(kind, message, str(self.url), **kw)

    async def _ensure_open(self) -> None:
        if self._closed:
            raise self._fault(FaultKind.DISCONNECTED, "link closed")
        if self._is_open():
            return
        now = trio.current_time()
        if now < self._retry_at:
            raise self._fault(FaultKind.DISCONNECTED, f"reconnecting in {(self._retry_at - now) * 1e3:.0f} ms "
                                                      f"(backoff {self._backoff_s:g} s)")
        try:
            with trio.fail_after(self.connect_timeout_s):
                await self._open()
        except (OSError, trio.TooSlowError) as exc:
            self._drop()
            self._backoff_s = min(self.backoff_max_s, max(self.backoff_min_s, self._backoff_s * 2))
            self._retry_at = trio.current_time() + self._backoff_s
            what = "connect timed out" if isinstance(exc, trio.TooSlowError) else f"cannot connect: {exc.strerror or exc}"
            raise self._fault(FaultKind.DISCONNECTED, f"{what}; retry in {self._backoff_s:g} s") from None
        self._connects += 1
        self._backoff_s = 0.0

    async def _request(self, request: Any) -> Any:
        async with self._lock:
            await self._ensure_open()
            self._requests += 1
            try:
                with trio.fail_after(self.timeout_s):
                    reply = await self._transact(request)
            except trio.TooSlowError:
                self._drop()
                raise self._fault(FaultKind.TIMEOUT, f"no reply within {self.timeout_s * 1e3:g} ms") from None
            except trio.Cancelled:
                # the caller gave up (the control loop's meter task, at its sensor deadline):
                # a late reply would be read as the answer to the next request
                self._drop()
                raise
            except _BadFrame as exc:
                self._drop()
                raise self._fault(FaultKind.BAD_FRAME, str(exc)) from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
                self._drop()
                self._retry_at = trio.current_time() + self.backoff_min_s
                self._backoff_s = self.backoff_min_s
                raise self._fault(FaultKind.DISCONNECTED, f"link lost: {exc or type(exc).__name__}") from None
            self._replies += 1
            if isinstance(reply, ExceptionResponse):
                code = int(reply.exception_code)
                raise self._fault(FaultKind.EXCEPTION_RESPONSE,
                                  f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) "
                                  f"for function {request.function_code}", exception_code=code)
            return reply

    async def read_registers(self, address: int, count: int, unit: int | None = None) -> list[int]:
        """Function 3 to ``unit`` (default: the URL's; an RTU line carries several units)."""
        if not 1 <= count <= MAX_READ_REGS:
            raise ValueError(f"count {count} outside 1..{MAX_READ_REGS}")
        req = ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit or self.url.unit)
        reply = await self._request(req)
        if not isinstance(reply, ReadHoldingRegistersResponse) or len(reply.registers) != count:
            self._drop()
            raise self._fault(FaultKind.BAD_FRAME, f"reply does not carry the {count} registers asked for")
        return list(reply.registers)

    async def write_registers(self, address: int, values: list[int], unit: int | None = None) -> None:
        if not 1 <= len(values) <= MAX_WRITE_REGS:
            raise ValueError(f"{len(values)} registers outside 1..{MAX_WRITE_REGS}")
        req = WriteMultipleRegistersRequest(address=address, registers=list(values), dev_id=unit or self.url.unit)
        reply = await self._request(req)
        if not isinstance(reply, WriteMultipleRegistersResponse) or reply.address != address or reply.count != len(values):
            self._drop()
            raise self._fault(FaultKind.BAD_FRAME, "write reply does not echo the request")

    async def aclose(self) -> None:
        self._closed = True
        self._drop()
        await trio.lowlevel.checkpoint()

    def _decode_pdu_untrusted(self, pdu: bytes, function: int) -> Any:
        fc = pdu[0]
        if fc == function | 0x80:
            if len(pdu) != 2:
                raise _BadFrame("malformed exception reply")
        elif fc != function:
            raise _BadFrame(f"reply function {fc} to a function {function} request")
        elif fc == 3 and (len(pdu) < 2 or pdu[1] != len(pdu) - 2 or pdu[1] % 2):
            raise _BadFrame("read reply byte count does not match its length")
        elif fc == 16 and len(pdu) != 5:
            raise _BadFrame("malformed write reply")
        reply = self._decoder.decode(pdu)
        if reply is None:
            raise _BadFrame(f"undecodable reply PDU {pdu[:8].hex()}")
        return reply


@attrs.define(eq=False)
class TcpLink(_LinkBase):
    """Modbus TCP (MBAP framing) over a trio TCP stream."""

    _stream: trio.SocketStream | None = attrs.field(init=False, default=None)
    _tid: int = attrs.field(init=False, default=0)
    _framer: FramerSocket = attrs.field(init=False, factory=lambda: FramerSocket(DecodePDU(False)))
    _buf: bytearray = attrs.field(init=False, factory=bytearray)

    def _is_open(self) -> bool:
        return self._stream is not None

    async def _open(self) -> None:
        self._stream = await trio.open_tcp_stream(self.url.host, self.url.port)
        self._buf.clear()

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()  # sync close; the stream object is discarded
            self._stream = None
        self._buf.clear()

    async def _receive_exactly(self, n: int) -> bytes:
        assert self._stream is not None
        return await _receive_exactly(self._stream, self._buf, n, "peer closed the connection")

    async def _transact(self, request: Any) -> Any:
        assert self._stream is not None
        self._tid = self._tid % 0xFFFF + 1
        request.transaction_id = self._tid
        await self._stream.send_all(self._framer.buildFrame(request))
        return await self._reply_tcp_untrusted(request)

    async def _reply_tcp_untrusted(self, request: Any) -> Any:
        header = await self._receive_exactly(7)
        tid, pid, length, unit = struct.unpack(">HHHB", header)
        if pid != 0:
            raise _BadFrame(f"MBAP protocol id {pid} (expected 0)")
        if not 2 <= length <= 254:
            raise _BadFrame(f"MBAP length {length} outside 2..254")
        pdu = await self._receive_exactly(length - 1)
        if tid != request.transaction_id:
            raise _BadFrame(f"transaction id {tid} (expected {request.transaction_id})")
        if unit != request.dev_id:
            raise _BadFrame(f"reply from unit {unit} (expected {request.dev_id})")
        return self._decode_pdu_untrusted(pdu, request.function_code)


@attrs.define(eq=False)
class RtuLink(_LinkBase):
    """Modbus RTU over a serial port opened with pyserial, read through trio."""

    _serial: Any = attrs.field(init=False, default=None)
    _stream: trio.lowlevel.FdStream | None = attrs.field(init=False, default=None)
    _framer: FramerRTU = attrs.field(init=False, factory=lambda: FramerRTU(DecodePDU(False)))
    _buf: bytearray = attrs.field(init=False, factory=bytearray)

    def _is_open(self) -> bool:
        return self._stream is not None

    async def _open(self) -> None:
        import serial  # pyserial

        try:
            ser = serial.Serial(port=self.url.serial_path, baudrate=self.url.baud, parity=self.url.parity,
                                bytesize=8, stopbits=1, timeout=0, exclusive=True)
        except serial.SerialException as exc:
            raise OSError(str(exc)) from None
        self._serial = ser
        # pyserial leaves VMIN=0, with which a non-blocking tty read returns b"" (looks like
        # EOF) instead of EAGAIN when no byte is there; VMIN=1 makes trio wait for readability.
        attrs_ = termios.tcgetattr(ser.fileno())
        attrs_[6][termios.VMIN], attrs_[6][termios.VTIME] = 1, 0
        termios.tcsetattr(ser.fileno(), termios.TCSANOW, attrs_)
        self._stream = trio.lowlevel.FdStream(os.dup(ser.fileno()))
        self._buf.clear()
        await trio.lowlevel.checkpoint()

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        self._buf.clear()

    async def _receive_exactly(self, n: int) -> bytes:
        assert self._stream is not None
        return await _receive_exactly(self._stream, self._buf, n, "serial port closed")

    async def _transact(self, request: Any) -> Any:
        assert self._stream is not None and self._serial is not None
        self._serial.reset_input_buffer()  # nothing on the line belongs to this request yet
        self._buf.clear()
        await self._stream.send_all(self._framer.buildFrame(request))
        return await self._reply_rtu_untrusted(request)

    async def _reply_rtu_untrusted(self, request: Any) -> Any:
        head = await self._receive_exactly(2)
        unit, fc = head[0], head[1]
        if unit != request.dev_id:
            raise _BadFrame(f"reply from unit {unit} (expected {request.dev_id})")
        if fc == request.function_code | 0x80:
            rest = await self._receive_exactly(3)
        elif fc == 3 == request.function_code:
            count = (await self._receive_exactly(1))[0]
            if count != 2 * request.count:
                raise _BadFrame(f"read reply byte count {count} (expected {2 * request.count})")
            rest = bytes([count]) + await self._receive_exactly(count + 2)
        elif fc == 16 == request.function_code:
            rest = await self._receive_exactly(6)
        else:
            raise _BadFrame(f"reply function {fc} to a function {request.function_code} request")
        frame = head + rest
        crc = int.from_bytes(frame[-2:], "big")
        if FramerRTU.compute_CRC(frame[:-2]) != crc:
            raise _BadFrame("CRC mismatch")
        return self._decode_pdu_untrusted(frame[1:-2], request.function_code)


@attrs.define(eq=False)
class ThreadedSyncLink(_LinkBase):
    """The alternative measured by the benchmark: pymodbus' sync client in a worker thread.

    Not cancellable while a request is in flight (the thread finishes on pymodbus' own
    timeout); kept to measure, not used by ``hardware.connect``.
    """

    _client: Any = attrs.field(init=False, default=None)

    def _is_open(self) -> bool:
        return self._client is not None and self._client.connected

    async def _open(self) -> None:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        client: Any
        if self.url.scheme == "modbus+tcp":
            client = ModbusTcpClient(self.url.host, port=self.url.port, timeout=self.timeout_s, retries=0)
        else:
            client = ModbusSerialClient(self.url.serial_path, baudrate=self.url.baud, parity=self.url.parity,
                                        timeout=self.timeout_s, retries=0)
        ok = await trio.to_thread.run_sync(client.connect)
        if not ok:
            client.close()
            raise OSError("pymodbus client could not connect")
        self._client = client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _transact(self, request: Any) -> Any:
        client = self._client
        if isinstance(request, ReadHoldingRegistersRequest):
            fn = lambda: client.read_holding_registers(request.address, count=request.count, device_id=request.dev_id)  # noqa: E731
        else:
            fn = lambda: client.write_registers(request.address, request.registers, device_id=request.dev_id)  # noqa: E731
        try:
            reply = await trio.to_thread.run_sync(fn)
        except Exception as exc:  # pymodbus raises ModbusIOException & co for link trouble
            raise OSError(str(exc)) from None
        return reply


def open_link(url: DeviceUrl, **kw: Any) -> _LinkBase:
    if url.scheme == "modbus+tcp":
        return TcpLink(url, **kw)
    if url.scheme == "modbus+rtu":
        return RtuLink(url, **kw)
    raise ValueError(f"{url}: not a Modbus URL")


ModbusLink = _LinkBase
