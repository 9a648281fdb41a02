"""The production transport: UDP datagrams and TCP streams on one port (7946 by default).

Theory of operation
-------------------
``UdpTransport.bind`` creates and binds both sockets before it returns, so the port is
held and ``address`` is known before any task starts (as memberlist's ``net_transport.go``
binds a TCP listener and a UDP socket per address). With port 0 it lets the system pick a
UDP port and then takes the same port for TCP, retrying a few times if that TCP port is
taken. IPv4 or IPv6 follows the bind host (an IPv6 socket is v6-only).

* Datagrams: ``send_datagram`` is one ``sendto`` on the bound UDP socket, so peers see our
  bind address as the source; ``receive_datagram`` reads ``max_datagram_bytes + 1`` bytes so
  a longer datagram is detected, dropped and counted. No background task is needed.
  ``send_datagram_nowait`` and ``receive_datagram_nowait`` do the same on the plain socket
  without waiting (and without trio's per-call address resolution): a node sends a flush
  and drains a burst with no task switch per datagram (profiling 100 agents joining in one
  process: trio's socket calls were 7% of its time, and a send task per flush more).
* Streams: ``serve`` accepts on the listening TCP socket; ``open_stream`` connects from our
  bind host (when it is a specific address), so each node on its own 127.x address or
  network namespace is seen with its own source address.

Drops are counted by reason (``statistics()``): oversize datagrams; datagrams the kernel
dropped because the socket's receive buffer was full (Linux reports the running count with
every datagram through ``SO_RXQ_OVFL``); and, when ``allow`` lists networks (config
``mesh.allow``), datagrams and TCP connections from any other source address, refused
before a byte of them is parsed.

The UDP socket does not set ``SO_REUSEADDR``: on Linux that would let a second agent bind
the same UDP port and silently split the traffic. The TCP listener does set it, so a
restarted agent can rebind while old connections sit in TIME_WAIT.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as stdlib_socket
import struct
import sys
from typing import Any

import trio

from meshagent.errors import MeshagentError
from meshagent.transport.base import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    DEFAULT_PORT,
    Address,
    Allowed,
    Counters,
    Datagram,
    StreamHandler,
    Transport,
    check_datagram_size,
    is_allowed,
    run_stream_handler,
)
from protocol.errors import LocalProtocolError

# recvfrom errors that say something about one earlier packet, not about our socket
_TRANSIENT_RECEIVE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINTR}
)
# accept errors that mean "out of resources for now": wait and go on (as trio.serve_listeners)
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_CAPACITY_SLEEP_S = 0.1
_EPHEMERAL_ATTEMPTS = 20
_IP_BIND_ADDRESS_NO_PORT = getattr(stdlib_socket, "IP_BIND_ADDRESS_NO_PORT", None)  # Linux
# Linux: with every datagram, how many the kernel dropped for want of buffer space
_SO_RXQ_OVFL: int | None = getattr(stdlib_socket, "SO_RXQ_OVFL", 40 if sys.platform == "linux" else None)
_U32 = struct.Struct("=I")
_ANCILLARY_BYTES = stdlib_socket.CMSG_SPACE(_U32.size)


def port_free(host: str, port: int = DEFAULT_PORT) -> bool:
    """Whether both UDP and TCP ``port`` can be bound on ``host`` right now (IPv4 or IPv6).

    For tests, benchmarks and the demo, which prefer 7946 and fall back to another port.
    """
    family = _family_of(host)
    for kind in (stdlib_socket.SOCK_DGRAM, stdlib_socket.SOCK_STREAM):
        s = stdlib_socket.socket(family, kind)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family_of(host: str) -> int:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MeshagentError(f"address {host!r} is not a numeric IPv4 or IPv6 address") from None
    return stdlib_socket.AF_INET6 if ip.version == 6 else stdlib_socket.AF_INET


RECEIVE_BUFFER_BYTES = 2 * 1024 * 1024


class UdpTransport(Transport):
    """UDP + TCP on one port. Create with ``await UdpTransport.bind(...)``."""

    def __init__(
        self,
        udp: trio.socket.SocketType,
        tcp: trio.socket.SocketType,
        advertise: Address,
        max_datagram_bytes: int,
        allow: Allowed | None = None,
    ) -> None:
        self.max_datagram_bytes = max_datagram_bytes
        self.allow = allow
        self._kernel_drops = False
        # A spike's ACKs reach the detector at once (one per member); Linux's default receive
        # buffer (208 KiB, a few hundred small datagrams at the kernel's per-packet overhead)
        # overflowed at N = 100 in `bench allocation`. Ask for RECEIVE_BUFFER_BYTES; the kernel
        # caps it at net.core.rmem_max (and doubles it for its bookkeeping).
        try:
            udp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError:
            pass
        self.receive_buffer_bytes = udp.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF)
        if _SO_RXQ_OVFL is not None:
            try:
                udp.setsockopt(stdlib_socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
                self._kernel_drops = True
            except OSError:
                pass
        self._udp = udp
        # The same UDP socket as a plain (non-blocking) socket object, for the sends and
        # receives that need no waiting: trio's ``sendto`` resolves the address on every call
        # (about 30 us, through getaddrinfo) and checkpoints twice; our destinations are
        # already numeric. A duplicate descriptor of one open socket, closed with it.
        self._raw = stdlib_socket.socket(udp.family, udp.type, udp.proto, fileno=os.dup(udp.fileno()))
        self._raw.setblocking(False)
        self._tcp = tcp
        self._listener = trio.SocketListener(tcp)
        host, port = udp.getsockname()[:2]
        self._bind_address: Address = (host, port)
        self._advertise = advertise
        self._family = udp.family
        self._specific_host = not ipaddress.ip_address(host).is_unspecified
        self._counters = Counters()
        self._closed = False
        self._serving = False

    @classmethod
    async def bind(
        cls,
        bind: Address,
        *,
        advertise: Address | None = None,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        backlog: int = 128,
        allow: Allowed | None = None,
    ) -> UdpTransport:
        """Bind UDP and TCP on ``bind`` (port 0: any free port, the same for both).

        ``advertise`` is what peers are told (default: the bind address; required when
        binding to ``0.0.0.0`` or ``::``; its port 0 means "the bound port"). ``allow``: the
        networks peers may come from (``None``: any; see ``base.parse_allow``). Raises
        ``MeshagentError`` (one line naming the address) if the address cannot be bound.
        """
        host, port = bind
        family = _family_of(host)
        if max_datagram_bytes < 1:
            raise LocalProtocolError("max_datagram_bytes must be positive")
        if advertise is None and ipaddress.ip_address(host).is_unspecified:
            raise MeshagentError(
                f"binding to {format_address(bind)} needs an advertise address peers can reach"
            )
        if advertise is not None:
            _family_of(advertise[0])
        for _ in range(_EPHEMERAL_ATTEMPTS):
            udp = _new_socket(family, stdlib_socket.SOCK_DGRAM)
            tcp = _new_socket(family, stdlib_socket.SOCK_STREAM)
            try:
                await _bind_or_explain(udp, (host, port), "UDP")
                bound_port = udp.getsockname()[1]
                tcp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
                try:
                    await tcp.bind((host, bound_port))
                except OSError as exc:
                    if port == 0 and exc.errno == errno.EADDRINUSE:
                        udp.close()
                        tcp.close()
                        continue  # that TCP port is taken: let the system pick another
                    raise _bind_error("TCP", (host, bound_port), exc) from None
                tcp.listen(backlog)
            except BaseException:
                udp.close()
                tcp.close()
                raise
            if advertise is None:
                adv = (host, bound_port)
            else:
                adv = (advertise[0], advertise[1] or bound_port)
            return cls(udp, tcp, adv, max_datagram_bytes, allow)
        raise MeshagentError(
            f"no port free for both UDP and TCP on {host} after {_EPHEMERAL_ATTEMPTS} attempts"
        )

    @property
    def address(self) -> Address:
        return self._advertise

    @property
    def bind_address(self) -> Address:
        return self._bind_address

    async def send_datagram(self, destination: Address, packet: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_datagram_nowait(destination, packet):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:  # the send buffer is full: let trio wait until the socket is writable
            await self._udp.sendto(packet, destination)
        except OSError:  # unreachable, no route, wrong address family, unresolvable host...
            self._check_open()
            self._counters.send_errors += 1
            return
        self._counters.sent(len(packet))

    def send_datagram_nowait(self, destination: Address, packet: bytes) -> bool:
        self._check_open()
        check_datagram_size(packet, self.max_datagram_bytes)
        try:
            self._raw.sendto(packet, destination)
        except BlockingIOError:
            return False
        except (OSError, TypeError, ValueError, UnicodeError):
            # unreachable, no route, wrong address family, a host that is not numeric...
            # (a numeric host is all an Address may hold; nothing here resolves names)
            self._counters.send_errors += 1
            return True
        self._counters.sent(len(packet))
        return True

    async def receive_datagram(self) -> Datagram:
        self._check_open()
        limit = self.max_datagram_bytes
        while True:  # ends by returning a datagram, a close, or cancellation
            source: Any
            try:
                if self._kernel_drops:
                    packet, ancdata, _, source = await self._udp.recvmsg(limit + 1, _ANCILLARY_BYTES)
                else:
                    packet, source = await self._udp.recvfrom(limit + 1)
                    ancdata = []
            except OSError as exc:
                self._check_open()
                if exc.errno not in _TRANSIENT_RECEIVE_ERRNOS:
                    raise
                self._counters.receive_errors += 1
                continue
            datagram = self._accept(packet, ancdata, source)
            if datagram is not None:
                return datagram

    def receive_datagram_nowait(self) -> Datagram | None:
        self._check_open()
        limit = self.max_datagram_bytes
        while True:  # ends when the socket has nothing more, or with a datagram
            source: Any
            try:
                if self._kernel_drops:
                    packet, ancdata, _, source = self._raw.recvmsg(limit + 1, _ANCILLARY_BYTES)
                else:
                    packet, source = self._raw.recvfrom(limit + 1)
                    ancdata = []
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECEIVE_ERRNOS:
                    raise
                self._counters.receive_errors += 1
                continue
            datagram = self._accept(packet, ancdata, source)
            if datagram is not None:
                return datagram

    def _accept(self, packet: bytes, ancdata: Any, source: Any) -> Datagram | None:
        """Count one datagram read from the socket; ``None`` if it is dropped."""
        for level, kind, data in ancdata:
            if level == stdlib_socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(data) >= 4:
                # the kernel's running count of datagrams it dropped on this socket
                self._counters.dropped_kernel = _U32.unpack_from(data)[0]
        if len(packet) > self.max_datagram_bytes:
            self._counters.dropped_oversize += 1
            return None
        if not is_allowed(self.allow, source[0]):
            self._counters.dropped_not_allowed += 1
            return None
        self._counters.received(len(packet))
        return Datagram(packet, (source[0], source[1]))

    async def open_stream(self, destination: Address) -> trio.abc.Stream:
        self._check_open()
        sock = _new_socket(self._family, stdlib_socket.SOCK_STREAM)
        try:
            if self._specific_host:
                if self._family == stdlib_socket.AF_INET and _IP_BIND_ADDRESS_NO_PORT is not None:
                    # pick the port at connect time, so thousands of streams do not
                    # exhaust the ephemeral ports of one source address
                    sock.setsockopt(stdlib_socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                await sock.bind((self._bind_address[0], 0))
            await sock.connect(destination)
        except BaseException:
            sock.close()
            raise
        self._counters.streams_opened += 1
        return trio.SocketStream(sock)

    async def serve(
        self,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._check_open()
        if self._serving:
            raise LocalProtocolError("serve() is already running on this transport")
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:  # ends when the transport closes or the caller cancels
                    try:
                        stream = await self._listener.accept()
                    except trio.ClosedResourceError:
                        return
                    except OSError as exc:
                        if self._closed:
                            return
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        self._counters.stream_errors += 1
                        await trio.sleep(_ACCEPT_CAPACITY_SLEEP_S)
                        continue
                    if not is_allowed(self.allow, _peer_host(stream)):
                        self._counters.dropped_not_allowed += 1
                        await trio.aclose_forcefully(stream)
                        continue
                    self._counters.streams_accepted += 1
                    nursery.start_soon(run_stream_handler, handler, stream, self._counters)
        finally:
            self._serving = False

    async def aclose(self) -> None:
        self._closed = True
        self._raw.close()
        self._udp.close()
        self._tcp.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<UdpTransport {format_address(self._bind_address)}>"


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return ""


def _new_socket(family: int, kind: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, kind)
    if family == stdlib_socket.AF_INET6:
        sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
    return sock


def _bind_error(kind: str, address: Address, exc: OSError) -> MeshagentError:
    reason = exc.strerror or str(exc)
    return MeshagentError(f"cannot bind {kind} {format_address(address)}: {reason}")


async def _bind_or_explain(sock: trio.socket.SocketType, address: Address, kind: str) -> None:
    try:
        await sock.bind(address)
    except OSError as exc:
        raise _bind_error(kind, address, exc) from None
