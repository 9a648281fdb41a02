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
answers from it. The state record is published by one ``RecordPublisher``, which merges the
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

from meshagent.api.http import Api
from meshagent.config import NodeConfig
from meshagent.csms.authsync import (
    AuthListKeeper,
    AuthSync,
    ClientAuthList,
    RecordPublisher,
    StoredAuthList,
    local_decision,
)
from meshagent.errors import MeshagentError
from meshagent.mesh.config import MeshSection, parse_host_port
from meshagent.mesh.node import MeshNode
from meshagent.mesh.queries import serve_queries
from meshagent.statedir import ensure_state_dir, next_boot_epoch
from meshagent.transport.udp import UdpTransport, format_address
from meshagent.trust import keystore
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


def build_api(
    node: MeshNode,
    on_join: Any,
    on_leave: Any,
    auth: AuthListKeeper | None = None,
    stats_sources: dict[str, Any] | None = None,
) -> Api:
    """The agent's HTTP routes. ``stats_sources``: name -> ``statistics()`` of other services
    (control loop, authorization sync, CSMS client), shown by /v1/stats and /metrics."""
    sources: dict[str, Any] = stats_sources if stats_sources is not None else {}
    api = Api()

    if auth is not None:

        @api.route("GET", "/v1/authorize")
        def authorize(params: dict[str, str]) -> tuple[int, Any]:
            # The decision from the local list alone: what the charger does with the CSMS
            # unreachable (a token not on the list is refused). It never waits on the CSMS.
            from urllib.parse import unquote

            token = unquote(params.get("id_token", ""))
            token_type = unquote(params.get("type", "ISO14443"))
            if not token:
                raise ValueError("give id_token=TOKEN (and type=, default ISO14443)")
            auth_list = auth.auth_list
            decision = local_decision(auth_list, token, token_type, node.endpoint.wall_clock_ms())
            return 200, {
                "id_token": token, "type": token_type, "accepted": decision.accepted,
                "status": decision.status, "source": decision.source,
                "list_version": auth_list.version, "answered_by": node.node_id,
            }

    @api.route("GET", "/v1/members")
    def members(_params: dict[str, str]) -> tuple[int, Any]:
        now = trio.current_time()
        rows = [
            {
                "node_id": node.node_id,
                "status": "alive (self)",
                "incarnation": node.core.incarnation,
                "address": format_address(node.address),
                "site_id": node.local.site_id,
                "transformer_id": node.local.transformer_id,
                "record_age_s": _record_age(node, node.node_id),
                "since_s": None,
            }
        ]
        for m in sorted(node.members(), key=lambda m: m.node_id):
            rows.append(
                {
                    "node_id": m.node_id,
                    "status": m.status.value,
                    "incarnation": m.incarnation,
                    "address": format_address(m.address),
                    "site_id": m.site_id,
                    "transformer_id": m.transformer_id,
                    "record_age_s": _record_age(node, m.node_id),
                    "since_s": round(now - m.changed_at, 3),
                }
            )
        return 200, {"node_id": node.node_id, "members": rows}

    @api.route("GET", "/v1/capacity")
    def capacity(params: dict[str, str]) -> tuple[int, Any]:
        cap = node.capacity(parse_scope(params.get("scope", "all")))
        return 200, {
            "scope": {"kind": cap.scope.kind.name.lower(), "id": cap.scope.id},
            "discharge_available_w": cap.discharge_available_w,
            "energy_above_min_soc_wh": cap.energy_above_min_soc_wh,
            "nodes": cap.nodes,
            "nodes_with_faults": cap.nodes_with_faults,
            "oldest_updated_at_ms": cap.oldest_updated_at_ms,
            "answered_by": node.node_id,
        }

    @api.route("GET", "/v1/stats")
    def stats(_params: dict[str, str]) -> tuple[int, Any]:
        import attrs

        body = {"node": attrs.asdict(node.statistics())}
        body.update({name: attrs.asdict(fn()) for name, fn in sorted(sources.items())})
        return 200, body

    @api.route("POST", "/v1/join")
    def join(params: dict[str, str]) -> tuple[int, Any]:
        seeds = [parse_host_port(s) for s in params.get("seeds", "").split(",") if s]
        if not seeds:
            raise ValueError("give seeds=HOST[:PORT][,HOST[:PORT]...]")
        on_join(seeds)
        return 202, {"joining": [format_address(s) for s in seeds]}

    @api.route("POST", "/v1/leave")
    def leave(_params: dict[str, str]) -> tuple[int, Any]:
        on_leave()
        return 202, {"leaving": node.node_id}

    @api.route("POST", "/v1/revocations")
    def revoke(params: dict[str, str]) -> tuple[int, Any]:
        try:
            record = bytes.fromhex(params.get("record", ""))
        except ValueError:
            raise ValueError("record must be hex") from None
        revoked = node.revoke(record)
        return 200, {"revoked": revoked}

    @api.route("GET", "/metrics")
    def metrics(_params: dict[str, str]) -> tuple[int, Any]:
        s = node.statistics()
        m = s.membership
        lines = [
            f"meshagent_members{{status=\"alive\"}} {m.alive}",
            f"meshagent_members{{status=\"suspect\"}} {m.suspect}",
            f"meshagent_members{{status=\"dead\"}} {m.dead}",
            f"meshagent_members{{status=\"left\"}} {m.left}",
            f"meshagent_health_score {m.health_score}",
            f"meshagent_datagrams_sent_total {s.datagrams_sent}",
            f"meshagent_datagrams_received_total {s.datagrams_received}",
        ]
        lines += [f"meshagent_dropped_total{{reason=\"{k}\"}} {v}" for k, v in sorted(s.dropped.items())]
        import attrs

        for name, fn in sorted(sources.items()):
            for key, value in attrs.asdict(fn()).items():
                if isinstance(value, bool):
                    value = int(value)
                if isinstance(value, int | float):
                    lines.append(f"meshagent_{name}_{key} {value}")
        return 200, "\n".join(lines) + "\n"

    return api


def _record_age(node: MeshNode, node_id: str) -> float | None:
    rec = node.core.record(node_id)
    if rec is None:
        return None
    return round(max(0, node.endpoint.wall_clock_ms() - rec.updated_at_ms) / 1000, 3)


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


async def run_agent(config: NodeConfig, *, task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED) -> None:
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
    transport = await UdpTransport.bind(mesh.bind, advertise=mesh.advertise, max_datagram_bytes=config.wire.max_datagram_bytes)
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
        on_revocation=persist_revocations,
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
        if devices_cfg.configured:
            await nursery.start(_run_control, config, node, state_dir, publisher, stats_sources)
        query_stats = serve_queries(node)
        stats_sources["queries"] = lambda: query_stats
        sync = AuthSync(node, keeper, publisher)
        await nursery.start(sync.run)
        stats_sources["authsync"] = sync.statistics
        if client is not None:
            await client.end_interrupted_transactions()
            await nursery.start(client.run)
            stats_sources["csms"] = client.statistics
        api = build_api(node, on_join, on_leave, keeper, stats_sources)
        from meshagent.control.operator import add_routes as add_control_routes

        # the control loop registers its statistics() there; the bound method knows its loop
        add_control_routes(api, lambda: getattr(stats_sources.get("control"), "__self__", None))
        api_address = await nursery.start(api.serve, mesh.api[0], mesh.api[1])
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


async def _run_control(config: NodeConfig, node: MeshNode, state_dir: Path, publisher: RecordPublisher,
                       stats_sources: dict[str, Any], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The control loop on this charger's devices, and its offer published as the state record."""
    from hardware.connect import open_charger, open_site_meter
    from hardware.simulated.site import SimWorld
    from meshagent.control.limits import Limits
    from meshagent.control.loop import ControlLoop, Devices
    from meshagent.control.offer import offer_from_loop

    devices_cfg = config.section("devices")
    control_cfg = config.section("control")
    world = SimWorld(clock=trio.current_time)  # only used by sim:// URLs
    meter = open_site_meter(devices_cfg.meter, world=world)
    for site in world.sites.values():  # a simulated grid runs at the nominal frequency we expect
        site.set_grid(frequency_hz=control_cfg.nominal_frequency_hz)
    charger = open_charger(devices_cfg.charger, world=world)
    cert = node.identity.certificate

    def on_spike(spike: Any) -> None:  # the allocation (next issue) takes these over
        log.info("spike %s %s: deficit %.1f W in %s %s", spike.spike_id, spike.phase.name.lower(),
                 spike.deficit_w, spike.scope, spike.scope_id)

    loop = ControlLoop(
        control_cfg,
        Devices(meter=meter, inverter=charger.inverter, vehicle=charger.vehicle,
                thermal=charger.thermal, tamper=charger.tamper),
        node_id=node.node_id,
        scope_id=cert.site_id if control_cfg.meter_scope == "site" else cert.transformer_id,
        state_dir=state_dir,
        on_spike=on_spike,
    )
    limits = Limits.from_section(control_cfg)
    stats_sources["control"] = loop.statistics
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            task_status.started()
            last = None
            last_at = -float("inf")
            while True:
                await trio.sleep(devices_cfg.record_period_s)
                offer = offer_from_loop(loop, limits)
                now = trio.current_time()
                if offer.differs(last) or now - last_at >= devices_cfg.record_heartbeat_s:
                    publisher.set_offer(
                        discharge_available_w=offer.discharge_available_w,
                        energy_above_min_soc_wh=offer.energy_above_min_soc_wh,
                        soc=offer.soc,
                        thermal_derating=offer.thermal_derating,
                        faults=offer.faults,
                    )
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
