"""The house rules of docs/ARCHITECTURE.md, checked on the source.

- no import cycle inside ``explain/``, counting imports at module level and
  inside functions alike (a function-level import only hides a cycle);
- ``explain`` never imports the UI (``streamlit``, ``ui``, ``pages``), and only
  ``explain/cli`` imports ``sample_models``;
- the layers point one way: ``pages -> ui -> explain``;
- the public API of ``explain`` resolves, each name from its one home.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPLAIN = ROOT / "explain"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement in ``path`` names, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def explain_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in EXPLAIN.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imp in imported_modules(path):
            # `from explain.x import y` names explain.x (and explain.x.y when y is a module)
            if imp in files and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (package __init__ edges to children ignored)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def edges(node: str) -> set[str]:
        # importing explain.a.b runs explain/a/__init__ first; a parent package importing its own
        # child is how packages work, not a cycle
        return {t for t in graph[node] if not t.startswith(node + ".")}

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(edges(node)):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_inside_explain():
    graph = explain_graph()
    assert len(graph) > 60  # the walk really saw the library
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", sorted(EXPLAIN.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_the_ui(path):
    tops = {m.split(".")[0] for m in imported_modules(path)}
    assert not tops & {"streamlit", "ui", "pages"}, f"{path} imports the UI"
    if "cli" not in path.relative_to(EXPLAIN).parts:
        assert "sample_models" not in tops, f"{path}: only explain/cli may import sample_models"


def test_ui_never_imports_pages():
    for path in (ROOT / "ui").rglob("*.py"):
        assert "pages" not in {m.split(".")[0] for m in imported_modules(path)}, path


def test_public_api_resolves_from_one_home():
    import explain

    for name in explain.__all__:
        value = getattr(explain, name)
        home = explain._EXPORTS[name]
        assert getattr(__import__(home, fromlist=[name]), name) is value
        assert getattr(value, "__module__", home).startswith("explain"), name


def test_structure_never_imports_output():
    """Layer attribution lives in ``explain/output`` (layer_attribution, layer_importance); what the model
    is (``explain/structure``) never reaches up into why it predicts (issue 21: the one arrow back up)."""
    graph = explain_graph()
    up = {(name, target) for name, targets in graph.items() if name.startswith("explain.structure")
          for target in targets if target.startswith("explain.output")}
    assert not up, sorted(up)
    assert not any(name.startswith("explain.structure") and "layer" in name and "attribution" in name for name in graph)
