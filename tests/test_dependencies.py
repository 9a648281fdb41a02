"""Every third-party package the code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"meshagent", "protocol", "hardware", "sims", "tests"}
# import name -> distribution name, where they differ
DISTRIBUTION = {"nacl": "pynacl", "serial": "pyserial", "trio_websocket": "trio-websocket",
                "pytest_trio": "pytest-trio"}


def _imports(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS}


def _declared(*groups: list[str]) -> set[str]:
    return {_normal(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for group in groups for req in group}


def _normal(name: str) -> str:
    """A distribution name as PyPI compares them (case and - / _ / . do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_direct_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    test = runtime | _declared(*project["optional-dependencies"].values())
    shipped = set().union(*(_imports(d) for d in ("meshagent", "protocol", "hardware", "sims")))
    missing = {m for m in shipped if _normal(DISTRIBUTION.get(m, m)) not in runtime}
    assert not missing, f"imported by the package but not in dependencies: {sorted(missing)}"
    missing_test = {m for m in _imports("tests") if _normal(DISTRIBUTION.get(m, m)) not in test}
    assert not missing_test, f"imported by tests but not declared: {sorted(missing_test)}"
