"""reidkit's modules import each other without a cycle (type-checking imports included): the package is layered,
and the training loop's satellites take explicit inputs instead of importing the loop back."""
from __future__ import annotations

import ast
from pathlib import Path

import reidkit

ROOT = Path(reidkit.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every reidkit module ``path`` imports, at any depth of its body (``if TYPE_CHECKING:`` and function-level
    imports too), with the packages an import of a submodule runs first (other than the importer's own
    enclosing packages, which are running already)."""
    name = module_name(path)
    enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target:
                if target in modules and target != name and target not in enclosing:
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_relative_type_checking_and_package_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "reidkit.config" in g["reidkit.pieces"]                       # from .config import Recipe
    assert "reidkit.engine" in g["reidkit.pieces"]                       # a submodule runs its package first
    assert "reidkit" not in g["reidkit.pieces"]                         # its own package is running already


def test_no_import_cycle_in_reidkit():
    assert cycles(import_graph()) == []


def test_the_registries_leaf_imports_no_method():
    """reidkit.sections is what the schema, the pieces and the methods share: it imports none of them."""
    assert import_graph()["reidkit.sections"] <= {"reidkit.names"}


def test_the_layers_of_docs_architecture():
    """docs/ARCHITECTURE.md's layers: the building blocks never import training or the commands; the foundations
    import only each other."""
    def top(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "reidkit"

    foundations = {"names", "files", "logs", "numerics", "sections"}
    blocks = {"data", "models", "evaluation", "reporting", "config", "recipe_files", "losses"}
    above = {"pieces", "engine", "methods", "deploy", "cli", "demo"}
    for module, imports in import_graph().items():
        layer = {top(i) for i in imports} - {top(module)}
        if top(module) in foundations:
            assert layer <= foundations, (module, layer)
        if top(module) in blocks:
            assert not layer & above, (module, layer & above)
