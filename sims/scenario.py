"""Scenario files: TOML in ``sims/scenarios/``, checked key by key.

Theory of operation
-------------------
A scenario is data: the site (limit, transformers, chargers, building load), the area's
frequency parameters, the arrivals, the response settings of the coordinated baselines, and a
list of timed events. ``load_scenario`` reads the file, checks every key against ``SCHEMA``
(unknown keys, missing keys, wrong types and out-of-range values are all errors) and returns a
frozen ``Scenario``. Any mistake raises ``ScenarioError`` whose message is one line naming the
file and the key, e.g. ``workplace.toml: [site] limit_kw: expected a number, got 'abc'``.

Events (``[[events]]``, ``kind`` first):

=================  =====================================================================
kind               keys
=================  =====================================================================
surge              at_s, count, window_s: ``count`` vehicles arrive within the window
generator_trip     at_s, mw: the area loses ``mw`` of generation (a load step of +mw)
load_step          at_s, mw: the area's load changes by ``mw`` (negative: load lost)
kill_nodes         at_s, fraction: that share of the chargers' agents die (seeded pick);
                   their vehicles keep charging as they were, nobody answers for them
partition          at_s, groups: the mesh splits into ``groups`` parts (by index)
heal               at_s: the partition ends
csms_down          at_s: the CSMS becomes unreachable (central dispatch stops; billing queues)
csms_up            at_s: it comes back; queued billing records drain
=================  =====================================================================
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from meshagent.errors import MeshagentError

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(MeshagentError):
    """A scenario file that cannot be run; the message is one line naming the key."""


_NUM = (int, float)
# section -> key -> (types, default or REQUIRED, check or None)
REQUIRED = object()
_pos = (lambda v: v > 0, "must be > 0")
_nonneg = (lambda v: v >= 0, "must be >= 0")
_frac = (lambda v: 0 <= v <= 1, "must be between 0 and 1")
SCHEMA: dict[str, dict[str, tuple[Any, Any, Any]]] = {
    "scenario": {
        "name": (str, REQUIRED, None),
        "description": (str, "", None),
        "duration_s": (_NUM, REQUIRED, _pos),
        "dt_s": (_NUM, REQUIRED, _pos),
        "start_hour": (_NUM, 0.0, (lambda v: 0 <= v < 24, "must be in [0, 24)")),
        "nodes": (int, REQUIRED, _pos),
        "seed": (int, 1, None),
    },
    "site": {
        "limit_kw": (_NUM, REQUIRED, _pos),
        "base_load_kw": (_NUM, 0.0, _nonneg),
        "charger_kw": (_NUM, 11.0, _pos),
        "transformers": (int, 1, _pos),
        "transformer_kva": (_NUM, REQUIRED, _pos),
        "ambient_c": (_NUM, 30.0, None),
    },
    "area": {
        "base_mw": (_NUM, 50.0, _pos),
        "inertia_h_s": (_NUM, 4.0, _pos),
        "damping_d_pu": (_NUM, 1.0, _nonneg),
        "droop_r_pu": (_NUM, 0.05, _pos),
        "governor_tg_s": (_NUM, 0.5, _pos),
        "nominal_hz": (_NUM, 60.0, _pos),
        "fleet_share": (_NUM, 1.0, _pos),
    },
    "arrivals": {
        "sessions_per_charger_day": (_NUM, 1.0, _nonneg),
        "profile": (str, "workplace", (lambda v: v in ("workplace", "flat"), "must be 'workplace' or 'flat'")),
        "initial_occupancy": (_NUM, 0.5, _frac),
        "minimum_soc": (_NUM, 0.2, _frac),
        "target_soc": (_NUM, 0.9, _frac),
    },
    "response": {
        "frequency_trigger_hz": (_NUM, 59.9, _pos),
        "full_response_hz": (_NUM, 59.5, _pos),
        "site_margin": (_NUM, 0.02, _frac),
        "central_meter_interval_s": (_NUM, 1.0, _pos),
    },
}
OPTIONAL_SECTIONS = {"area", "arrivals", "response"}
EVENT_KEYS: dict[str, dict[str, tuple[Any, Any]]] = {
    "surge": {"count": (int, _pos), "window_s": (_NUM, _nonneg)},
    "generator_trip": {"mw": (_NUM, _pos)},
    "load_step": {"mw": (_NUM, None)},
    "kill_nodes": {"fraction": (_NUM, _frac)},
    "partition": {"groups": (int, (lambda v: v >= 2, "must be >= 2"))},
    "heal": {},
    "csms_down": {},
    "csms_up": {},
}


@attrs.frozen
class Event:
    kind: str
    at_s: float
    args: dict[str, Any]


@attrs.frozen
class Scenario:
    name: str
    description: str
    sections: dict[str, dict[str, Any]]
    events: tuple[Event, ...]
    source: str = "<memory>"

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    def with_overrides(
        self, nodes: int | None = None, seed: int | None = None, duration_s: float | None = None,
        dt_s: float | None = None,
    ) -> Scenario:
        sc = dict(self.sections["scenario"])
        if dt_s is not None:
            if dt_s <= 0:
                raise ScenarioError("--dt must be > 0")
            sc["dt_s"] = float(dt_s)
        if duration_s is not None:
            if duration_s <= 0:
                raise ScenarioError("--duration must be > 0")
            sc["duration_s"] = float(duration_s)
        sections = dict(self.sections)
        events = self.events
        if nodes is not None:
            if nodes <= 0:
                raise ScenarioError("--nodes must be > 0")
            # The site scales with its chargers so the scenario keeps its story: limit, base
            # load, transformer ratings and surge sizes in proportion; the area sees the same
            # MW of response (fleet_share inversely).
            k = nodes / sc["nodes"]
            sc["nodes"] = nodes
            site = dict(sections["site"])
            for key in ("limit_kw", "base_load_kw", "transformer_kva"):
                site[key] = site[key] * k
            area = dict(sections["area"])
            area["fleet_share"] = area["fleet_share"] / k
            sections["site"], sections["area"] = site, area
            events = tuple(
                attrs.evolve(e, args={**e.args, "count": max(1, round(e.args["count"] * k))})
                if e.kind == "surge" else e
                for e in events
            )
        if seed is not None:
            sc["seed"] = seed
        sections["scenario"] = sc
        return attrs.evolve(self, sections=sections, events=events)


def _type_name(types: Any) -> str:
    return "a number" if types == _NUM else {str: "a string", int: "an integer"}[types]


def _check(where: str, value: Any, types: Any, check: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        raise ScenarioError(f"{where}: expected {_type_name(types)}, got {value!r}")
    if check is not None and not check[0](value):
        raise ScenarioError(f"{where}: {check[1]}, got {value!r}")
    return float(value) if types == _NUM else value


def parse_scenario(data: dict[str, Any], source: str = "<memory>") -> Scenario:
    for section in data:
        if section not in SCHEMA and section != "events":
            raise ScenarioError(f"{source}: [{section}]: unknown section (known: {', '.join([*SCHEMA, 'events'])})")
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        raw = data.get(section)
        if raw is None:
            if section not in OPTIONAL_SECTIONS:
                raise ScenarioError(f"{source}: [{section}]: missing section")
            raw = {}
        if not isinstance(raw, dict):
            raise ScenarioError(f"{source}: [{section}]: expected a table")
        for key in raw:
            if key not in keys:
                raise ScenarioError(f"{source}: [{section}] {key}: unknown key (known: {', '.join(keys)})")
        out: dict[str, Any] = {}
        for key, (types, default, check) in keys.items():
            if key not in raw:
                if default is REQUIRED:
                    raise ScenarioError(f"{source}: [{section}] {key}: missing key")
                out[key] = default
            else:
                out[key] = _check(f"{source}: [{section}] {key}", raw[key], types, check)
        sections[section] = out
    events: list[Event] = []
    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        raise ScenarioError(f"{source}: events: expected [[events]] tables")
    for n, ev in enumerate(raw_events):
        where = f"{source}: [[events]] #{n + 1}"
        if not isinstance(ev, dict):
            raise ScenarioError(f"{where}: expected a table")
        kind = ev.get("kind")
        if kind not in EVENT_KEYS:
            raise ScenarioError(f"{where} kind: expected one of {', '.join(EVENT_KEYS)}, got {kind!r}")
        if "at_s" not in ev:
            raise ScenarioError(f"{where} at_s: missing key")
        at_s = _check(f"{where} at_s", ev["at_s"], _NUM, _nonneg)
        args: dict[str, Any] = {}
        for key in ev:
            if key not in ("kind", "at_s") and key not in EVENT_KEYS[kind]:
                raise ScenarioError(f"{where} {key}: unknown key for kind {kind!r}")
        for key, (types, check) in EVENT_KEYS[kind].items():
            if key not in ev:
                raise ScenarioError(f"{where} {key}: missing key for kind {kind!r}")
            args[key] = _check(f"{where} {key}", ev[key], types, check)
        events.append(Event(kind, at_s, args))
    events.sort(key=lambda e: e.at_s)
    sc = sections["scenario"]
    return Scenario(sc["name"], sc["description"], sections, tuple(events), source)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A scenario by file path, or by the name of a file in ``sims/scenarios/``."""
    path = Path(name_or_path)
    if not path.exists():
        candidate = SCENARIO_DIR / f"{name_or_path}.toml"
        if not candidate.exists():
            known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
            raise ScenarioError(f"no scenario {str(name_or_path)!r} (a file, or one of: {known})")
        path = candidate
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_scenario(data, path.name)


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
