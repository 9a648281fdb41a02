"""``meshagent demo``: the largest real thing this build can show, on embedded defaults.

Five chargers' agents, each the same ``run_agent`` that ``meshagent run`` starts, in one
process on real UDP and TCP sockets, each on its own loopback address on port 7946 (an
ephemeral port where 7946 is taken), each running its control loop on a simulated charger
with a vehicle plugged in:

1. an operator CA is made and five chargers are enrolled (temporary directory);
2. they join through one seed and every node sees every other;
3. two different peers are asked for the discharge capacity of the mesh and of one site;
4. one agent stops dead: the others declare it dead (SWIM with Lifeguard);
5. the CA revokes another: the revocation spreads and every node drops it;
6. packets that must not pass are fired at a live agent's real UDP port: a replay, a
   forgery, a tampered packet, a stranger's; all are refused and counted.

The allocation of a spike's deficit and the spike scenarios come with the next issues.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from meshagent.transport.udp import port_free
from meshagent.trust import keystore

PORT = 7946
NODES = (
    ("charger-1", "depot-north", "tx-1"),
    ("charger-2", "depot-north", "tx-1"),
    ("charger-3", "depot-north", "tx-1"),
    ("charger-4", "depot-south", "tx-2"),
    ("charger-5", "depot-south", "tx-2"),
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _write_config(directory: Path, node_id: str, host: str, port: int, seeds: list[str], api_port: int = 0) -> Path:
    cfg = directory / "node.toml"
    seed_list = ", ".join(f'"{s}"' for s in seeds)
    cfg.write_text(
        f'[node]\nid = "{node_id}"\n\n'
        f'[mesh]\npreset = "local"\nbind = "{host}:{port}"\napi = "{host}:{api_port}"\nseeds = [{seed_list}]\n\n'
        f'[devices]\nmeter = "sim://site/meter"\ncharger = "sim://site/charger"\n'
    )
    return cfg


async def _wait(predicate: Any, timeout_s: float) -> float | None:
    t0 = trio.current_time()
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (watching several agents from outside)
            await trio.sleep(0.05)
        return trio.current_time() - t0
    return None


async def _demo(workdir: Path) -> int:
    from meshagent.agent import run_agent
    from meshagent.config import load_config
    from meshagent.transport.udp import format_address
    from protocol.state import Scope
    from protocol.swim import MemberStatus

    failures = 0

    def check(label: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        _say(f"  {'ok ' if ok else 'BAD'} {label:<46} {detail}")

    _say(f"meshagent demo: five chargers' agents on real UDP/TCP sockets (files in {workdir})")
    ca = keystore.ca_init(workdir / "ca")
    hosts = [f"127.84.0.{i + 1}" for i in range(len(NODES))]
    port = PORT if all(port_free(h, PORT) for h in hosts) else 0
    _say(f"  operator CA {ca.issuer_id.hex()}; {len(NODES)} chargers enrolled; "
         f"{'port 7946' if port else 'port 7946 busy: ephemeral ports'}")

    nodes: list[Any] = []
    page_port = 0
    scopes: dict[str, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        for (node_id, site, tx), host in zip(NODES, hosts, strict=True):
            bundle = keystore.enroll(ca, node_id, workdir / node_id, site_id=site, transformer_id=tx)
            seeds = [format_address(nodes[0].address)] if nodes else []
            api_port = 7947 if not nodes and port_free(host, 7947) else 0  # charger-1 serves the page
            page_port = api_port if not nodes else page_port
            config = load_config(_write_config(bundle.directory, node_id, host, port, seeds, api_port))

            async def run_one(config: Any = config, node_id: str = node_id, *,
                              task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                with trio.CancelScope() as scope:
                    scopes[node_id] = scope
                    await run_agent(config, task_status=task_status)

            nodes.append(await nursery.start(run_one))
        by_id = {n.node_id: n for n in nodes}
        if page_port:
            from meshagent.api.auth import read_token_file

            token = read_token_file(workdir / "charger-1" / "state" / "api" / "operator.token")
            _say(f"  operator page: http://{hosts[0]}:{page_port}/  (token {token}; live while the demo runs)")
        for n in nodes:
            _say(f"    {n.node_id:<10} udp+tcp {format_address(n.address):<20} site {n.local.site_id}, {n.local.transformer_id}")

        # 2. membership
        took = await _wait(lambda: all(n.core.num_live == len(nodes) for n in nodes), 20)
        check("every node sees every other", took is not None,
              f"joined through charger-1 in {took:.2f} s" if took is not None else "timed out")

        # 3. capacity from any peer (each offer: a Nissan Leaf, 7 kW out, 60% SoC over a 20% reserve)
        await _wait(lambda: all(n.capacity().nodes == len(nodes) for n in nodes), 10)
        whole = by_id["charger-4"].capacity()
        north = by_id["charger-2"].capacity(Scope.site("depot-north"))
        check("capacity of the mesh, asked of charger-4", whole.nodes == 5 and whole.discharge_available_w == 35_000,
              f"{whole.discharge_available_w / 1000:g} kW from {whole.nodes} nodes, "
              f"{whole.energy_above_min_soc_wh / 1000:g} kWh above reserve")
        check("capacity of depot-north, asked of charger-2", north.nodes == 3 and north.discharge_available_w == 21_000,
              f"{north.discharge_available_w / 1000:g} kW from {north.nodes} nodes")

        # 4. a failure
        victim = by_id["charger-5"]
        scopes["charger-5"].cancel()
        others = [n for n in nodes if n is not victim]
        took = await _wait(
            lambda: all((m := n.core.member("charger-5")) is not None and m.status is MemberStatus.DEAD for n in others), 30
        )
        check("charger-5 stops dead", took is not None,
              f"declared dead by all four in {took:.2f} s" if took is not None else "not detected")

        # 5. a revocation
        (rev_path,) = keystore.revoke(ca, "charger-4")
        (record,) = keystore.read_revocations(rev_path.parent)
        by_id["charger-1"].revoke(record)
        rest = [n for n in others if n.node_id != "charger-4"]
        took = await _wait(lambda: all(n.core.member("charger-4") is None for n in rest), 10)
        check("charger-4 revoked by the CA", took is not None,
              f"removed everywhere in {took:.2f} s" if took is not None else "still present")
        cap = by_id["charger-3"].capacity()
        check("capacity after both", cap.nodes == 3, f"{cap.discharge_available_w / 1000:g} kW from {cap.nodes} nodes")

        # 6. hostile packets at a live agent's real socket
        await _hostile(by_id, check)

        for scope in scopes.values():
            scope.cancel()
    _say("demo passed" if failures == 0 else f"demo FAILED: {failures} unexpected outcomes")
    return 0 if failures == 0 else 1


async def _hostile(by_id: dict[str, Any], check: Any) -> None:
    from protocol.messages import Revoke
    from protocol.wire import Sealer

    target = by_id["charger-2"]
    sender = by_id["charger-1"]
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        genuine = sender.endpoint.seal(Revoke(revocation=b"not a revocation"))
        mallory = keystore.new_key()
        forged = Sealer(attrs_evolve(sender.identity, key=mallory), sender.endpoint.sealer.boot_epoch + 1).seal(
            Revoke(revocation=b"x"), _now_ms())
        tampered = bytearray(sender.endpoint.seal(Revoke(revocation=b"y")))
        tampered[30] ^= 1
        stranger_ca = keystore.ca_init(Path(tempfile.mkdtemp(prefix="meshagent-stranger-")) / "ca")
        bundle = keystore.enroll(stranger_ca, "intruder", stranger_ca.directory.parent / "intruder",
                                 site_id="depot-north", transformer_id="tx-1")
        intruder = keystore.load_identity(bundle.directory / "node.key", bundle.directory / "node.cert",
                                          bundle.directory / "ca.pub", "intruder")
        stranger = Sealer(intruder, 1).seal(Revoke(revocation=b"z"), _now_ms(), attach_certificate=True)
        cases = (
            ("a genuine packet from charger-1", genuine, None),
            ("the same packet again", genuine, "replay"),
            ("charger-1's name, another key", forged, "bad_signature"),
            ("one byte changed in transit", bytes(tampered), "bad_signature"),
            ("a node certified by another CA", stranger, "bad_certificate"),
            ("garbage", b"\xa1garbage", "truncated"),
        )
        for label, packet, reason in cases:
            before = dict(target.endpoint.statistics().dropped)
            accepted = target.endpoint.statistics().received
            await sock.sendto(packet, target.address)
            await trio.sleep(0.2)
            after = target.endpoint.statistics()
            new = {k for k in after.dropped if after.dropped[k] > before.get(k, 0)}
            if reason is None:
                check(label, after.received > accepted, "accepted" if after.received > accepted else "dropped")
            else:
                check(label, reason in new, f"refused: {reason}" if reason in new else f"not refused as {reason}")


def attrs_evolve(obj: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(obj, **changes)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def run_demo() -> int:
    logging.getLogger("meshagent").setLevel(logging.ERROR)  # the demo prints its own story
    with tempfile.TemporaryDirectory(prefix="meshagent-demo-") as tmp:
        return trio.run(_demo, Path(tmp))
