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


# Files that run in an interpreter of their own, never imported by the package (bench sim's anchor
# runs in a separate venv that has ev2gym and its pinned numpy/pandas).
OWN_INTERPRETER = {"sims/bench/ev2gym_anchor.py"}


def _imports(folder: str, *, top_level_only: bool = False) -> set[str]:
    """Third-party names imported under ``folder``: at module level only, or anywhere."""
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        if str(path.relative_to(ROOT)) in OWN_INTERPRETER:
            continue
        tree = ast.parse(path.read_text())
        nodes = _module_level(tree) if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS}


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements run on import: the module body, including if/try blocks, not functions."""
    out: list[ast.stmt] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            continue
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            stack.extend(node.body + node.orelse)
            if isinstance(node, ast.Try):
                stack.extend(node.finalbody)
                for handler in node.handlers:
                    stack.extend(handler.body)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _declared(*groups: list[str]) -> set[str]:
    return {_normal(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for group in groups for req in group}


def _normal(name: str) -> str:
    """A distribution name as PyPI compares them (case and - / _ / . do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_direct_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = _declared(project["dependencies"])
    simulator = runtime | _declared(extras["sim"], extras["cluster"])
    test = runtime | _declared(*extras.values())

    def undeclared(names: set[str], allowed: set[str]) -> list[str]:
        return sorted(m for m in names if _normal(DISTRIBUTION.get(m, m)) not in allowed)

    # The agent (meshagent, protocol, hardware) imports only runtime dependencies on import;
    # `meshagent sim` may reach the simulator's extras from inside a function (it checks first
    # and names the extra to install).
    agent_top = set().union(*(_imports(d, top_level_only=True) for d in ("meshagent", "protocol", "hardware")))
    assert not undeclared(agent_top, runtime), (
        f"imported on import of the agent but not in dependencies: {undeclared(agent_top, runtime)}")
    anywhere = set().union(*(_imports(d) for d in ("meshagent", "protocol", "hardware", "sims")))
    assert not undeclared(anywhere, simulator), (
        f"imported by the package but in neither dependencies nor the sim/cluster extras: "
        f"{undeclared(anywhere, simulator)}")
    assert not undeclared(_imports("tests"), test), (
        f"imported by tests but not declared: {undeclared(_imports('tests'), test)}")


def test_the_agent_starts_without_the_simulator_extras():
    """`pip install -e .` then `meshagent demo`: no module the CLI loads may need numpy & co."""
    import subprocess

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'numpy', 'matplotlib', 'rich', 'distributed', 'scipy'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import meshagent.cli.main, meshagent.agent, meshagent.api.app, sims.demo\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
