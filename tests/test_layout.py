"""The shape of the source tree: no import cycles between our modules, and every module
importable on its own (first, in a fresh interpreter), so that no module works only because
another one happened to be imported before it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "ephemeral_broker": ROOT / "app" / "ephemeral_broker",
    "ephemeral_broker_client": ROOT / "client" / "ephemeral_broker_client",
}


def our_modules() -> dict[str, Path]:
    modules = {}
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `path` imports, at any level (a function-level import counts: it is a
    dependency all the same)."""

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` depends on pkg.module; `from module import name` on module.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(module for module in map(ours, names) if module)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the list of its modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_our_modules() -> None:
    modules = our_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is the ordinary way to export them,
    # not a cycle: drop the edges from a submodule up to the package that contains it.
    for name, imported in graph.items():
        graph[name] = {other for other in imported if not name.startswith(other + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# Run in a child: imports each of our modules with none of our modules loaded before it (they
# are dropped from sys.modules after each; third-party packages stay loaded, which keeps it
# fast and changes nothing about the order of our own imports).
IMPORT_EACH_FIRST = """
import importlib, sys, traceback
TOPS = ("ephemeral_broker", "ephemeral_broker_client")
failures = {}
for name in sys.argv[1:]:
    ours = [m for m in sys.modules if m.split(".")[0] in TOPS]
    for loaded in ours:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = f"{type(exc).__name__}: {exc}"
print(repr(failures))
"""


def test_every_module_imports_first() -> None:
    skip = {"ephemeral_broker.__main__"}  # runs the command line when imported
    names = [name for name in our_modules() if name not in skip]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "{}", result.stdout
