"""``meshagent run``: one charger's agent, assembled from its configuration file.

Theory of operation
-------------------
``run_agent(config)`` loads the identity (key, certificate, CA key: refused if they do not
belong together), takes the next boot epoch from the state directory, binds UDP and TCP on
``mesh.bind``, and runs in one nursery: the mesh node, the HTTP API on ``mesh.api``, and,
when ``mesh.zeroconf`` is on, LAN discovery feeding found peers to the node as seeds.

What must outlive a restart lives in the state directory: the boot epoch, seeds added with
``meshagent join`` (``seeds``), and revocations learned from the mesh (``revocations/``),
which are loaded at start so a revoked node stays out even before the mesh repeats them.

The CSMS side (billing and authorization, never the spike path): the SQLite file
``[csms].queue`` is opened at every start. With a ``[csms].url``, the CSMS client runs in the
agent's nursery; before it connects, transactions a crash left open are ended (PowerLoss).
Without one, the file holds only the local authorization list. Either way ``AuthSync``
replicates that list over the mesh (``meshagent.csms.authsync``), and ``GET /v1/authorize``
answers from it. The API (``meshagent.api``) needs a bearer token from the state
directory (``api/<role>.token``) for everything but the page and the loopback probes. The state record is published by one ``RecordPublisher``, which merges the
control loop's offer and the list's summary.

SIGINT and SIGTERM leave the mesh gracefully (peers see ``left``, not ``dead``); a second
signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from meshagent.api.app import AgentView
from meshagent.api.auth import Tokens
from meshagent.api.server import serve_api
from meshagent.config import NodeConfig
from meshagent.csms.authsync import (
    AuthListKeeper,
    AuthSync,
    ClientAuthList,
    RecordPublisher,
    StoredAuthList,
)
from meshagent.errors import MeshagentError
from meshagent.mesh.config import MeshSection, parse_host_port
from meshagent.mesh.node import MeshNode
from meshagent.mesh.queries import serve_queries
from meshagent.statedir import ensure_state_dir, next_boot_epoch
from meshagent.transport.base import parse_allow
from meshagent.transport.udp import UdpTransport, format_address
from meshagent.trust import keystore
from meshagent.trust.endpoint import system_wall_clock_ms
from protocol.errors import BadPacket
from protocol.identity import TrustStore
from protocol.state import Scope
from protocol.swim import (
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberRemoved,
    MemberSuspect,
    Refuted,
)
from protocol.wire import WireLimits

log = logging.getLogger("meshagent")


# --- state directory ---------------------------------------------------------------------------


def load_seeds(state_dir: Path) -> list[tuple[str, int]]:
    path = state_dir / "seeds"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                out.append(parse_host_port(line))
            except ValueError:
                log.warning("ignoring bad seed %r in %s", line, path)
    return out


def save_seeds(state_dir: Path, seeds: list[tuple[str, int]]) -> None:
    (state_dir / "seeds").write_text("".join(format_address(s) + "\n" for s in seeds))


def load_revocations(trust: TrustStore, state_dir: Path) -> int:
    directory = state_dir / "revocations"
    if not directory.is_dir():
        return 0
    count = 0
    for raw in keystore.read_revocations(directory):
        try:
            trust.add_revocation_untrusted(raw)
            count += 1
        except BadPacket as exc:
            log.warning("ignoring unusable revocation in %s: %s", directory, exc)
    return count


def save_revocation(state_dir: Path, record: bytes, node_id: str) -> None:
    directory = state_dir / "revocations"
    directory.mkdir(exist_ok=True)
    import hashlib

    name = f"{node_id}-{hashlib.blake2b(record, digest_size=6).hexdigest()}.rev"
    keystore.write_public(directory / name, keystore.REVOCATION, record)


# --- the API -------------------------------------------------------------------------------------


def parse_scope(text: str) -> Scope:
    if text in ("", "all"):
        return Scope.everyone()
    kind, _, ident = text.partition(":")
    if kind == "site" and ident:
        return Scope.site(ident)
    if kind == "transformer" and ident:
        return Scope.transformer(ident)
    raise ValueError(f"scope must be 'all', 'site:ID' or 'transformer:ID', not {text!r}")


# --- running -------------------------------------------------------------------------------------


def _log_events(node: MeshNode) -> Any:
    channel = node.subscribe()

    async def run() -> None:
        async for ev in channel:
            if isinstance(ev, MemberJoined):
                log.info("member %s joined at %s", ev.member.node_id, format_address(ev.member.address))
            elif isinstance(ev, MemberSuspect):
                log.info("member %s suspected by %s", ev.member.node_id, ev.accuser)
            elif isinstance(ev, MemberDead):
                log.warning("member %s declared dead by %s", ev.member.node_id, ev.accuser)
            elif isinstance(ev, MemberLeft):
                log.info("member %s left", ev.member.node_id)
            elif isinstance(ev, MemberRemoved):
                log.info("member %s removed (%s)", ev.node_id, ev.reason)
            elif isinstance(ev, Refuted):
                log.warning("we were suspected by %s; refuted with incarnation %d", ev.accuser, ev.incarnation)

    return run


async def run_agent(config: NodeConfig, *, sim_world: Any = None,
                    task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one charger's agent until it leaves or is cancelled; started with its ``MeshNode``.

    ``sim_world``: the ``hardware.simulated.site.SimWorld`` that this agent's ``sim://``
    devices live in, for agents run in one process on one simulated site (``meshagent
    demo``: every agent's meter then sees every charger). ``None``, as ``meshagent run``
    passes: a world of the agent's own (``sim_world_for``) when a device is simulated.
    """
    node_cfg = config.node
    mesh: MeshSection = config.section("mesh")
    swim = mesh.swim_config()
    ident = keystore.load_identity(node_cfg.key, node_cfg.certificate, node_cfg.ca, node_cfg.id)
    state_dir = ensure_state_dir(node_cfg.state_dir)
    trust = TrustStore([keystore.read_public_key(node_cfg.ca)])
    load_revocations(trust, state_dir)
    if trust.is_revoked(ident.certificate):
        raise MeshagentError(f"this node's certificate ({node_cfg.id}) has been revoked")
    epoch = next_boot_epoch(state_dir)
    # packets issued before this start (plus the clock error allowed between peers) may have
    # been accepted before a restart or crash: refuse them (docs/wire-format.md, "Restarts")
    not_before_ms = system_wall_clock_ms() + int(mesh.clock_error * 1000)
    transport = await UdpTransport.bind(
        mesh.bind, advertise=mesh.advertise, max_datagram_bytes=config.wire.max_datagram_bytes,
        allow=parse_allow(mesh.allow) if mesh.allow else None,
    )
    seeds = list(dict.fromkeys([*mesh.seeds, *load_seeds(state_dir)]))
    limits = WireLimits(
        max_datagram_bytes=config.wire.max_datagram_bytes,
        max_stream_bytes=config.wire.max_stream_bytes,
        max_skew_ms=int(config.wire.max_skew_s * 1000),
    )
    known_revocations = set(trust.revocation_records())

    def persist_revocations(_node_id: str) -> None:
        # revocations learned at run time are kept for the next start
        for rev, record in zip(trust.revocations(), trust.revocation_records(), strict=True):
            if record not in known_revocations:
                known_revocations.add(record)
                save_revocation(state_dir, record, rev.node_id)

    node = MeshNode(
        ident, trust, transport, swim, boot_epoch=epoch, seeds=seeds, limits=limits,
        on_revocation=persist_revocations, not_before_ms=not_before_ms,
    )

    csms_cfg = config.section("csms")
    client, store = None, None
    try:
        store = await trio.to_thread.run_sync(_open_store, csms_cfg)
        keeper: AuthListKeeper
        if csms_cfg.url:
            from meshagent.csms.client import ClientSettings, CsmsClient

            client = CsmsClient(ClientSettings.from_section(csms_cfg, node_cfg.id), store)
            keeper = ClientAuthList(client)
        else:
            keeper = StoredAuthList(store)
    except BaseException:
        if store is not None:
            store.close()
        await transport.aclose()
        raise
    publisher = RecordPublisher(node)

    async with transport, _closing(store), trio.open_nursery() as nursery:

        def on_join(new: list[tuple[str, int]]) -> None:
            merged = list(dict.fromkeys([*load_seeds(state_dir), *new]))
            save_seeds(state_dir, merged)
            node.join(new)

        def on_leave() -> None:
            nursery.start_soon(node.leave)

        async def run_node(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await node.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the node left or stopped: so does the agent

        await nursery.start(run_node)
        devices_cfg = config.section("devices")
        stats_sources: dict[str, Any] = {}
        ratings = config.section("allocation").ratings_w()
        allocation: dict[str, Any] = {"headroom_w": lambda: dict(ratings)}
        if client is not None:
            # before the session driver can start this run's first transaction: only a
            # previous life's transactions are open now
            await client.end_interrupted_transactions()
        if devices_cfg.configured:
            await nursery.start(run_control, config, node, state_dir, publisher, stats_sources, allocation,
                                client, sim_world)
        query_stats = serve_queries(node, lambda: allocation["headroom_w"]())
        stats_sources["queries"] = lambda: query_stats
        sync = AuthSync(node, keeper, publisher)
        await nursery.start(sync.run)
        stats_sources["authsync"] = sync.statistics
        if client is not None:
            await nursery.start(client.run)
            stats_sources["csms"] = client.statistics
        allocator = allocation.get("allocator")
        api_view = AgentView(node, Tokens.load(state_dir), on_join, on_leave, keeper, stats_sources,
                             spikes=allocator.spikes if allocator is not None else None,
                             tls=config.section("api"), headroom_w=lambda: allocation["headroom_w"]())
        api_address = await nursery.start(serve_api, api_view, mesh.api[0], mesh.api[1])
        nursery.start_soon(_log_events(node))
        nursery.start_soon(_signals, node, nursery)
        if mesh.zeroconf:
            nursery.start_soon(_discover, node)
        log.info(
            "node %s up: mesh %s (preset %s, boot epoch %d), api http://%s, %d seed(s)",
            node.node_id, format_address(node.address), mesh.preset, epoch,
            format_address(api_address), len(seeds),
        )
        task_status.started(node)


def _open_store(csms_cfg: Any) -> Any:
    from meshagent.csms.store import CsmsStore

    return CsmsStore(csms_cfg.queue, max_bytes=csms_cfg.max_queue_bytes)


@contextlib.asynccontextmanager
async def _closing(store: Any) -> AsyncIterator[None]:
    """Close the store once every task that used it (the nursery inside) has ended."""
    try:
        yield
    finally:
        store.close()


def sim_world_for(*urls: Any, nominal_frequency_hz: float) -> Any:
    """The simulated world the ``sim://`` devices among ``urls`` share, or ``None``.

    Built (and ``hardware.simulated`` imported) only when a device is simulated: an agent on
    real Modbus devices carries no simulated grid. Its sites' grids run at the nominal
    frequency the control loop expects.
    """
    from hardware.interfaces import parse_device_url

    if not any(parse_device_url(str(u)).scheme == "sim" for u in urls):
        return None
    from hardware.simulated.site import SimWorld

    world = SimWorld(clock=trio.current_time)
    for u in urls:
        parsed = parse_device_url(str(u))
        if parsed.scheme == "sim":
            world.site(parsed.site).set_grid(frequency_hz=nominal_frequency_hz)
    return world


async def _start_visits(nursery: trio.Nursery, world: Any, visits: Any) -> None:
    """Drive ``[devices].sim_arrivals`` on every simulated site: the next vehicle is the
    world's default model with a new id, so each visit authorises and bills on its own."""
    from hardware.simulated.vehicles import VehicleConfig
    from hardware.simulated.visits import drive_visits

    def visitor(index: int, visit: int) -> Any:
        model = world.default_vehicle
        return VehicleConfig.of(model, vehicle_id=f"SIM{index + 1}-{visit:03d}-{model}")

    for site in world.sites.values():
        await nursery.start(drive_visits, site, visits, visitor)


def open_devices(devices_cfg: Any, world: Any = None) -> tuple[Any, Any]:
    """The site meter and the charger ``[devices]`` names, each on its own link (a Modbus
    request waits ``modbus_timeout`` for its reply; ``world`` serves ``sim://`` URLs)."""
    from hardware.connect import open_charger, open_site_meter

    meter = open_site_meter(devices_cfg.meter, world=world, timeout_s=devices_cfg.modbus_timeout_s)
    charger = open_charger(devices_cfg.charger, world=world, timeout_s=devices_cfg.modbus_timeout_s,
                           revert_after_s=max(1, round(devices_cfg.setpoint_reversion_s)))
    return meter, charger


async def run_control(config: NodeConfig, node: MeshNode, state_dir: Path | None, publisher: RecordPublisher,
                      stats_sources: dict[str, Any], allocation: dict[str, Any], csms_client: Any = None,
                      sim_world: Any = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The control loop on this charger's devices, and its offer published as the state record.

    This is the agent's own control wiring (``ControlLoop`` on the configured devices, the
    ``Allocator`` with the loop's ``set_share``, the offer published through ``publisher``),
    and the seam simulations use: ``sims.virtual`` starts it for every agent of a packet-level
    run on an already running ``node``, with ``sim_world`` the one shared ``SimWorld`` and
    ``state_dir`` ``None`` (nothing kept across restarts). ``allocation`` is filled with the
    running ``Allocator`` (key ``"allocator"``); ``stats_sources`` with the loop's statistics.
    Start it with ``await nursery.start(run_control, ...)``: it is ready when the loop runs.
    """
    from meshagent.control.limits import Limits
    from meshagent.control.loop import ControlLoop, Devices
    from meshagent.control.offer import offer_from_loop

    devices_cfg = config.section("devices")
    control_cfg = config.section("control")
    world = sim_world if sim_world is not None else sim_world_for(
        devices_cfg.meter, devices_cfg.charger, nominal_frequency_hz=control_cfg.nominal_frequency_hz)
    meter, charger = open_devices(devices_cfg, world)
    cert = node.identity.certificate

    from meshagent.allocation.service import Allocator

    alloc_cfg = config.section("allocation")
    holder: dict[str, Any] = {}

    def on_spike(spike: Any) -> None:
        log.info("spike %s %s: deficit %.1f W in %s %s", spike.spike_id, spike.phase.name.lower(),
                 spike.deficit_w, spike.scope, spike.scope_id)
        if "allocator" in holder:
            holder["allocator"].on_spike(spike)

    session = None
    inverter = charger.inverter
    if csms_client is not None:  # the connector's OCPP life (statuses, transactions) from its devices
        from meshagent.csms.session import SessionDriver, SessionLogic

        csms_cfg = config.section("csms")
        session = SessionDriver(csms_client, charger, SessionLogic(csms_cfg.sampled_data_interval_s),
                                poll_s=csms_cfg.session_poll_s)
        inverter = session.gate(charger.inverter)  # a refused idToken holds energy transfer off
    loop = ControlLoop(
        control_cfg,
        Devices(meter=meter, inverter=inverter, vehicle=charger.vehicle,
                thermal=charger.thermal, tamper=charger.tamper),
        node_id=node.node_id,
        scope_id=cert.site_id if control_cfg.meter_scope == "site" else cert.transformer_id,
        state_dir=state_dir,
        on_spike=on_spike,
        offer_hold=(lambda: session.logic.offer_hold) if session is not None else None,
    )
    limits = Limits.from_section(control_cfg)
    stats_sources["control"] = loop.statistics
    ratings = alloc_cfg.ratings_w()

    def headroom_w() -> dict[str, float]:
        heads = dict(ratings)
        own = cert.transformer_id
        if (alloc_cfg.headroom_source == "rating-minus-load" and control_cfg.meter_scope == "transformer"
                and own in heads and loop.last_meter is not None):
            heads[own] = max(0.0, heads[own] - max(0.0, loop.last_meter.load_w))
        return heads

    allocator = Allocator(
        node,
        limit_now_w=lambda: offer_from_loop(loop, limits).discharge_available_w,
        weight_now=lambda: offer_from_loop(loop, limits).energy_above_min_soc_wh,
        apply=loop.set_share,  # (share, covered)
        headroom_w=headroom_w,
        round2_after_s=alloc_cfg.round2_after_s,
        renew_every_s=alloc_cfg.renew_every_s,
        ttl_ms=int(alloc_cfg.share_ttl_s * 1000),
        response_pu=lambda: loop.logic.response_pu,  # the droop's per unit: frequency events
    )
    holder["allocator"] = allocator
    allocation["allocator"] = allocator
    allocation["headroom_w"] = headroom_w
    stats_sources["allocation"] = allocator.statistics
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            await nursery.start(allocator.run)
            if session is not None:
                await nursery.start(session.run)
            # simulated vehicles come and go (each visit a session) in a world of this agent's
            # own; a world handed in (sim_world, shared by agents in one process) is driven by
            # whoever shares it, not once per agent
            visits = devices_cfg.visits() if world is not None and sim_world is None else None
            if visits is not None:
                await _start_visits(nursery, world, visits)
            task_status.started()
            last = None
            last_at = -float("inf")
            while True:
                await trio.sleep(devices_cfg.record_period_s)
                offer = offer_from_loop(loop, limits)
                now = trio.current_time()
                if offer.differs(last) or now - last_at >= devices_cfg.record_heartbeat_s:
                    record = publisher.set_offer(
                        discharge_available_w=offer.discharge_available_w,
                        energy_above_min_soc_wh=offer.energy_above_min_soc_wh,
                        soc=offer.soc,
                        thermal_derating=offer.thermal_derating,
                        faults=offer.faults,
                        rated_discharge_w=loop.logic.nameplate_discharge_w,
                    )
                    if record is not None:  # what a proposer may plan on: see Member.offer
                        allocator.offer(record.updated_at_ms, record.discharge_available_w,
                                        record.energy_above_min_soc_wh, record.rated_discharge_w)
                    last, last_at = offer, now
    finally:
        with trio.CancelScope(shield=True):
            await meter.aclose()
            await charger.aclose()


async def _signals(node: MeshNode, nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _sig in signals:
            log.info("signal received: leaving the mesh (again to stop at once)")
            nursery.start_soon(node.leave)
            async for _sig2 in signals:
                node.stop()
                return


async def _discover(node: MeshNode) -> None:
    from meshagent.mesh.discovery import Discovery

    discovery = Discovery(node.node_id, node.address)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        async for peer in discovery.peers:
            if node.core.member(peer.node_id) is None:
                log.info("zeroconf found %s at %s", peer.node_id, format_address(peer.address))
                node.join([peer.address])
