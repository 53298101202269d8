"""Dependencies point one way: no import cycle between segbench's modules, even through imports
inside functions, no layer imports one above it (DESIGN.md's layering), small functions."""

import ast
from pathlib import Path

import segbench

ROOT = Path(segbench.__file__).parent

#: the packages from top to bottom; a module may import its own package and those below it only
#: (``geo`` and ``train``/``export``/``mmseg`` sit beside the tiler: used by callers above it)
LAYERS = [("cli",), ("demo",), ("study", "serve"), ("bench",), ("workflow", "segment"), ("cluster",),
          ("tiler", "geo", "batcher"), ("engines",), ("export", "train", "mmseg")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every segbench module ``path`` imports, anywhere in it (functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("segbench")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + [base]).strip(".")
            if base.startswith("segbench"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_no_import_cycle():
    # a package's __init__ re-exports its modules: an edge from a module to its own package's
    # __init__ is not a dependency on the package's other modules
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _graph().items()}
    assert _cycles(graph) == []


def test_no_layer_imports_one_above_it():
    upward = sorted((m, d) for m, deps in _graph().items() for d in deps
                    if _layer(m) is not None and _layer(d) is not None and _layer(d) < _layer(m))
    assert upward == []


def test_the_checker_sees_a_cycle_through_a_function(tmp_path):
    a = {"segbench.a": {"segbench.b"}, "segbench.b": {"segbench.c"}, "segbench.c": {"segbench.a"},
         "segbench.d": set()}
    assert _cycles(a) == [["segbench.a", "segbench.b", "segbench.c"]]
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from segbench.bench import report\n")
    assert "segbench.bench.report" in _imports(module, "segbench.x")


def test_no_function_is_over_80_lines():
    long = [(str(p.relative_to(ROOT)), n.name, n.end_lineno - n.lineno + 1) for p in ROOT.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno >= 80]
    assert long == []
