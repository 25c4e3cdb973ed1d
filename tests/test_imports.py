"""The import structure: no cycles (an import inside a function counts: it only hides a cycle), the
one-way package rule (graphs <- circuits -> transcoders; safeio imports none of them), a top level
of `circuits/` that stays small, and every module importable alone in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("circuits", "transcoders", "graphs", "safeio")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere (module level or inside functions), except in an
    `if TYPE_CHECKING:` block. `from pkg import mod` counts as importing pkg.mod."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in known:
                        out.add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = name.split(".")
                    parent = parent[: len(parent) - child.level + (1 if is_pkg else 0)]
                    base = ".".join(parent + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    if full in known:
                        out.add(full)
                    elif base in known:
                        out.add(base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles (an import inside a function counts):\n" + "\n".join(map(str, found))


def test_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["circuits.errors"] = graph["circuits.errors"] | {"circuits.trace"}  # trace -> ... -> errors
    assert any("circuits.errors" in c and "circuits.trace" in c for c in cycles(graph))


def test_packages_depend_one_way():
    allowed = {"circuits": {"circuits", "transcoders", "graphs", "safeio"}, "transcoders": {"transcoders", "safeio"},
               "graphs": {"graphs", "safeio"}, "safeio": {"safeio"}}
    bad = [(m, d) for m, deps in import_graph().items() for d in deps if d.split(".")[0] not in allowed[m.split(".")[0]]]
    assert bad == []


def test_circuits_top_level_is_small():
    modules = sorted(p.name for p in (ROOT / "circuits").glob("*.py"))
    assert len(modules) <= 6, modules


def test_every_module_imports_alone():
    """Each module in a fresh child process (forked from an interpreter that has imported only
    torch and the other third-party libraries, none of ours), so import order cannot hide a
    missing import or a cycle."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    names = sorted(n for n in all_modules() if n != "circuits.__main__")
    script = """
import os, sys, importlib, traceback
import numpy, scipy, torch, transformer_lens, typer, pydantic  # third party, shared by every child
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED", failed)
"""
    out = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert "FAILED []" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
