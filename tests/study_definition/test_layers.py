"""The package layout is one-way: every import (module-level or inside a function) goes to a lower layer or within
one subpackage, and no module imports itself back through others (pipelines/__init__.py draws the layers)."""
import ast
from pathlib import Path

from conftest import ROOT

# the lowest first; a module may import from an earlier layer, or from its own unit
LAYERS = [
    ["aa_modules"],
    ["pipelines.settings"],
    ["pipelines.profiles"],
    ["pipelines.spec"],
    ["pipelines.tracking"],
    ["pipelines.data"],
    ["pipelines.training"],
    ["pipelines.launch", "reports"],  # siblings: neither imports the other
    ["aa_study"],
]


def _unit(module: str) -> str:
    for layer in LAYERS:
        for unit in layer:
            if module == unit or module.startswith(unit + "."):
                return unit
    return ""


def _rank(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _modules():
    for pkg in ("aa_modules", "pipelines", "reports", "aa_study"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            yield ".".join(parts), is_pkg, f


def _imports(module: str, is_pkg: bool, path: Path):
    """Every module of ours that `path` imports, anywhere in it."""
    ours = ("aa_modules", "pipelines", "reports", "aa_study")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [(f"{stem}.{a.name}", stem) for a in node.names]  # the submodule if it is one, else stem
        else:
            continue
        for n in names:
            if (n if isinstance(n, str) else n[1]).split(".")[0] in ours:
                yield n


def _graph():
    mods = {m: (is_pkg, f) for m, is_pkg, f in _modules()}
    graph = {}
    for m, (is_pkg, f) in mods.items():
        targets = set()
        for n in _imports(m, is_pkg, f):
            if isinstance(n, tuple):  # `from pkg import name`: the module pkg.name if it is one, else pkg
                n = n[0] if n[0] in mods else n[1]
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != m:
                targets.add(n)
        graph[m] = targets
    return graph


def test_every_module_is_in_a_layer():
    assert [m for m in _graph() if not _unit(m) and m != "pipelines"] == []


def test_imports_go_down_the_layers_only():
    wrong = []
    for m, targets in _graph().items():
        if m == "pipelines":
            continue
        for t in targets:
            if t == "pipelines" or _unit(t) == _unit(m):
                continue
            if _rank(_unit(t)) >= _rank(_unit(m)):
                wrong.append(f"{m} -> {t}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
