"""Real agents for the API tests: enrolled bundles with a shared operator token, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from meshagent.api.auth import ensure_token, token_path
from meshagent.trust import keystore

SCRIPT = Path(sys.executable).with_name("meshagent")
OPERATOR_TOKEN = "operator-token-for-tests-0123456789abcdef"
READER_TOKEN = "reader-token-for-tests-0123456789abcdef"


def write_token(state_dir: Path, role: str, value: str) -> Path:
    ensure_token(state_dir, role)  # makes the directory and a 0600 file
    path = token_path(state_dir, role)
    path.write_text(value + "\n")
    return path


def make_bundle(tmp: Path, ca: keystore.CertificateAuthority, node_id: str, host: str, seeds: list[str], *,
                transformer: str = "tx-1", devices: bool = True, api_port: int = 7947) -> Path:
    bundle = tmp / node_id
    keystore.enroll(ca, node_id, bundle, site_id="site-1", transformer_id=transformer)
    cfg = bundle / "node.toml"
    text = (f'[node]\nid = "{node_id}"\n\n[mesh]\npreset = "local"\nbind = "{host}:7946"\ndead_member_reap = "30s"\n'
            f'api = "{host}:{api_port}"\nseeds = {json.dumps(seeds)}\n')
    if devices:
        text += f'\n[devices]\nmeter = "sim://site-1/meter"\ncharger = "sim://{node_id}/charger"\n'
    cfg.write_text(text)
    write_token(bundle / "state", "operator", OPERATOR_TOKEN)
    write_token(bundle / "state", "utility-reader", READER_TOKEN)
    return cfg


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([str(SCRIPT), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=out, env=env)


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
