"""The simulator: grid model, scenarios, baselines, runners, reports; benchmarks; the demo.

``sims.run(scenario, ...) -> report`` is the public entry point (see docs/simulation.md).
Importing ``sims`` stays cheap: numpy and friends load when ``run`` is called.
"""

from __future__ import annotations

from typing import Any


def run(scenario: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a scenario under every baseline and return the report (``sims.runner.run``)."""
    from sims.runner import run as _run

    return _run(scenario, **kwargs)
