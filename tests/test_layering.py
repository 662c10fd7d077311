"""The folder tree is the design: imports run one way, checked on every module of every
sub-package, at the top of a file and inside functions.

core:      cli -> {diagnose, sense, control} -> data -> runtime; the three layers never import
           each other; `core/__init__.py` and `core/progress.py` are leaves; no import circle.
dashboard: app -> the page folders (diagnose, sense, control) -> common -> core; the page
           folders never import each other; core never imports dashboard or Streamlit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE_ALLOWED = {
    "root": set(),
    "runtime": {"root", "runtime"},
    "data": {"root", "runtime", "data"},
    "diagnose": {"root", "runtime", "data", "diagnose"},
    "sense": {"root", "runtime", "data", "sense"},
    "control": {"root", "runtime", "data", "control"},
    "cli": {"root", "runtime", "data", "diagnose", "sense", "control", "cli"},
}
DASHBOARD_ALLOWED = {
    "common": {"common"},
    "diagnose": {"common", "diagnose"},
    "sense": {"common", "sense"},
    "control": {"common", "control"},
    "app": {"common", "diagnose", "sense", "control"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    """Every module of a package, sub-packages included (recursively)."""
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top level or inside a function, as dotted names;
    `from a import b` gives a.b when that is a module of this project, else a."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = any((ROOT / Path(*candidate.split("."))).with_suffix(suffix).exists()
                                for suffix in (".py", ""))
                found.add(candidate if is_module else node.module)
    return found


def core_layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "progress":
        return "root"
    return parts[1]


def dashboard_layer(name: str) -> str:
    parts = name.split(".")
    return "app" if len(parts) == 1 or parts[1] == "app" else parts[1]


def test_every_core_module_sits_in_a_layer() -> None:
    names = modules("core")
    assert len(names) > 40  # the walk is recursive, not only the __init__ files
    for name in names:
        assert core_layer(name) in CORE_ALLOWED, f"{name} is in no layer"


@pytest.mark.parametrize("name", sorted(modules("core")))
def test_core_imports_run_one_way(name: str) -> None:
    layer = core_layer(name)
    for target in imported(modules("core")[name]):
        assert not target.startswith(("streamlit", "dashboard")), f"{name} imports {target}"
        if target == "core" or target.startswith("core."):
            assert core_layer(target) in CORE_ALLOWED[layer], f"{name} imports {target}"


def test_no_command_module_imports_the_parser() -> None:
    for name, path in modules("core").items():
        if name.startswith("core.cli.") and name != "core.cli.main":
            assert "core.cli.main" not in imported(path), name


def test_no_import_circle_in_core() -> None:
    graph = {name: {t for t in imported(path) if t in modules("core") and t != name}
             for name, path in modules("core").items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*path, nxt])
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("name", sorted(modules("dashboard")))
def test_dashboard_imports_run_one_way(name: str) -> None:
    layer = dashboard_layer(name)
    assert layer in DASHBOARD_ALLOWED, f"{name} is in no folder of the dashboard"
    for target in imported(modules("dashboard")[name]):
        if target.startswith("dashboard."):
            assert dashboard_layer(target) in DASHBOARD_ALLOWED[layer], f"{name} imports {target}"


CHECK = """
import importlib, pkgutil, sys
import core
for module in pkgutil.walk_packages(core.__path__, "core."):
    importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "streamlit" or m.startswith("streamlit."))
print(sum(1 for m in sys.modules if m.startswith("core.")), len(loaded))
"""


def test_importing_every_core_module_loads_no_streamlit() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    n_core, n_streamlit = map(int, result.stdout.split())
    assert n_core > 40 and n_streamlit == 0
