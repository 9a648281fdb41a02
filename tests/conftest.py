"""Shared fixtures: a CA and enrolled identities made in memory, with a fixed 'now'.

The PKI itself lives in ``sims/testpki.py`` (the benchmarks and simulations use it too);
``NOW_MS`` and ``Pki`` are re-exported here for the tests that import them from conftest.
"""

from __future__ import annotations

import pytest

from sims.testpki import NOW_MS, Pki

__all__ = ["NOW_MS", "Pki", "pki"]


@pytest.fixture
def pki() -> Pki:
    return Pki(seed=1)
