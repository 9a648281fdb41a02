"""Fault-injection hooks shared by the simulated devices (charger, site meter).

A test or simulation makes a device misbehave the way real hardware does: ``freeze()`` stops
its measurements (a hung measurement board: readers see the same sample age and call it
STALE), ``inject(**raw)`` reports chosen raw values instead of the physics (NaN, a negative
SoC...) so the range checks of ``hardware.interfaces`` must refuse them; ``inject()`` with no
arguments resets. The device keeps ``frozen``, ``overrides`` and ``lock`` as attrs fields and
applies both in its ``snapshot()`` through ``_measured``.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, TypeVar

import attrs

S = TypeVar("S")


class FaultHooks:
    SNAPSHOT_TYPE: ClassVar[type]  # the attrs class snapshot() returns
    lock: threading.RLock
    frozen: Any
    overrides: dict[str, float]

    def snapshot(self) -> Any:
        raise NotImplementedError

    def freeze(self) -> None:
        """Measurements stop updating: readers see the last sample age and call it STALE."""
        with self.lock:
            self.frozen = None
            self.frozen = self.snapshot()

    def unfreeze(self) -> None:
        with self.lock:
            self.frozen = None

    def inject(self, **raw: float) -> None:
        """Report these raw values instead of the physics (NaN, -5 % SoC...); ``inject()`` resets."""
        with self.lock:
            unknown = set(raw) - set(attrs.fields_dict(self.SNAPSHOT_TYPE))
            if unknown:
                raise ValueError(f"unknown {self.SNAPSHOT_TYPE.__name__} fields {sorted(unknown)}")
            self.overrides = dict(raw)

    def _measured(self, snap: S) -> S:
        """``snap`` with the injected values, if any."""
        if self.overrides:
            return attrs.evolve(snap, **self.overrides)  # type: ignore[misc]
        return snap
