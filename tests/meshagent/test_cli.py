"""The real console script in a subprocess: installer flows and user errors."""

from __future__ import annotations

import json
import os
import re
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
    from click.testing import CliRunner

    from meshagent.cli.main import cli

    top = run("--help")  # the real console script once
    assert top.returncode == 0 and "Usage:" in top.stdout, top.stderr
    # each subcommand's help is click's, the same in this process (a start-up each cost ~1 s)
    for cmd in (["demo"], ["enroll"], ["ca", "init"], ["ca", "revoke"], ["keygen"], ["bench"], ["config", "check"]):
        r = CliRunner().invoke(cli, [*cmd, "--help"], prog_name="meshagent")
        assert r.exit_code == 0 and "Usage: meshagent" in r.output, (cmd, r.output)


def test_bench_wire_json_is_last_line():
    r = run("bench", "wire", "--quick", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["overhead_bytes"] <= 100
    assert data["sign_encode_us"] > 0 and data["verify_decode_us"] > 0


def test_demo_splits_a_surge_among_24_agents_over_real_udp(tmp_path):
    r = subprocess.run([str(SCRIPT), "demo", "--out", str(tmp_path / "plots")], capture_output=True, text=True,
                       timeout=150)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "demo passed" in out and "BAD" not in out
    for line in ("24 joined through charger-1", "the surge split among the agents", "the meter comes back under the limit",
                 "no charger or transformer past its limit", "every charger with a vehicle answers the dip",
                 "declared dead by all 23", "removed everywhere", "refused: replay", "refused: bad_signature",
                 "refused: bad_certificate", "the vehicles leave: the CSMS bills each one"):
        assert line in out, line
    # billing: every session that ended is billed exactly what its charger's register measured
    billed = re.search(r"(\d+) transactions ended, ([0-9.]+) Wh exported billed, ([0-9.]+) Wh measured", out)
    assert billed and int(billed[1]) == 21 and billed[2] == billed[3] and float(billed[2]) > 0, out
    # the split: the shares ACKed in the first plan's last round sum to its deficit, or the shortfall is reported
    split = re.search(r"chargers ACKed ([0-9.]+) W of ([0-9.]+) W(, shortfall ([0-9.]+) W reported)?", out)
    assert split, out
    acked, deficit = float(split[1]), float(split[2])
    # (over it when round-1 ACKs came after round 2: those members keep their shares; trimmed at the renewal)
    assert abs(acked - deficit) <= 0.1 or (split[4] and abs(acked + float(split[4]) - deficit) <= 0.2) \
        or (acked > deficit and "late ACKs, trimmed at the renewal" in out), split[0]
    # the dip: what the droop of the chargers at their SoC floor cannot deliver, planned over the others
    freq = re.search(r"could not deliver, ([0-9.]+) kW at first, charger-1 planned .*?: ([0-9.]+) kW from (\d+) chargers", out)
    assert freq and float(freq[2]) > 0 and int(freq[3]) >= 10, out
    # the meter back under the limit, measured; every charger inside its limit (the check reads the whole trace)
    under = re.search(r"([0-9.]+) kW at 3 s", out)
    assert under and float(under[1]) <= 200.0, out
    per_charger = re.findall(r"discharge measured at each inverter.*?\n((?:\s+tx-\d.*\n){3})", out)
    assert per_charger, out
    watts = [float(w) for row in per_charger[0].splitlines() for w in row.split(")")[1].split()]
    assert len(watts) == 24 and max(watts) <= 9_600.0 + 0.5  # the largest vehicle exports 9.6 kW
    assert "no response" in out and "central (OCPP)" in out and "(measured)" in out
    # the central baseline: a real OCPP dispatch to the 23 members, timed, landing after the stated meter wait
    central = re.search(r"covered from (\d+) ms after the step = 500 ms mean wait .*?\+ (\d+) ms OCPP dispatch to "
                        r"23 stations \(measured, median of ([0-9, ]+) ms\) \+ 100 ms inverter", out)
    assert central and int(central[1]) >= 600 and 0 < int(central[2]) < int(central[1]), out
    assert len(central[3].split(",")) == 3, central[0]
    applied = re.search(r"step to the shares applied\s+never\s+(\d+) ms\s+(\d+) ms", out)
    assert applied and int(applied[1]) == int(central[1]), out
    for png in ("site-load.png", "discharge.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 10_000, png


def test_demo_without_matplotlib_says_how_to_get_the_plots(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pathlib import Path\n"
        "from sims.demo import Trace, _plots\n"
        f"_plots(Trace(t_s=[0.0], load_w=[1.0], frequency_hz=[60.0], chargers_w=[[0.0]]), Path({str(tmp_path)!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pip install -e '.[sim]' gives the plots" in r.stdout
    assert not list(tmp_path.iterdir())


def test_bench_help_names_every_benchmark():
    from click.testing import CliRunner

    from meshagent.cli.main import cli
    from sims.bench import BENCHMARKS

    r = CliRunner().invoke(cli, ["bench", "--help"])
    names = r.output.split("Names:")[1].split(".")[0]
    assert {n.strip() for n in names.split(",")} == set(BENCHMARKS), r.output
