"""Graph stores: where the RAG, the run's ledger and the LUTs live.

Pick one by URL:

- ``sqlite:///relative/graph.db`` or ``sqlite:////absolute/graph.db``: one
  SQLite file, written only by the driver;
- ``file:///absolute/folder`` or ``file://relative/folder``: one ``.npz`` per
  block per stage, safe for many writers on a shared filesystem.
"""

from __future__ import annotations

from pathlib import Path

from blockseg.graph.base import BlockOutput, Edges, GraphStore, Nodes, StageState, StoreError
from blockseg.graph.files import FileGraphStore
from blockseg.graph.sqlite import SqliteGraphStore

__all__ = [
    "BlockOutput", "Edges", "GraphStore", "Nodes", "StageState", "StoreError",
    "SqliteGraphStore", "FileGraphStore", "open_store", "store_path", "SCHEMES",
]

SCHEMES = ("sqlite", "file")


def store_path(url: str, base: Path | None = None) -> tuple[str, Path]:
    """The scheme and the file or folder a store URL names, relative paths taken from ``base``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise StoreError(
            f"graph store URL {url!r}: unknown scheme {scheme + '://' if sep else '(none)'}; "
            f"use sqlite:///path/graph.db or file:///path/graph/"
        )
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise StoreError(f"graph store URL {url!r}: expected sqlite:///path/graph.db")
        # sqlite:///rel/graph.db is relative, sqlite:////abs/graph.db absolute
        rest = rest[1:]
    if not rest:
        raise StoreError(f"graph store URL {url!r}: no path")
    path = Path(rest)
    if not path.is_absolute() and base is not None:
        path = base / path
    return scheme, path


def open_store(url: str, base: Path | None = None) -> GraphStore:
    """Open the graph store named by ``url``.

    Raises
    ------
    StoreError
        For an unknown scheme or a location that cannot be written.
    """
    scheme, path = store_path(url, base)
    if scheme == "sqlite":
        return SqliteGraphStore(path)
    return FileGraphStore(path)
