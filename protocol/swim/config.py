"""Membership tuning: one frozen record, two named presets (after memberlist's ``config.go``).

``SwimConfig.lan()`` is memberlist's ``DefaultLANConfig``: probe every second with a 500 ms
timeout through 3 indirect relays, gossip to 3 peers every 200 ms, suspicion multiplier 4,
push-pull every 30 s. ``SwimConfig.local()`` is for tests and simulations on one host or an
in-memory network: the same protocol five times faster (probe every 200 ms, timeout 100 ms,
gossip every 40 ms, push-pull every 6 s), and members forgotten sooner. Every knob can be overridden:
``SwimConfig.lan(probe_interval_s=2.0)`` or ``SwimConfig.preset("lan", **overrides)``.
"""

from __future__ import annotations

from typing import Any

import attrs

from protocol.errors import LocalProtocolError


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attr.name} must be > 0 (got {value!r})")


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attr.name} must be >= 0 (got {value!r})")


@attrs.frozen
class SwimConfig:
    # failure detection
    probe_interval_s: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout_s: float = attrs.field(default=0.5, validator=_positive)
    indirect_checks: int = attrs.field(default=3, validator=_non_negative)
    tcp_fallback: bool = True  # also probe over TCP when UDP probes fail
    awareness_max_multiplier: int = attrs.field(default=8, validator=_positive)
    suspicion_mult: int = attrs.field(default=4, validator=_positive)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_positive)
    # probes of our own that must fail, after a suspicion times out, before we declare the
    # suspect dead (0: at once, as memberlist)
    last_chance_probes: int = attrs.field(default=2, validator=_non_negative)
    # dissemination
    gossip_interval_s: float = attrs.field(default=0.2, validator=_positive)
    gossip_nodes: int = attrs.field(default=3, validator=_non_negative)
    gossip_to_dead_s: float = attrs.field(default=30.0, validator=_non_negative)
    retransmit_mult: int = attrs.field(default=4, validator=_positive)
    max_packet_bytes: int = attrs.field(default=1400, validator=_positive)
    # push-pull (full state over TCP)
    push_pull_interval_s: float = attrs.field(default=30.0, validator=_positive)
    push_pull_max_bytes: int = attrs.field(default=3 * 1024 * 1024, validator=_positive)
    push_pull_max_inflight: int = attrs.field(default=2, validator=_positive)  # ours, waiting
    # Full states served per reliable timeout: bounds the CPU and bytes a join storm can
    # draw from one seed (refused joiners retry with backoff).
    push_pull_max_inbound: int = attrs.field(default=64, validator=_positive)
    reliable_timeout_s: float = attrs.field(default=10.0, validator=_positive)  # TCP exchange
    rejoin_interval_s: float = attrs.field(default=10.0, validator=_positive)  # when isolated
    # Until a join has been answered, retry the seeds at most this far apart (backoff from
    # one probe interval): a node started before its seed joins this soon after it answers.
    join_retry_max_s: float = attrs.field(default=2.0, validator=_positive)
    # A graceful leave spreads ``Left`` for at most this long (less when the rumor is spent
    # or no live member is left to tell), then the node may stop.
    leave_timeout_s: float = attrs.field(default=1.0, validator=_positive)
    # forgetting
    record_reap_s: float = attrs.field(default=60.0, validator=_non_negative)
    dead_member_reap_s: float = attrs.field(default=6 * 3600.0, validator=_non_negative)
    left_member_reap_s: float = attrs.field(default=300.0, validator=_non_negative)
    urgent_seen_s: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ValueError("probe_timeout_s must be shorter than probe_interval_s")
        if self.max_packet_bytes < 512:
            raise ValueError("max_packet_bytes must be at least 512")

    @classmethod
    def lan(cls, **overrides: Any) -> SwimConfig:
        return cls(**overrides)

    @classmethod
    def local(cls, **overrides: Any) -> SwimConfig:
        base: dict[str, Any] = dict(
            probe_interval_s=0.2,
            probe_timeout_s=0.1,
            gossip_interval_s=0.04,
            gossip_to_dead_s=6.0,
            push_pull_interval_s=6.0,
            reliable_timeout_s=2.0,
            rejoin_interval_s=2.0,
            join_retry_max_s=0.4,
            leave_timeout_s=0.5,
            record_reap_s=5.0,
            dead_member_reap_s=60.0,
            left_member_reap_s=10.0,
            urgent_seen_s=12.0,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def memberlist(cls, **overrides: Any) -> SwimConfig:
        """memberlist's own rules with its ``DefaultLANConfig`` (for comparison runs).

        The LAN numbers are the same as ``lan()`` (ProbeInterval 1 s, ProbeTimeout 500 ms,
        SuspicionMult 4, SuspicionMaxTimeoutMult 6, GossipInterval 200 ms, GossipNodes 3,
        RetransmitMult 4, IndirectChecks 3, PushPullInterval 30 s, AwarenessMaxMultiplier 8,
        GossipToTheDeadTime 30 s); where our rules differ, memberlist's apply: a suspect is
        declared dead as soon as its suspicion times out (no last-chance probes), and a
        refused join is retried only at the rejoin interval.
        """
        base: dict[str, Any] = dict(last_chance_probes=0, join_retry_max_s=30.0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SwimConfig:
        if name == "lan":
            return cls.lan(**overrides)
        if name == "local":
            return cls.local(**overrides)
        raise LocalProtocolError(f"unknown membership preset {name!r} (known: lan, local)")
