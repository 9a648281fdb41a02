"""Agents in separate network namespaces: seed join, a partition that heals, zeroconf.

Each agent is a real `meshagent run` process in its own namespace (10.77.0.k:7946 on a
private bridge, see tests/netns.py); its API listens on the namespace's own loopback, and
`meshagent members` is run inside the namespace to read it. Partitions are nftables rules.
Real processes share no virtual clock: the test polls with deadlines, on the local preset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, write_token
from tests.netns import NetnsLab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCRIPT = str(Path(sys.executable).with_name("meshagent"))


def write_node(tmp: Path, ca, node_id: str, address: str, *, seeds: list[str], zeroconf: bool = False) -> Path:
    keystore.enroll(ca, node_id, tmp / node_id, site_id="site-1", transformer_id="tx-1")
    cfg = tmp / node_id / "node.toml"
    cfg.write_text(
        f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{address}:7946"\n'
        f'seeds = {json.dumps(seeds)}\nzeroconf = {"true" if zeroconf else "false"}\n'
    )
    write_token(tmp / node_id / "state", "operator", OPERATOR_TOKEN)  # the API asks for a token
    return cfg


def use_token(tmp: Path, monkeypatch) -> None:
    """`meshagent members` (run inside each namespace, inheriting our environment) sends it."""
    token_file = tmp / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    token_file.chmod(0o600)
    monkeypatch.setenv("MESHAGENT_TOKEN_FILE", str(token_file))


# The agent's API listens on its namespace's loopback: a bare interpreter reads it there (a
# poll through the `meshagent` console script would import the agent, ~1 s of CPU each time;
# the command itself is run once below).
_READ_MEMBERS = (
    "import json, sys, urllib.request\n"
    "req = urllib.request.Request('http://127.0.0.1:7947/v1/members', headers={'Authorization': 'Bearer ' + sys.argv[1]})\n"
    "print(urllib.request.urlopen(req, timeout=5).read().decode())\n"
)


def view(lab: NetnsLab, node) -> dict[str, str]:
    done = lab.run(node, [sys.executable, "-I", "-c", _READ_MEMBERS, OPERATOR_TOKEN])
    if done.returncode != 0:
        return {}
    return {m["node_id"]: m["status"] for m in json.loads(done.stdout)["members"]}


def cli_view(lab: NetnsLab, node) -> dict[str, str]:
    done = lab.run(node, [SCRIPT, "members", "--json"])
    assert done.returncode == 0, done.stderr
    return {m["node_id"]: m["status"] for m in json.loads(done.stdout)["members"]}


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_seed_join_and_a_partition_that_heals(tmp_path, monkeypatch):
    use_token(tmp_path, monkeypatch)
    with NetnsLab() as lab:
        ca = keystore.ca_init(tmp_path / "ca")
        nodes = [lab.node(name) for name in "abcd"]
        ids = [f"ns-{n.name}" for n in nodes]
        for i, n in enumerate(nodes):
            cfg = write_node(tmp_path, ca, ids[i], n.address, seeds=[] if i == 0 else [f"{nodes[0].address}:7946"])
            lab.popen(n, [SCRIPT, "run", "--config", str(cfg)])
        everyone = set(ids)
        assert wait_for(lambda: all(set(view(lab, n)) == everyone for n in nodes), 30), [view(lab, n) for n in nodes]
        assert set(cli_view(lab, nodes[1])) == everyone  # the operator's command, inside the namespace

        left, right = nodes[:2], nodes[2:]
        for x in left:
            for y in right:
                lab.cut(x, y)
        assert wait_for(
            lambda: view(lab, nodes[0]).get("ns-c") == "dead" and view(lab, nodes[3]).get("ns-a") == "dead", 30
        ), (view(lab, nodes[0]), view(lab, nodes[3]))

        for x in left:
            for y in right:
                lab.restore(x, y)
        # nobody is told to rejoin: push-pull with dead members and the seeds heal the split
        healed = lambda: all(  # noqa: E731
            sorted(view(lab, n).values()) == sorted(["alive (self)", "alive", "alive", "alive"]) for n in nodes
        )
        assert wait_for(healed, 60), [view(lab, n) for n in nodes]
    assert lab.leftovers() == []


def test_zeroconf_discovery_between_namespaces(tmp_path, monkeypatch):
    use_token(tmp_path, monkeypatch)
    with NetnsLab() as lab:
        ca = keystore.ca_init(tmp_path / "ca")
        a, b = lab.node("a"), lab.node("b")
        for n in (a, b):
            cfg = write_node(tmp_path, ca, f"zc-{n.name}", n.address, seeds=[], zeroconf=True)
            lab.popen(n, [SCRIPT, "run", "--config", str(cfg)])
        assert wait_for(lambda: view(lab, a).get("zc-b") == "alive" and view(lab, b).get("zc-a") == "alive", 30), (
            view(lab, a), view(lab, b),
        )
    assert lab.leftovers() == []
