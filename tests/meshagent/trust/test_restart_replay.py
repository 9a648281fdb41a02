"""Replay across a restart: packets an agent accepted before a crash are refused after it.

Separate processes: a real ``meshagent run`` agent; this test plays a certified peer that
sends it signed datagrams and keeps their bytes (as an attacker capturing them on the wire
would), kills the agent with SIGKILL (nothing saved on the way out), starts it again and
replays every captured datagram within the skew window.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio

from meshagent.transport.udp import UdpTransport, port_free
from meshagent.trust import keystore
from meshagent.trust.endpoint import system_wall_clock_ms
from protocol.messages import Revoke
from protocol.wire import Sealer

SCRIPT = Path(sys.executable).with_name("meshagent")
BASE = f"127.74.{os.getpid() % 250}"
CAPTURED = 20


def metrics(host: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://{host}:7947/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'(meshagent_node_datagrams_received|meshagent_datagrams_received_total|meshagent_dropped_total\{reason="(\w+)"\}) (\S+)', line)
        if m:
            out[m.group(2) or "accepted"] = float(m.group(3))
    return out


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def start(cfg: Path) -> subprocess.Popen[bytes]:
    with (cfg.parent / "agent.log").open("ab") as log:
        return subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)


async def send_packets(peer_host: str, agent: tuple[str, int], packets: list[bytes]) -> None:
    async with await UdpTransport.bind((peer_host, 0)) as t:
        for p in packets:
            await t.send_datagram(agent, p)
            await trio.sleep(0.01)


@pytest.mark.slow
def test_packets_accepted_before_a_kill_are_refused_after_the_restart(tmp_path):
    host, peer_host = f"{BASE}.1", f"{BASE}.2"
    if not port_free(host):
        pytest.skip(f"port 7946 is taken on {host}")
    ca = keystore.ca_init(tmp_path / "ca")
    keystore.enroll(ca, "agent-0", tmp_path / "agent-0", site_id="site-1", transformer_id="tx-1")
    keystore.enroll(ca, "peer", tmp_path / "peer", site_id="site-1", transformer_id="tx-1")
    cfg = tmp_path / "agent-0" / "node.toml"
    cfg.write_text(
        f'[node]\nid = "agent-0"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\napi = "{host}:7947"\n'
        # one host, one clock: no allowance needed (the API may answer before the mesh starts)
        f'clock_error = "0s"\n\n'
        f'[devices]\nmeter = "sim://site-1/meter"\ncharger = "sim://site-1/charger"\n'
    )
    peer = keystore.load_identity(tmp_path / "peer" / "node.key", tmp_path / "peer" / "node.cert",
                                  tmp_path / "peer" / "ca.pub")
    proc = start(cfg)
    try:
        assert wait_for(lambda: "accepted" in metrics(host), 20), (cfg.parent / "agent.log").read_text()
        seal = Sealer(peer, boot_epoch=1)
        captured = [seal.seal(Revoke(revocation=b"captured %d" % i), system_wall_clock_ms(), attach_certificate=True)
                    for i in range(CAPTURED)]
        trio.run(send_packets, peer_host, (host, 7946), captured)
        assert wait_for(lambda: metrics(host).get("accepted", 0) >= CAPTURED, 10), metrics(host)

        proc.kill()  # SIGKILL: a crash or power loss, nothing saved on the way out
        proc.wait(5)
        proc = start(cfg)
        assert wait_for(lambda: "accepted" in metrics(host), 20)
        trio.run(send_packets, peer_host, (host, 7946), captured)  # well within the 30 s skew
        seen = lambda: metrics(host).get("accepted", 0) + metrics(host).get("issued_before_start", 0)  # noqa: E731
        assert wait_for(lambda: seen() >= CAPTURED, 10), metrics(host)
        after = metrics(host)
        assert after["accepted"] == 0, after  # replays accepted after the restart
        assert after["issued_before_start"] == CAPTURED

        # and the peer is not shut out: what it issues now is accepted
        fresh = [seal.seal(Revoke(revocation=b"fresh"), system_wall_clock_ms(), attach_certificate=True)]
        trio.run(send_packets, peer_host, (host, 7946), fresh)
        assert wait_for(lambda: metrics(host).get("accepted", 0) == 1, 10), metrics(host)
    finally:
        proc.kill()
        proc.wait(5)
