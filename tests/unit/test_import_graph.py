"""bigft's import graph follows the data flow of DESIGN.md: no module imports one that imports it
back (directly or around a circle), and the model loader never calls up into the demo or the
training entry point.

Every `import` and `from ... import` counts, at module level or inside a function: a deferred
import hides a circle from Python at start-up, not from a reader following the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bigft

PACKAGE = Path(bigft.__file__).resolve().parent

# package → packages (or top-level modules) it must never import, from DESIGN.md's data flow:
# "a module knows the ones before it, never the ones after". The demo is built on top of
# `bigft-train`, so nothing the trainer runs may import the demo layer's trainer-calling code.
FORBIDDEN = {
    # validate asks methods which combinations they refuse (unsupported_reason), at start-up.
    "config": {"models", "data", "tasks", "engine", "train", "demo", "launch"},
    "models": {"demo", "train", "launch", "methods", "tasks", "engine", "data"},
    "methods": {"demo", "train", "launch", "tasks", "engine", "data"},
    "data": {"demo", "train", "launch", "engine"},
    "tasks": {"demo", "train", "launch", "engine"},
    "engine": {"demo", "train", "launch"},
    "demo": {"train"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The bigft modules `path` imports, anywhere in the file, resolved to known modules."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from bigft.x import y` imports bigft.x.y when y is a module, else bigft.x.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_imports_a_module_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_packages_import_only_what_comes_before_them_in_the_data_flow():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if top_package(target) in FORBIDDEN.get(top_package(module), ())
    )
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    graph = import_graph()
    # Known edges of each kind, so that a broken walk cannot pass the tests above vacuously.
    assert "bigft.methods.lora" in graph["bigft.methods"]  # inside apply_method
    assert "bigft.config.schema" in graph["bigft.config"]  # module level
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
