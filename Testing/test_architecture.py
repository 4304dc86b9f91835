"""The package's layering: modules import only modules of their own layer or below, and no module imports itself back
through others (an import circle). Function-level imports count: a deferred import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "VertebralFractureLib"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top, as README.md's architecture section draws them.
LAYERS = {
    "": 0,  # the package itself: version only
    "errors": 0,
    "io": 1,
    "results": 2,
    "segment": 3,
    "morphometry": 4,
    "screening": 5,
    "outputs": 6,
    "pipeline": 7,
    "evaluate": 7,
    "curate": 7,
    "slicer": 8,
    "archive": 9,
    "batch": 9,
    "cluster": 9,
    "benchmark": 9,
    "train": 9,
    "serve": 9,
    "cli": 10,
    "__main__": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = PACKAGE_DIR.joinpath(*name.split(".")) if name else PACKAGE_DIR
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative to the package; "" is the package itself)."""
    current = module_name(path)
    package = current.split(".") if path.name == "__init__.py" else current.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                found.add(submodule if is_module(submodule) else target)
    found.discard(current)
    return found


def dependency_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYERS, f"{PACKAGE}.{module}: not in a layer; add its folder to LAYERS (and to the README)"
    return LAYERS[top]


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} (layer {layer_of(module)}) imports {other} (layer {layer_of(other)})"
            for module, others in sorted(graph.items()) for other in sorted(others)
            if layer_of(other) > layer_of(module)]


def test_no_import_circle():
    assert import_circles(dependency_graph()) == []


def test_layers_import_only_downwards():
    assert upward_imports(dependency_graph()) == []


def test_the_checks_find_circles_and_upward_imports():
    """The two checks on a made-up graph with today's kinds of defect: a pair importing each other, a circle through
    a third module, and a lower layer importing a higher one."""
    graph = {
        "cli.common": {"cli.deep"}, "cli.deep": {"cli.common"},
        "morphometry.grade": {"results"}, "results": {"morphometry.qc"}, "morphometry.qc": {"morphometry.grade"},
        "segment": {"slicer.process"}, "slicer.process": set(),
    }
    assert sorted(import_circles(graph)) == [["cli.common", "cli.deep"],
                                             ["morphometry.grade", "morphometry.qc", "results"]]
    assert upward_imports(graph) == ["results (layer 2) imports morphometry.qc (layer 4)",
                                     "segment (layer 3) imports slicer.process (layer 8)"]


def test_every_module_has_a_layer_and_long_modules_say_why():
    """Modules over about 600 lines say at their top why they stay whole."""
    for path in PACKAGE_DIR.rglob("*.py"):
        layer_of(module_name(path))
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 650:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            assert "Kept whole:" in docstring, f"{path.name}: {text.count(chr(10))} lines and no reason at its top"
