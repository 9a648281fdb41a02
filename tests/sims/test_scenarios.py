"""Every built-in scenario runs at a small size; the baselines differ as the scenario says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sims
from meshagent.cli.main import main
from sims.scenario import ScenarioError, builtin_scenarios, load_scenario, parse_scenario

SMALL = {"nodes": 12}


def test_the_five_scenarios_are_there() -> None:
    assert set(builtin_scenarios()) >= {"workplace-surge", "generator-trip", "node-deaths", "partition", "csms-outage-day"}


@pytest.mark.parametrize("name", ["workplace-surge", "node-deaths", "partition"])
def test_surges_break_the_limit_only_without_coordination(name: str) -> None:
    report = sims.run(name, duration_s=200, dt_s=0.25, **SMALL)
    b = report["baselines"]
    assert b["none"]["peak_site_kw"] > b["none"]["site_limit_kw"] and b["none"]["limits_violated"] > 0
    assert b["droop"]["limits_violated"] > 0  # frequency-only droop knows nothing of the site limit
    for coordinated in ("central", "mesh"):
        assert b[coordinated]["limits_violated"] == 0
        assert b[coordinated]["spike_to_response_s"]["episodes"] >= 1
    assert b["mesh"]["spike_to_response_s"]["max"] < b["central"]["spike_to_response_s"]["max"]
    assert b["mesh"]["messages_per_node"] > 0


def test_generator_trip_goes_below_59_5_and_v2g_raises_the_nadir() -> None:
    b = sims.run("generator-trip", duration_s=20, **SMALL)["baselines"]
    assert b["none"]["frequency_nadir_hz"] < 59.5
    assert b["none"]["rocof_hz_per_s"] < -1.0
    assert b["droop"]["frequency_nadir_hz"] > b["none"]["frequency_nadir_hz"] + 0.2
    assert b["mesh"]["frequency_nadir_hz"] > b["none"]["frequency_nadir_hz"] + 0.2
    assert b["mesh"]["energy_discharged_per_vehicle_kwh"]["max"] > 0


def test_csms_outage_day_mesh_holds_the_limit_and_billing_completes() -> None:
    b = sims.run("csms-outage-day", **SMALL)["baselines"]
    assert b["central"]["limits_violated"] > 0  # the CSMS cannot dispatch while it is gone
    assert b["mesh"]["limits_violated"] == 0
    for totals in b.values():
        assert totals["sessions_ended"] > 0 and totals["billing_completeness"] == 1.0


def test_runs_are_deterministic_for_a_seed() -> None:
    a = sims.run("node-deaths", duration_s=60, dt_s=0.1, seed=7, **SMALL)
    b = sims.run("node-deaths", duration_s=60, dt_s=0.1, seed=7, **SMALL)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["site"].pop("limit_kw"), "[site] limit_kw: missing key"),
        (lambda d: d["site"].update(limit_kw="abc"), "[site] limit_kw: expected a number, got 'abc'"),
        (lambda d: d["site"].update(limt_kw=5), "[site] limt_kw: unknown key"),
        (lambda d: d["scenario"].update(dt_s=-1), "[scenario] dt_s: must be > 0"),
        (lambda d: d.update(sites={}), "[sites]: unknown section"),
        (lambda d: d["events"].append({"kind": "meteor", "at_s": 1}), "kind: expected one of"),
        (lambda d: d["events"].append({"kind": "surge", "at_s": 1, "count": 3}), "window_s: missing key"),
    ],
)
def test_a_malformed_scenario_names_the_key(edit: object, message: str) -> None:
    import tomllib

    data = tomllib.loads((Path(sims.__file__).parent / "scenarios" / "workplace-surge.toml").read_text())
    edit(data)  # type: ignore[operator]
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "x.toml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("x.toml")


def test_cli_runs_writes_plots_and_errs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\nduration_s = "long"\n')
    assert main(["sim", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "meshagent: error: bad.toml: [scenario] duration_s: expected a number, got 'long'"
    out = tmp_path / "out"
    assert main(["sim", "workplace-surge", "--nodes", "8", "--duration", "40", "--dt", "0.2", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["baselines"]) == {"none", "droop", "central", "mesh"}
    assert (out / "summary.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["scenario"] == "workplace-surge"


def test_nodes_rescale_the_site() -> None:
    big = load_scenario("workplace-surge")
    small = big.with_overrides(nodes=30)
    assert small["site"]["limit_kw"] == pytest.approx(big["site"]["limit_kw"] / 2)
    assert [e.args["count"] for e in small.events if e.kind == "surge"] == [20]
