"""Graph stores: where the RAG and the run's ledger live.

Pick one by URL: ``sqlite:///relative/graph.db`` or ``sqlite:////abs/graph.db``.
"""

from __future__ import annotations

from pathlib import Path

from blockseg.graph.base import BlockOutput, Edges, GraphStore, Nodes, StageState
from blockseg.graph.sqlite import SqliteGraphStore

__all__ = ["BlockOutput", "Edges", "GraphStore", "Nodes", "StageState", "SqliteGraphStore", "open_store", "store_path"]


def store_path(url: str, base: Path | None = None) -> Path:
    """The file or folder a store URL names, relative paths taken from ``base``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "sqlite":
        raise ValueError(f"unsupported graph store URL {url!r}: expected sqlite:///path/graph.db")
    if not rest.startswith("/"):
        raise ValueError(f"graph store URL {url!r} must look like sqlite:///path/graph.db")
    # sqlite:///rel/graph.db is relative, sqlite:////abs/graph.db absolute
    path = Path(rest[1:])
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def open_store(url: str, base: Path | None = None) -> GraphStore:
    """Open the graph store named by ``url``."""
    return SqliteGraphStore(store_path(url, base))
