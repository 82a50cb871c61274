"""The pack's modules import each other without loops, counting imports inside functions too: a loop hidden in a
function (as `weights` ↔ `model_catalog` once was) still ties two files together and breaks on a reorder."""
import ast
from pathlib import Path

from conftest import REPO


def import_graph(folder: Path) -> dict[str, set[str]]:
    """Module name → the modules of the same folder it imports (relative imports, at any depth of the file)."""
    graph = {}
    for path in sorted(folder.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[path.stem] = deps & {p.stem for p in folder.glob("*.py")} - {path.stem}
    return graph


def loops(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Each import loop as the sorted names of its modules."""
    found = set()

    def walk(module: str, path: list[str]) -> None:
        for dep in graph[module]:
            if dep in path:
                found.add(tuple(sorted(path[path.index(dep):])))
            else:
                walk(dep, path + [dep])

    for module in graph:
        walk(module, [module])
    return found


def test_no_import_loops_in_the_library_or_the_nodes():
    for folder in ("sonic_model", "nodes"):
        assert not loops(import_graph(REPO / folder)), folder


def test_a_loop_inside_a_function_is_found(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    assert loops(import_graph(tmp_path)) == {("a", "b")}
