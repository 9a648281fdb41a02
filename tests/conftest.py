"""Shared fixtures: a CA and enrolled identities made in memory, with a fixed 'now'."""

from __future__ import annotations

import pytest

# One deterministic test PKI for tests, simulations and benchmarks (sims/pki.py).
from sims.pki import NOW_MS, Pki

__all__ = ["NOW_MS", "Pki"]


@pytest.fixture
def pki() -> Pki:
    return Pki(seed=1)
