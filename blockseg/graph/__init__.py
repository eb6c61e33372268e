"""Graph stores: where the RAG, the run's ledger and the LUTs live.

Pick one by URL:

- ``sqlite:///relative/graph.db`` or ``sqlite:////absolute/graph.db``: one
  SQLite file, written only by the driver;
- ``file:///absolute/folder`` or ``file://relative/folder``: one ``.npz`` per
  block per stage, safe for many writers on a shared filesystem; workers
  commit their own blocks;
- ``postgresql://user@host:port/database``: a PostgreSQL database that many
  workers write at once, each block in one transaction; credentials from
  ``PGPASSWORD`` or ``~/.pgpass``, never from the URL.

A store reopens from its ``url`` anywhere (``open_store(store.url)``), and a
pickled store reopens where it is unpickled, so block functions on workers
may read it (``read_block_edges``).
"""

from __future__ import annotations

from pathlib import Path

from blockseg.graph.base import BlockOutput, Edges, GraphStore, Nodes, StageState, StoreError
from blockseg.graph.files import FileGraphStore
from blockseg.graph.sqlite import SqliteGraphStore

__all__ = [
    "BlockOutput", "Edges", "GraphStore", "Nodes", "StageState", "StoreError",
    "SqliteGraphStore", "FileGraphStore", "open_store", "store_path", "absolute_url", "SCHEMES",
]

SCHEMES = ("sqlite", "file", "postgresql")


def store_path(url: str, base: Path | None = None) -> tuple[str, Path]:
    """The scheme and the file or folder a store URL names, relative paths taken from ``base``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise StoreError(
            f"graph store URL {url!r}: unknown scheme {scheme + '://' if sep else '(none)'}; "
            f"use sqlite:///path/graph.db, file:///path/graph/ or postgresql://user@host:port/database"
        )
    if scheme == "postgresql":
        raise StoreError(f"graph store URL {url!r}: a postgresql:// store has no path (see absolute_url)")
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


def absolute_url(url: str, base: Path | None = None, luts: Path | None = None) -> str:
    """``url`` with relative paths taken from ``base``, so workers and later runs agree on the place.

    A ``postgresql://`` URL gets its LUT folder, ``luts`` unless it names
    one (``?luts=...``); its password, if any, is refused here.
    """
    if url.startswith("postgresql://"):
        from blockseg.graph.postgres import parse_url

        if luts is not None and "luts=" not in url.partition("?")[2]:
            url = f"{url}{'&' if '?' in url else '?'}luts={luts}"
        return parse_url(url, base)[2]
    scheme, path = store_path(url, base)
    return f"{scheme}:///{path}" if scheme == "sqlite" else f"file://{path}"


def open_store(url: str, base: Path | None = None) -> GraphStore:
    """Open the graph store named by ``url``.

    Raises
    ------
    StoreError
        For an unknown scheme or a location that cannot be written; for a
        PostgreSQL server that cannot be reached, refuses the credentials
        or holds another run.
    """
    if url.startswith("postgresql://"):
        from blockseg.graph.postgres import PostgresGraphStore

        return PostgresGraphStore(url, base)
    scheme, path = store_path(url, base)
    if scheme == "sqlite":
        return SqliteGraphStore(path)
    return FileGraphStore(path)
