"""End to end: separate `meshagent run` processes over real UDP split a spike at one meter.

A simulated site (its own process, real Modbus TCP) has a meter and three chargers with
vehicles; three agents, one per charger, read the same meter. Only agent-0's certificate has
the ``detector`` role. When the building load steps above PEAK_LOAD_LIMIT, agent-0 plans,
the others' setpoints move, and the meter sees the load come back under the limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meshagent.transport.udp import port_free
from meshagent.trust import keystore
from tests.meshagent.api.agents import OPERATOR_TOKEN, write_token

SCRIPT = Path(sys.executable).with_name("meshagent")
ROOT = Path(__file__).resolve().parents[3]
BASE = f"127.89.{os.getpid() % 250}"
LIMIT_W = 50_000.0


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def api_get(host: str, path: str, timeout: float = 2) -> dict:
    req = urllib.request.Request(f"http://{host}:7947{path}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def test_a_spike_at_the_detector_moves_its_neighbours_and_the_meter_comes_back(tmp_path, monkeypatch):
    hosts = [f"{BASE}.{i + 1}" for i in range(3)]
    site_host = f"{BASE}.100"
    if not all(port_free(h) for h in hosts):
        pytest.skip(f"port 7946 is taken on {BASE}.x")
    out = tmp_path / "site.json"
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    token_file.chmod(0o600)
    monkeypatch.setenv("MESHAGENT_TOKEN_FILE", str(token_file))
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.meshagent.allocation.site_server", site_host, "5020", "3", "30", "15000", "60",
             str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert wait_for(lambda: "load_w" in read(out), 15), "site server did not start"
        ca = keystore.ca_init(tmp_path / "ca")
        for i, host in enumerate(hosts):
            node_id = f"agent-{i}"
            keystore.enroll(ca, node_id, tmp_path / node_id, site_id="site-1", transformer_id="tx-1",
                            roles=("detector",) if i == 0 else ())
            write_token(tmp_path / node_id / "state", "operator", OPERATOR_TOKEN)  # the API asks for one
            seeds = [] if i == 0 else [f"{hosts[0]}:7946"]
            cfg = tmp_path / node_id / "node.toml"
            cfg.write_text(
                f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\n'
                f'api = "{host}:7947"\nseeds = {json.dumps(seeds)}\n\n'
                f'[devices]\nmeter = "modbus+tcp://{site_host}:5020/1"\n'
                f'charger = "modbus+tcp://{site_host}:5020/{11 + i}"\n\n'
                f'[control]\nPEAK_LOAD_LIMIT = "{LIMIT_W / 1000:g}kW"\nnominal_frequency = "50Hz"\n\n'
                f'[allocation]\ntransformers = ["tx-1=400kW"]\n'
            )
            procs.append(subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))

        def capacity_nodes() -> int:
            try:
                body = api_get(hosts[0], "/v1/capacity")
            except OSError:
                return 0
            # every agent has a vehicle to offer
            return sum(1 for t in body["transformers"] if t["available_w"] > 0) and body["nodes"]

        assert wait_for(lambda: capacity_nodes() == 3, 30), "the agents did not share their offers in time"
        before = read(out)
        assert not before["stepped"] and before["load_w"] < LIMIT_W
        # the step, as soon as they share their offers: 55 kW against a 50 kW limit. The agent
        # processes are still busy starting, so ACKs may come after round2_after (20 ms): a
        # silent member keeps its share (before, it released it and 5.4 kW of 15 kW stayed
        # uncovered in one CI run; docs/allocation.md "Late or lost ACKs").
        (tmp_path / "site.json.step").write_text("")
        assert wait_for(lambda: read(out).get("stepped"), 10)
        def debug() -> str:
            parts = [json.dumps(read(out))]
            for h in hosts:
                for path in ("/v1/spikes", "/v1/stats", "/v1/capacity"):
                    try:
                        body = api_get(h, path)
                        parts.append(f"{h}{path}: {json.dumps(body.get('allocation', body) if path == '/v1/stats' else body)}")
                    except OSError as exc:
                        parts.append(f"{h}{path}: {exc}")
            return "\n".join(parts)

        assert wait_for(lambda: read(out)["load_w"] <= LIMIT_W * 1.005, 10), debug()
        # the neighbours' setpoints moved, not only the detector's (a member whose record shows a
        # fault, e.g. a slow Modbus read on a loaded machine, sits out until its next record)
        assert wait_for(lambda: sum(1 for w in read(out)["chargers_w"] if w < -100) >= 2, 10), debug()
        assert read(out)["load_w"] <= LIMIT_W * 1.005, debug()
        r = subprocess.run([str(SCRIPT), "spikes", "--peer", f"{hosts[0]}:7947"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "spike" in r.stdout and "agent-1" in r.stdout, r.stdout + r.stderr
        cap = api_get(hosts[1], "/v1/capacity", timeout=5)
        assert cap["transformers"][0]["transformer_id"] == "tx-1" and cap["transformers"][0]["headroom_w"] == 400_000.0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            text, _ = p.communicate(timeout=5)
            print(text[-3000:])
