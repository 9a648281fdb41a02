"""The simulated network the membership tests drive (one for tests and benchmarks)."""

from __future__ import annotations

from sims.swimnet import SimNet as Net
from sims.swimnet import records, standard_delegates, urgent

__all__ = ["Net", "records", "standard_delegates", "urgent"]
