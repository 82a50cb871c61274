"""The pack's modules import each other without loops, counting imports inside functions too: a loop hidden in a
function (as `weights` ↔ `model_catalog` once was) still ties two files together and breaks on a reorder."""
import ast
from pathlib import Path

from conftest import REPO


def import_graph(folder: Path) -> dict[str, set[str]]:
    """Module name (dotted, inside `folder`, stage subpackages included) → the modules of `folder` it imports
    (relative imports, at any depth of the file; an import leaving `folder` is not an edge)."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (path, parts[:-1] if is_package else parts[:-1])
    graph = {}
    for name, (path, package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0 or node.level - 1 > len(package):
                continue
            base = list(package[:len(package) - (node.level - 1)])
            targets = [".".join(base + node.module.split("."))] if node.module else \
                [".".join(base + [alias.name]) for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # `from .x import name`: the module is x
                if target:
                    deps.add(target)
        graph[name] = deps - {name}
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
        graph = import_graph(REPO / folder)
        assert len(graph) > 10, folder  # the walk found the folder's modules
        assert not loops(graph), folder


def test_a_loop_inside_a_function_is_found(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    (tmp_path / "c.py").write_text("from . import a\n")
    assert loops(import_graph(tmp_path)) == {("a", "b")}


def test_a_loop_across_stage_subpackages_is_found(tmp_path):
    for stage in ("audio", "video"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "__init__.py").write_text("")
    (tmp_path / "audio" / "clip.py").write_text("from ..video.writer import x\n")
    (tmp_path / "video" / "writer.py").write_text("def f():\n    from ..audio.clip import y\n")
    (tmp_path / "video" / "rife.py").write_text("from .writer import z\nfrom .. import pixels\n")
    (tmp_path / "pixels.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["video.rife"] == {"video.writer", "pixels"}
    assert loops(graph) == {("audio.clip", "video.writer")}
