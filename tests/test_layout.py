"""Issue 15, the layout: no import cycle in blockseg/ or workers/, and workers/ free of dask, zarr and stores.

The import graph is read from the source with ``ast``: every import a module
runs when it is imported (its top level, outside functions and
``if TYPE_CHECKING:``), ``from pkg import submodule`` counted as importing
the submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    modules = {}
    for package in ("blockseg", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_time_nodes(tree: ast.Module) -> list[ast.AST]:
    nodes: list[ast.AST] = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            nodes.append(node)
            for name in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, name, None) or [])

    visit(tree.body)
    return nodes


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(targets)
    return found


def _own(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: {own for t in _imports(name, path, modules) if (own := _own(t, modules)) and own != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            assert state.get(child) != 1, "import cycle: " + " -> ".join(path + [name, child])
            if child not in state:
                walk(child, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [])


def test_workers_import_no_framework():
    modules = _modules()
    forbidden = ("dask", "distributed", "zarr", "blockseg", "sqlite3", "fsspec")
    for name, path in modules.items():
        if name.startswith("workers"):
            for tree_node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(tree_node, ast.Import):
                    names = [alias.name for alias in tree_node.names]
                elif isinstance(tree_node, ast.ImportFrom) and not tree_node.level:
                    names = [tree_node.module or ""]
                for imported in names:
                    assert imported.split(".")[0] not in forbidden, f"{name} imports {imported}"


def test_one_place_registers_the_built_in_stages():
    from blockseg.registry import STAGE_ORDER, STAGES

    assert list(STAGES) == list(STAGE_ORDER)
    assert STAGE_ORDER == (
        "predict", "lsds", "channels", "weights", "embeddings_to_affinities", "pca_preview", "check",
        "fragments", "agglomerate", "mws", "channel_instances", "stitch", "segments", "relabel", "evaluate",
        "downsample",
    )
    for path in (ROOT / "blockseg" / "tasks").glob("*.py"):
        assert "blockseg.registry" not in path.read_text(), f"{path.name} imports the registry"
