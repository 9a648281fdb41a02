"""Real agents: separate `meshagent run` processes on their own 127.x addresses, port 7946.

The one place where the mesh runs exactly as installed: console script, config files,
UDP and TCP sockets, HTTP API, signals. Real processes cannot share a virtual clock, so
these tests poll the agents' APIs with a deadline (bounded, local preset).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, write_token

SCRIPT = Path(sys.executable).with_name("meshagent")
BASE = f"127.79.{os.getpid() % 250}"


def make_node(tmp: Path, ca, i: int, seeds: list[str]) -> tuple[Path, str, str]:
    node_id = f"agent-{i}"
    host = f"{BASE}.{i + 1}"
    keystore.enroll(ca, node_id, tmp / node_id, site_id="site-1", transformer_id="tx-1")
    cfg = tmp / node_id / "node.toml"
    cfg.write_text(
        f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\ndead_member_reap = "4s"\n'
        f'api = "{host}:7947"\nseeds = {json.dumps(seeds)}\n\n'
        f'[devices]\nmeter = "sim://site-1/meter"\ncharger = "sim://site-1/charger"\n'
    )
    # the API asks for a token: one operator token for the whole test mesh
    write_token(tmp / node_id / "state", "operator", OPERATOR_TOKEN)
    return cfg, host, node_id


def _api(host: str, path: str) -> dict | None:
    """The agent's HTTP API, read in this process (a poll starting the console script would
    cost about a second of CPU each; the commands themselves are run once below)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{host}:7947{path}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):  # not up yet, or a loaded machine: poll again until the deadline
        return None


def members(host: str) -> dict[str, str]:
    body = _api(host, "/v1/members")
    return {m["node_id"]: m["status"] for m in body["members"]} if body else {}


def capacity(host: str) -> dict:
    return _api(host, "/v1/capacity?scope=all") or {}


def cli_json(*args: str) -> dict:
    r = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_agents_join_revoke_detect_a_kill_and_see_a_leave(tmp_path, monkeypatch):
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    token_file.chmod(0o600)
    monkeypatch.setenv("MESHAGENT_TOKEN_FILE", str(token_file))
    hosts = [f"{BASE}.{i + 1}" for i in range(4)]
    if not all(port_free(h) for h in hosts):
        pytest.skip(f"port 7946 is taken on {BASE}.x")
    ca = keystore.ca_init(tmp_path / "ca")
    procs: list[subprocess.Popen[str]] = []
    try:
        nodes = [make_node(tmp_path, ca, i, [] if i == 0 else [f"{hosts[0]}:7946"]) for i in range(4)]
        for cfg, _host, _id in nodes:
            procs.append(subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert wait_for(lambda: all(len(members(h)) == 4 for h in hosts), 20), [members(h) for h in hosts]
        # the operator's commands, once: the same view as the API's
        listed = cli_json("members", "--peer", f"{hosts[0]}:7947", "--json")
        assert {m["node_id"]: m["status"] for m in listed["members"]} == {
            "agent-0": "alive (self)", "agent-1": "alive", "agent-2": "alive", "agent-3": "alive"}

        # every agent runs its control loop on a simulated charger (a Nissan Leaf: 7 kW out,
        # 60% SoC over a 20% reserve of 39 kWh) and publishes its offer; any peer sums them
        assert wait_for(lambda: capacity(hosts[2]).get("nodes") == 4, 10), capacity(hosts[2])
        cap = cli_json("capacity", "--peer", f"{hosts[2]}:7947")
        assert cap["discharge_available_w"] == 4 * 7000.0
        assert cap["energy_above_min_soc_wh"] == 4 * 0.40 * 39000.0

        # a utility with a utility-reader certificate asks a member's mesh port, signed
        keystore.enroll(ca, "grid-utility", tmp_path / "utility", site_id="grid", transformer_id="none",
                        roles=("utility-reader",))
        r = subprocess.run([str(SCRIPT), "capacity", "--peer", f"{hosts[3]}:7946", "--identity",
                            str(tmp_path / "utility")], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["signed"] and answer["answered_by"] == "agent-3" and answer["nodes"] == 4
        assert answer["discharge_available_w"] == 4 * 7000.0
        r = subprocess.run([str(SCRIPT), "capacity", "--peer", f"{hosts[3]}:7946", "--identity",
                            str(tmp_path / "agent-0")], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and "no utility-reader or operator role" in r.stderr

        # an operator's or a scraper's view of one agent
        import urllib.request

        with urllib.request.urlopen(urllib.request.Request(
                f"http://{hosts[0]}:7947/v1/stats", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}), timeout=5) as resp:
            stats = json.loads(resp.read())
        assert stats["node"]["membership"]["alive"] == 3
        assert stats["control"]["cycles"] > 100 and stats["authsync"]["list_version"] == 0
        with urllib.request.urlopen(f"http://{hosts[0]}:7947/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'meshagent_members{status="alive"} 3' in metrics
        assert "meshagent_control_cycles " in metrics and 'meshagent_dropped_total{reason="replay"}' in metrics

        # the operator revokes agent-3 through agent-1's API; the whole mesh drops it
        revoked = keystore.revoke(ca, "agent-3")
        r = subprocess.run([str(SCRIPT), "revoke", *map(str, revoked), "--api", f"{hosts[1]}:7947"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and "revoked agent-3" in r.stdout, r.stderr
        assert wait_for(lambda: all("agent-3" not in members(h) for h in hosts[:3]), 10)
        assert list((tmp_path / "agent-0" / "state" / "revocations").glob("agent-3-*.rev"))
        assert wait_for(lambda: capacity(hosts[0]).get("discharge_available_w") == 3 * 7000.0, 10)

        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait(5)
        assert wait_for(lambda: members(hosts[0]).get("agent-2") == "dead" and members(hosts[1]).get("agent-2") == "dead", 20)
        assert "agent-3" not in members(hosts[0])  # still out, though it keeps talking
        # dead members are reaped (mesh.dead_member_reap = 4s here), and so is their offer
        assert wait_for(lambda: "agent-2" not in members(hosts[0]) and "agent-2" not in members(hosts[1]), 15)
        assert wait_for(lambda: capacity(hosts[0]).get("discharge_available_w") == 2 * 7000.0, 10)

        procs[1].send_signal(signal.SIGTERM)  # graceful: peers see "left", not "dead"
        assert procs[1].wait(10) == 0
        assert wait_for(lambda: members(hosts[0]).get("agent-1") == "left", 10), members(hosts[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            out, _ = p.communicate(timeout=5)
            if p.returncode not in (0, -9):
                print(out)


def test_run_with_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nid = "x"\n[mesh]\nbind = "not-an-ip:7946"\n')
    r = subprocess.run([str(SCRIPT), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "mesh.bind: 'not-an-ip' is not a numeric IPv4 or IPv6 address" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_members_without_agent_is_one_line():
    r = subprocess.run([str(SCRIPT), "members", "--api", "127.0.0.1:1"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "no agent API at 127.0.0.1:1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
