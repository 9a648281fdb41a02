"""Moved to ``sims.procs`` (shared by the benchmarks and the simulation runners); kept as a
name for the benchmarks that import it from here."""

from sims.procs import REPO, Child, ChildFailed, TimedOut, stop_all

__all__ = ["REPO", "Child", "ChildFailed", "TimedOut", "stop_all"]
