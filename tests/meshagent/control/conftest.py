"""Helpers for the control tests: a [control] section from keyword overrides."""

from __future__ import annotations

from typing import Any

from meshagent.config import config_from_dict


def section(**control: Any) -> Any:
    """The validated ``[control]`` section with ``control`` as its TOML keys."""
    return config_from_dict({"node": {"id": "n1"}, "control": control}).section("control")
