"""The ``[mesh]`` section of a node's configuration: addresses, seeds, preset and knobs.

A preset (``lan`` or ``local``, ``protocol.swim.SwimConfig``) sets every membership timer at
once; any knob written in the file overrides it, and a knob left out keeps the preset's
value. ``swim_config()`` builds the protocol's frozen config from the section.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs

from meshagent.config import register_section, setting
from meshagent.config.units import parse_duration_s, parse_size_bytes
from meshagent.errors import ConfigError
from protocol.swim import SwimConfig

DEFAULT_PORT = 7946
DEFAULT_API_PORT = 7947
Address = tuple[str, int]


def parse_host_port(text: str, default_port: int = DEFAULT_PORT, *, allow_any_port: bool = False) -> Address:
    """``10.0.0.2``, ``10.0.0.2:7946``, ``[::1]:7946`` or ``::1`` -> (host, port).

    ``allow_any_port``: port 0 ("any free port") is accepted, for addresses we bind.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected HOST or HOST:PORT, got {text!r}")
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [HOST]:PORT, got {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not a numeric IPv4 or IPv6 address") from None
    if not port_text:
        return host, default_port
    lowest = 0 if allow_any_port else 1
    if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise ValueError(f"port must be {lowest} to 65535 in {text!r}")
    return host, int(port_text)


def _address(value: object) -> Address:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return parse_host_port(value)


def _bind_address(value: object) -> Address:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return parse_host_port(value, allow_any_port=True)


def _addresses(value: object) -> tuple[Address, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of HOST[:PORT] strings, got {value!r}")
    return tuple(_address(v) for v in value)


def _optional_address(value: object) -> Address | None:
    if value == "":
        return None
    return _address(value)


def _duration(value: object) -> float:
    return parse_duration_s(value)


# knob key -> SwimConfig field
_KNOBS = {
    "probe_interval": "probe_interval_s",
    "probe_timeout": "probe_timeout_s",
    "indirect_checks": "indirect_checks",
    "gossip_interval": "gossip_interval_s",
    "gossip_nodes": "gossip_nodes",
    "suspicion_mult": "suspicion_mult",
    "last_chance_probes": "last_chance_probes",
    "retransmit_mult": "retransmit_mult",
    "push_pull_interval": "push_pull_interval_s",
    "rejoin_interval": "rejoin_interval_s",
    "record_reap": "record_reap_s",
    "dead_member_reap": "dead_member_reap_s",
}


@attrs.frozen
class MeshSection:
    preset: str = setting("lan", choices=("lan", "local"), shown='"lan"',
                          doc="Membership timers: `lan` (memberlist's LAN defaults) or `local` (5x faster, one host).")
    bind: Address = setting(("0.0.0.0", DEFAULT_PORT), parse=_bind_address, shown='"0.0.0.0:7946"',
                            doc="UDP and TCP address to bind (IPv4 or IPv6, e.g. `[::]:7946`; port 0: any free port).")
    advertise: Address | None = setting(None, parse=_optional_address, shown='""',
                                        doc="Address peers use to reach this node; required when `bind` is a wildcard.")
    seeds: tuple[Address, ...] = setting((), parse=_addresses, shown="[]",
                                         doc="Members to join through, `HOST[:PORT]`; retried while this node is isolated.")
    zeroconf: bool = setting(False, shown="false", doc="Advertise and discover peers on the LAN (`_meshagent._udp.local.`).")
    api: Address = setting(("127.0.0.1", DEFAULT_API_PORT), parse=_bind_address, shown='"127.0.0.1:7947"',
                           doc="HTTP API, operator page and metrics; bearer token per role (`meshagent api token`), probes and /metrics on loopback only (port 0: any free port).")
    max_packet: int = setting(1400, parse=parse_size_bytes, min_value=512, max_value=65507, shown="1400",
                              doc="Largest gossip datagram.")
    probe_interval: float | None = setting(None, parse=_duration, shown="preset", doc="Time between probes (`lan`: 1s).")
    probe_timeout: float | None = setting(None, parse=_duration, shown="preset", doc="Wait for a direct ack (`lan`: 500ms).")
    indirect_checks: int | None = setting(None, min_value=0, max_value=16, shown="preset", doc="Peers asked to probe indirectly (`lan`: 3).")
    gossip_interval: float | None = setting(None, parse=_duration, shown="preset", doc="Time between gossip rounds (`lan`: 200ms).")
    gossip_nodes: int | None = setting(None, min_value=0, max_value=64, shown="preset", doc="Peers per gossip round (`lan`: 3).")
    suspicion_mult: int | None = setting(None, min_value=1, max_value=64, shown="preset", doc="Suspicion timeout multiplier (`lan`: 4).")
    last_chance_probes: int | None = setting(None, min_value=0, max_value=8, shown="preset",
                                             doc="Own probes that must fail before a timed-out suspect is declared dead (`lan`: 2; 0: memberlist's rule).")
    retransmit_mult: int | None = setting(None, min_value=1, max_value=64, shown="preset", doc="Rumor retransmit multiplier (`lan`: 4).")
    push_pull_interval: float | None = setting(None, parse=_duration, shown="preset", doc="Full state sync period, grows with N (`lan`: 30s).")
    rejoin_interval: float | None = setting(None, parse=_duration, shown="preset", doc="Retry seeds this often while isolated (`lan`: 10s).")
    record_reap: float | None = setting(None, parse=_duration, shown="preset", doc="Forget state records of dead or left members after (`lan`: 60s).")
    dead_member_reap: float | None = setting(None, parse=_duration, shown="preset", doc="Forget dead members after (`lan`: 6h).")

    def swim_config(self) -> SwimConfig:
        overrides: dict[str, Any] = {"max_packet_bytes": self.max_packet}
        for key, field_name in _KNOBS.items():
            value = getattr(self, key)
            if value is not None:
                overrides[field_name] = value
        try:
            return SwimConfig.preset(self.preset, **overrides)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"[mesh]: {exc}") from None

    def advertised(self, bound: Address) -> Address:
        """What to tell peers: ``advertise``, else the bound address (never a wildcard)."""
        if self.advertise is not None:
            return self.advertise
        if ipaddress.ip_address(bound[0]).is_unspecified:
            raise ConfigError(f"mesh.advertise: required when mesh.bind is a wildcard ({bound[0]})")
        return bound


register_section("mesh", MeshSection)
