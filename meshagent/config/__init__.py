"""One TOML file per node, validated into frozen attrs classes.

Theory of operation
-------------------
Each ``[section]`` of the file is a frozen attrs class whose fields are declared with
``setting(...)``: the key as operators write it (``PEAK_LOAD_LIMIT``), a parser for
quantities with units (``meshagent.config.units``), bounds, a default and one line of doc. The
loader walks the TOML table against those declarations, so

* an unknown key is an error that names it (and the nearest known key: typos in a safety
  limit must not be silently ignored);
* a bad value is an error that names the key and what was expected;
* ``docs/config.md`` is generated from the same declarations (``meshagent config
  reference``), so the reference cannot drift from the code.

Sections are registered in ``SECTIONS``; a layer that needs configuration adds its own
class there (the mesh adds ``[mesh]``, the control loop ``[control]``...).
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from meshagent.config.units import parse_duration_s, parse_size_bytes
from meshagent.errors import ConfigError
from protocol.identity import NODE_ID_MAX, check_id
from protocol.wire import DEFAULT_MAX_SKEW_MS, MAX_STREAM_BYTES, MAX_UDP_BYTES

_NO_DEFAULT = attrs.NOTHING


def setting(
    default: Any = _NO_DEFAULT,
    *,
    key: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    doc: str = "",
    min_value: float | None = None,
    max_value: float | None = None,
    choices: tuple[str, ...] | None = None,
    path: bool = False,
    shown: str | None = None,
) -> Any:
    """Declare one config key. ``shown`` is how the default is written in the docs."""
    meta = {
        "key": key,
        "parse": parse,
        "doc": doc,
        "min": min_value,
        "max": max_value,
        "choices": choices,
        "path": path,
        "shown": shown,
    }
    if isinstance(default, list | dict):
        raise TypeError("use a tuple default")
    return attrs.field(default=default, metadata=meta)


def _node_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a node id string, got {value!r}")
    return check_id("node id", value, NODE_ID_MAX)


@attrs.frozen
class NodeSection:
    id: str = setting(parse=_node_id, doc="This node's id; must match its certificate.")
    state_dir: Path = setting(
        Path("state"),
        path=True,
        shown='"state"',
        doc="Directory for the boot epoch, logs, telemetry and queues (created if missing).",
    )
    key: Path = setting(Path("node.key"), path=True, shown='"node.key"', doc="Private key file (mode 0600).")
    certificate: Path = setting(
        Path("node.cert"), path=True, shown='"node.cert"', doc="Certificate issued by `meshagent enroll`."
    )
    ca: Path = setting(Path("ca.pub"), path=True, shown='"ca.pub"', doc="The operator CA's public key.")


@attrs.frozen
class WireSection:
    max_skew_s: float = setting(
        DEFAULT_MAX_SKEW_MS / 1000,
        key="max_skew",
        parse=parse_duration_s,
        min_value=0.1,
        max_value=3600,
        shown='"30s"',
        doc="Packets issued further than this from our clock are dropped (replay bound).",
    )
    max_datagram_bytes: int = setting(
        MAX_UDP_BYTES,
        key="max_datagram",
        parse=parse_size_bytes,
        min_value=512,
        max_value=65507,
        shown="1400",
        doc="Largest UDP packet sent or accepted; keep under the path MTU.",
    )
    max_stream_bytes: int = setting(
        MAX_STREAM_BYTES,
        key="max_stream",
        parse=parse_size_bytes,
        min_value=64 * 1024,
        max_value=256 * 1024 * 1024,
        shown='"4MiB"',
        doc="Largest packet accepted on a TCP stream (push-pull state syncs).",
    )


# section name -> class; order is the order in docs/config.md
SECTIONS: dict[str, type] = {"node": NodeSection, "wire": WireSection}
REQUIRED_SECTIONS = frozenset({"node"})

# Modules that declare more sections with ``register_section`` when imported (the mesh's
# [mesh], the control loop's [control], ...). Imported on first use, not at import of this
# module, so that those modules can import ``setting`` from here.
SECTION_MODULES: tuple[str, ...] = (
    "meshagent.mesh.config",
    "meshagent.config.devices",
    "meshagent.control.config",
    "meshagent.csms.config",
    "meshagent.api.config",
)
_sections_loaded = False


def _load_section_modules() -> None:
    global _sections_loaded
    if not _sections_loaded:
        import importlib

        for name in SECTION_MODULES:
            importlib.import_module(name)
        _sections_loaded = True


def register_section(name: str, cls: type, *, required: bool = False) -> None:
    """Called by a layer's config module at import to add its ``[name]`` section."""
    if name in SECTIONS and SECTIONS[name] is not cls:
        raise RuntimeError(f"config section [{name}] registered twice")
    SECTIONS[name] = cls
    global REQUIRED_SECTIONS
    if required:
        REQUIRED_SECTIONS = REQUIRED_SECTIONS | {name}


@attrs.frozen
class NodeConfig:
    """A whole node configuration: ``sections[name]`` is that section's frozen instance."""

    sections: Mapping[str, Any]
    source: str

    @property
    def node(self) -> NodeSection:
        section: NodeSection = self.sections["node"]
        return section

    @property
    def wire(self) -> WireSection:
        section: WireSection = self.sections["wire"]
        return section

    def section(self, name: str) -> Any:
        return self.sections[name]


def _toml_key(f: attrs.Attribute) -> str:  # type: ignore[type-arg]
    return f.metadata.get("key") or f.name


def _convert(f: attrs.Attribute, tp: Any, raw: Any, where: str, base_dir: Path) -> Any:  # type: ignore[type-arg]
    meta = f.metadata
    parse = meta.get("parse")
    if parse is not None:
        value = parse(raw)
    elif meta.get("path"):
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"expected a path string, got {raw!r}")
        p = Path(raw).expanduser()
        value = p if p.is_absolute() else base_dir / p
    else:
        value = _convert_plain(tp, raw)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ValueError(f"must be at least {lo}, got {raw!r}")
    if hi is not None and value > hi:
        raise ValueError(f"must be at most {hi}, got {raw!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {raw!r}")
    return value


def _convert_plain(tp: Any, raw: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(raw, list):
            raise ValueError(f"expected a list, got {raw!r}")
        return tuple(_convert_plain(inner, x) for x in raw)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert_plain(args[0], raw)
    if tp is bool:
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected a whole number, got {raw!r}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"expected a number, got {raw!r}")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {raw!r}")
        return raw
    raise ValueError(f"no conversion for {tp!r}")


def load_section(cls: type, table: Any, name: str, base_dir: Path) -> Any:
    """Validate one TOML table into ``cls``; raise ConfigError naming the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {_toml_key(f): f for f in attrs.fields(cls)}
    for key in table:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {name}.{near[0]}?)" if near else ""
            raise ConfigError(f"unknown key {name}.{key}{hint}")
    kwargs: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in table:
            if f.default is attrs.NOTHING:
                raise ConfigError(f"{name}.{key}: required key is missing")
            default = f.default
            if f.metadata.get("path") and isinstance(default, Path) and not default.is_absolute():
                default = base_dir / default
            kwargs[f.name] = default
            continue
        try:
            kwargs[f.name] = _convert(f, hints[f.name], table[key], f"{name}.{key}", base_dir)
        except ValueError as exc:
            raise ConfigError(f"{name}.{key}: {exc}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def config_from_dict(data: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> NodeConfig:
    _load_section_modules()
    base = base_dir or Path.cwd()
    for name in data:
        if name not in SECTIONS:
            near = difflib.get_close_matches(name, list(SECTIONS), n=1)
            hint = f" (did you mean [{near[0]}]?)" if near else ""
            raise ConfigError(f"unknown section [{name}]{hint}")
    for name in REQUIRED_SECTIONS:
        if name not in data:
            raise ConfigError(f"[{name}]: required section is missing")
    sections = {name: load_section(cls, data.get(name, {}), name, base) for name, cls in SECTIONS.items()}
    return NodeConfig(sections=types.MappingProxyType(sections), source=source)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's TOML file. Relative paths in it are relative to the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(data, source=str(p), base_dir=p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def reference_markdown() -> str:
    """The config reference, generated from the declarations (docs/config.md)."""
    _load_section_modules()
    out = [
        "# Configuration reference",
        "",
        "One TOML file per node. Generated by `meshagent config reference` from the code's",
        "declarations; do not edit by hand. Relative paths are relative to the config file.",
        "Quantities take units as written on site: `500kW`, `10 kW`, `0.1W`, `30s`, `10ms`.",
        "Unknown keys are errors. Check a file with `meshagent config check FILE`.",
        "",
    ]
    for name, cls in SECTIONS.items():
        req = " (required)" if name in REQUIRED_SECTIONS else ""
        out += [f"## [{name}]{req}", "", "| key | default | meaning |", "|---|---|---|"]
        for f in attrs.fields(cls):
            if f.default is attrs.NOTHING:
                shown = "required"
            else:
                shown = f.metadata.get("shown") or repr(f.default)
            shown = f"`{shown}`" if shown != "required" else shown
            doc = f.metadata.get("doc", "")
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None or hi is not None:
                doc += f" Range: {lo if lo is not None else '-inf'} to {hi if hi is not None else 'inf'}."
            choices = f.metadata.get("choices")
            if choices:
                doc += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
            out.append(f"| `{_toml_key(f)}` | {shown} | {doc} |")
        out.append("")
    return "\n".join(out)
