"""LAN discovery with zeroconf (mDNS/DNS-SD): an opt-in alternative to seed addresses.

Theory of operation
-------------------
Each node advertises one DNS-SD service instance ``<node_id>._meshagent._udp.local.``
whose SRV/A records carry the address its transport is reachable at and whose TXT record
carries ``node_id`` and the discovery format ``v=1``. It also browses for that service
type; every instance that appears (or changes) is resolved and handed to the caller as a
``DiscoveredPeer(node_id, address)``, once per distinct address. A found peer is only a
candidate to join through: everything the mesh later accepts from it is a signed packet
checked against the operator's CA, so a forged mDNS answer costs at most a wasted probe.

zeroconf runs asyncio in its own thread (``use_asyncio=False``). We never block that
thread on trio: its browse callback only posts the instance name into a bounded trio
memory channel with ``TrioToken.run_sync_soon`` (non-blocking; a full channel drops and
counts). A trio task resolves names with ``trio.to_thread.run_sync`` (zeroconf's blocking
``get_service_info``, usually answered from its cache) and parses the answer with
``peer_from_service_info_untrusted``. Registration probes the LAN for a name clash and
announces, which takes about 1.5 s, so it runs in the background while browsing starts.
Shutdown (cancellation) is shielded: cancel the browser, send goodbye records, close
zeroconf and join its thread, all in a worker thread.

Use ``await nursery.start(discovery.run)`` and read ``discovery.peers``, or
``async with open_discovery(...) as discovery: async for peer in discovery.peers: ...``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from meshagent.errors import MeshagentError
from meshagent.transport.base import Address
from protocol.errors import BadPacket, DropReason
from protocol.identity import NODE_ID_MAX, check_id

SERVICE_TYPE = "_meshagent._udp.local."
DISCOVERY_FORMAT = b"1"
DEFAULT_RESOLVE_TIMEOUT_S = 3.0
DEFAULT_QUEUE = 256


@attrs.frozen
class DiscoveredPeer:
    node_id: str
    address: Address


@attrs.frozen
class DiscoveryStatistics:
    found: int  # peers handed to the caller (new node, or a node at a new address)
    ignored: int  # instances that did not resolve, were malformed, or were ourselves
    dropped_overflow: int  # names or peers dropped because a queue was full


def peer_from_service_info_untrusted(info: Any, *, family: int = socket.AF_INET) -> DiscoveredPeer:
    """A peer from a resolved zeroconf ``ServiceInfo``. Raises only ``BadPacket``."""
    try:
        props = info.properties or {}
        if props.get(b"v") != DISCOVERY_FORMAT:
            raise BadPacket(DropReason.BAD_VERSION, f"discovery format {props.get(b'v')!r}")
        raw_id = props.get(b"node_id")
        if not isinstance(raw_id, bytes):
            raise BadPacket(DropReason.BAD_FIELD, "no node_id")
        node_id = check_id("node id", raw_id.decode("ascii"), NODE_ID_MAX)
        port = info.port
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise BadPacket(DropReason.BAD_FIELD, f"port {port!r}")
        want = 4 if family == socket.AF_INET else 6
        hosts = [
            h
            for h in info.parsed_addresses()
            if ipaddress.ip_address(h.split("%")[0]).version == want
        ]
        if not hosts:
            raise BadPacket(DropReason.BAD_FIELD, f"no IPv{want} address")
        return DiscoveredPeer(node_id, (hosts[0], port))
    except BadPacket:
        raise
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise BadPacket(DropReason.BAD_FIELD, str(exc)) from None


class Discovery:
    """Advertise this node and find peers on the LAN. See the module docstring.

    ``interfaces``: IP addresses of the interfaces to use for mDNS (zeroconf's choice of
    all interfaces when None). ``address``: what peers should connect to (the transport's
    advertised address; its family selects IPv4 or IPv6).
    """

    def __init__(
        self,
        node_id: str,
        address: Address,
        *,
        interfaces: Sequence[str] | None = None,
        resolve_timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
        queue: int = DEFAULT_QUEUE,
    ) -> None:
        self.node_id = check_id("node id", node_id, NODE_ID_MAX)
        host, port = address
        ip = ipaddress.ip_address(host)
        self.address = address
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.resolve_timeout_s = resolve_timeout_s
        self._info_args: dict[str, Any] = {
            "type_": SERVICE_TYPE,
            "name": f"{node_id}.{SERVICE_TYPE}",
            "port": port,
            "properties": {b"node_id": node_id.encode("ascii"), b"v": DISCOVERY_FORMAT},
            "server": f"{node_id}.local.",
            "addresses": [ip.packed],
        }
        self._peers_send, self.peers = trio.open_memory_channel[DiscoveredPeer](queue)
        self._names_send, self._names = trio.open_memory_channel[str](queue)
        self._token: trio.lowlevel.TrioToken | None = None
        self._delivered: dict[str, Address] = {}
        self._found = 0
        self._ignored = 0
        self._dropped = 0
        self._started = False

    def statistics(self) -> DiscoveryStatistics:
        return DiscoveryStatistics(self._found, self._ignored, self._dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise and browse until cancelled; ``peers`` ends (EndOfChannel) afterwards."""
        if self._started:
            raise RuntimeError("Discovery.run may only run once")
        self._started = True
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

        self._token = trio.lowlevel.current_trio_token()
        version = IPVersion.V6Only if self.family == socket.AF_INET6 else IPVersion.V4Only
        info = ServiceInfo(**self._info_args)

        def start() -> tuple[Any, Any]:
            kwargs: dict[str, Any] = {"ip_version": version, "use_asyncio": False}
            if self.interfaces is not None:
                kwargs["interfaces"] = self.interfaces
            zc = Zeroconf(**kwargs)
            try:
                browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
            except BaseException:
                zc.close()
                raise
            return zc, browser

        def stop(zc: Any, browser: Any) -> None:
            browser.cancel()
            zc.close()  # sends goodbyes for what it registered, joins its thread

        try:
            zc, browser = await trio.to_thread.run_sync(start)
        except OSError as exc:
            raise MeshagentError(f"zeroconf discovery cannot start: {exc}") from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._register, zc, info)
                task_status.started()
                async for name in self._names:
                    await self._resolve(zc, name)
        finally:
            self._names_send.close()
            self._peers_send.close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stop, zc, browser)

    async def _register(self, zc: Any, info: Any) -> None:
        from zeroconf import NonUniqueNameException

        try:
            await trio.to_thread.run_sync(zc.register_service, info, abandon_on_cancel=True)
        except NonUniqueNameException:
            raise MeshagentError(
                f"another node on the LAN already advertises node id {self.node_id!r}"
            ) from None

    def _on_change(self, *, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        # called in zeroconf's thread: post to trio without waiting on it
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed or self._token is None:
            return
        try:
            self._token.run_sync_soon(self._post_name, name)
        except trio.RunFinishedError:
            pass

    def _post_name(self, name: str) -> None:
        try:
            self._names_send.send_nowait(name)
        except trio.WouldBlock:
            self._dropped += 1
        except trio.ClosedResourceError:
            pass

    async def _resolve(self, zc: Any, name: str) -> None:
        timeout_ms = int(self.resolve_timeout_s * 1000)
        info = await trio.to_thread.run_sync(
            zc.get_service_info, SERVICE_TYPE, name, timeout_ms, abandon_on_cancel=True
        )
        if info is None:
            self._ignored += 1
            return
        try:
            peer = peer_from_service_info_untrusted(info, family=self.family)
        except BadPacket:
            self._ignored += 1
            return
        if peer.node_id == self.node_id:
            self._ignored += 1
            return
        if self._delivered.get(peer.node_id) == peer.address:
            return  # an update that changed nothing we report
        try:
            self._peers_send.send_nowait(peer)
        except trio.WouldBlock:
            self._dropped += 1
            return
        self._delivered[peer.node_id] = peer.address
        self._found += 1


@asynccontextmanager
async def open_discovery(node_id: str, address: Address, **kwargs: Any) -> AsyncIterator[Discovery]:
    """A running ``Discovery`` (arguments as its constructor) for the block."""
    discovery = Discovery(node_id, address, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        try:
            yield discovery
        finally:
            nursery.cancel_scope.cancel()
