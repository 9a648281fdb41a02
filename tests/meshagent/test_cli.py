"""The real console script in a subprocess: installer flows and user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("meshagent")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"console script not installed next to {sys.executable}"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_enroll_check_revoke_flow(tmp_path):
    r = run("ca", "init", str(tmp_path / "ca"))
    assert r.returncode == 0, r.stderr
    r = run("enroll", "charger-1", "--ca", str(tmp_path / "ca"), "--site", "site-a", "--transformer", "tx-1",
            "--role", "detector", "--out", str(tmp_path / "charger-1"))
    assert r.returncode == 0, r.stderr
    assert "enrolled charger-1: site site-a, transformer tx-1, roles detector" in r.stdout
    r = run("config", "check", str(tmp_path / "charger-1" / "node.toml"))
    assert r.returncode == 0, r.stderr
    assert "ok; node charger-1" in r.stdout
    r = run("ca", "revoke", "charger-1", "--ca", str(tmp_path / "ca"))
    assert r.returncode == 0 and "revoked:" in r.stdout


def test_keygen_then_enroll_public_key(tmp_path):
    r = run("keygen", "--out", str(tmp_path / "node.key"))
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(tmp_path / "node.key").st_mode & 0o777) == "0o600"
    run("ca", "init", str(tmp_path / "ca"))
    r = run("enroll", "c2", "--ca", str(tmp_path / "ca"), "--site", "s", "--transformer", "t",
            "--public-key", str(tmp_path / "node.key.pub"), "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "b" / "node.key").exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["enroll", "x"], 2, "Missing option '--ca'"),
        (["no-such-command"], 2, "No such command"),
        (["enroll", "x", "--ca", "/nonexistent", "--site", "s", "--transformer", "t"], 1, "no CA in /nonexistent"),
        (["bench", "nope"], 1, "unknown benchmark 'nope'"),
        (["config", "check", "/nonexistent.toml"], 1, "cannot read config file"),
        (["enroll", "x", "--ca", "CA", "--site", "s", "--transformer", "t", "--days", "many"], 2, "--days"),
    ],
)
def test_user_errors_are_one_line_no_traceback(tmp_path, args, code, needle):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == code
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_readable_key_is_one_line_error(tmp_path):
    run("ca", "init", str(tmp_path / "ca"))
    os.chmod(tmp_path / "ca" / "ca.key", 0o644)
    r = run("enroll", "c", "--ca", str(tmp_path / "ca"), "--site", "s", "--transformer", "t")
    assert r.returncode == 1
    assert "can be read by group or others (mode 0644); run: chmod 600" in r.stderr


def test_every_subcommand_has_help():
    top = run("--help")
    assert top.returncode == 0
    for cmd in (["demo"], ["enroll"], ["ca", "init"], ["ca", "revoke"], ["keygen"], ["bench"], ["config", "check"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, cmd


def test_bench_wire_json_is_last_line():
    r = run("bench", "wire", "--quick", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["overhead_bytes"] <= 100
    assert data["sign_encode_us"] > 0 and data["verify_decode_us"] > 0


def test_demo_runs_five_agents_over_real_udp():
    r = run("demo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo passed" in r.stdout and "BAD" not in r.stdout
    for line in ("every node sees every other", "35 kW from 5 nodes", "declared dead by all four",
                 "removed everywhere", "refused: replay", "refused: bad_signature", "refused: bad_certificate"):
        assert line in r.stdout, line
