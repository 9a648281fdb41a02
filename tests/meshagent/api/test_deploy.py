"""deploy/: the systemd unit (systemd-analyze verify), the sysctl drop-in, the Kubernetes
manifests (validated offline against the schemas kubernetes-validate ships)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_systemd_unit_verifies(tmp_path):
    unit = DEPLOY / "systemd" / "meshagent.service"
    text = unit.read_text()
    for line in ("Restart=on-failure", "StateDirectory=meshagent", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "User=meshagent", "Nice=-20",
                 "ExecStart=/usr/bin/meshagent run --config /etc/meshagent/node.toml"):
        assert line in text.splitlines(), line
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the unit's text was checked, not verified")
    # verify needs the ExecStart binary to exist: point it at a stand-in in a copy
    fake = tmp_path / "meshagent"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copy = tmp_path / "meshagent.service"
    copy.write_text(text.replace("/usr/bin/meshagent", str(fake)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "meshagent.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_sysctl_dropin_explains_every_setting():
    lines = (DEPLOY / "sysctl" / "90-meshagent.conf").read_text().splitlines()
    settings = {}
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = int(value)
            assert lines[i - 1].startswith("#"), f"{key.strip()} has no comment saying why"
    assert settings["net.core.somaxconn"] == 4096 and settings["net.ipv4.tcp_max_syn_backlog"] == 8192
    assert settings["net.core.rmem_max"] >= 4 * 1024 * 1024 and settings["net.core.wmem_max"] >= 4 * 1024 * 1024


def test_kubernetes_manifests_validate_offline():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed")
    yaml = pytest.importorskip("yaml", reason="PyYAML (a kubernetes-validate dependency) is not installed")
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "meshagent.yaml").read_text()) if d]
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)
    kinds = {d["kind"]: d for d in docs}
    svc, sts = kinds["Service"], kinds["StatefulSet"]
    assert svc["spec"]["clusterIP"] == "None"
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} >= {(7946, "UDP"), (7946, "TCP")}
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert "/readyz" in " ".join(main["readinessProbe"]["exec"]["command"])
    assert "/healthz" in " ".join(main["livenessProbe"]["exec"]["command"])
    assert any(v.get("secret") for v in pod["volumes"]) and any(v.get("configMap") for v in pod["volumes"])
    assert "meshagent-0.meshagent:7946" in kinds["ConfigMap"]["data"]["node.toml"]
