"""The package's shape: layers that only import downward, no import cycle, small classes, a lazy facade.

Every import statement counts, wherever it is: module top, function bodies,
``if TYPE_CHECKING:`` blocks (a lazy or type-only import of an upper layer
is still a lower layer knowing an upper one). The layers, lowest first::

    core < runtime < backplane < websocket < ops < integration < serving

A module may import its own layer or lower ones. The facade
(``flamigo_actors/__init__.py``) and ``flamigo_actors/__main__.py`` sit above
them all and may import anything; no module imports the facade. Every
subpackage ``__init__.py`` imports nothing (gevent's monkey-patching must come
first), and ``import flamigo_actors`` imports nothing heavy.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flamigo_actors"
TOP = PACKAGE.name
LAYERS = ["core", "runtime", "backplane", "websocket", "ops", "integration", "serving"]
EXEMPT = {TOP, f"{TOP}.__main__"}  # the facade and `python -m flamigo_actors`
MAX_CLASS_LINES = 260


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def trees() -> Iterator[tuple[str, Path, ast.Module]]:
    for name, path in MODULES.items():
        yield name, path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owning_module(name: str) -> str | None:
    while name and name not in MODULES:  # a name inside a module: that module
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, tree: ast.Module) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            # `from pkg import submodule` reaches the submodule; `from pkg import name`, pkg itself
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        for target in targets:
            if target.split(".")[0] == TOP:
                owner = _owning_module(target)
                if owner is not None and owner != name:
                    found.add(owner)
    return found


EDGES: dict[str, set[str]] = {name: imports_of(name, path, tree) for name, path, tree in trees()}


def layer_of(module: str) -> int:
    """The layer's rank; the facade and __main__ rank above every layer."""
    if module in EXEMPT:
        return len(LAYERS)
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer: put it in one of {LAYERS}")
    return LAYERS.index(parts[1])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_import_cycle_counting_every_import() -> None:
    found = cycles(EDGES)
    report = [
        "cycle: " + ", ".join(c) + "\n" + "\n".join(
            f"    {m} -> {', '.join(sorted(EDGES[m] & set(c)))}" for m in c
        )
        for c in found
    ]
    assert not found, "import cycles (every import statement counts):\n" + "\n".join(report)


def test_imports_only_point_down_the_layers() -> None:
    upward = sorted(
        f"{source} ({LAYERS[layer_of(source)]}) imports {target} "
        f"({LAYERS[layer_of(target)] if target not in EXEMPT else 'the facade'})"
        for source, targets in EDGES.items()
        if source not in EXEMPT
        for target in targets
        if layer_of(target) > layer_of(source)
    )
    assert not upward, (
        "imports from a higher layer (order: " + " < ".join(LAYERS) + "); pass a Protocol or a "
        "callable down instead:\n  " + "\n  ".join(upward)
    )


def test_subpackage_inits_import_nothing() -> None:
    offenders = [
        f"{name}: line {node.lineno}"
        for name, path, tree in trees()
        if path.name == "__init__.py" and name != TOP
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert not offenders, "a subpackage __init__.py imports something:\n  " + "\n  ".join(offenders)


def test_no_class_over_260_lines() -> None:
    big = sorted(
        f"{node.name} in {path.relative_to(ROOT)}: {node.end_lineno - node.lineno + 1} lines"
        for _, path, tree in trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_CLASS_LINES
    )
    assert not big, f"classes over {MAX_CLASS_LINES} lines (split them):\n  " + "\n  ".join(big)


def test_importing_the_package_imports_nothing_heavy() -> None:
    heavy = ["socket", "threading", "gevent", "flask", "pykka", "greenlet", "blinker", "werkzeug"]
    script = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import flamigo_actors\n"
        f"print(json.dumps(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {heavy!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"`import flamigo_actors` imported: {result.stdout.strip()}"


def _moved_modules() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MOVED_MODULES":
            return ast.literal_eval(node.value)  # type: ignore[arg-type, no-any-return]
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MOVED_MODULES" for t in node.targets):
            return ast.literal_eval(node.value)  # type: ignore[no-any-return]
    raise AssertionError("flamigo_actors/__init__.py defines no MOVED_MODULES table")


@pytest.mark.parametrize(("old", "new"), sorted(_moved_modules().items()))
def test_old_flat_module_paths_resolve_to_the_new_modules(old: str, new: str) -> None:
    assert f"{TOP}.{new}" in MODULES, f"MOVED_MODULES maps {old!r} to {new!r}, which does not exist"
    assert importlib.import_module(f"{TOP}.{old}") is importlib.import_module(f"{TOP}.{new}")


def test_the_facade_exports_resolve() -> None:
    import flamigo_actors

    for name, module in flamigo_actors._EXPORTS.items():
        assert f"{TOP}.{module}" in MODULES, f"_EXPORTS maps {name!r} to a missing module {module!r}"
        assert getattr(flamigo_actors, name) is getattr(importlib.import_module(f"{TOP}.{module}"), name)
