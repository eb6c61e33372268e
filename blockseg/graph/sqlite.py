"""The SQLite graph store: one file, written only by the driver.

WAL mode lets workers or users read while the driver commits; every block
commit is one transaction, so the done mark and the rows are never apart.

Rows go to indexed ``nodes`` and ``edges`` tables, for ROI queries. Each
block's edges are also kept as one row of packed arrays (``edge_blocks``), so
reading all edges of a run, what the segments stage does, costs a few
thousand blob reads instead of a Python tuple per edge.

Fragment ids are uint64 in blockseg but SQLite integers are signed 64 bit:
ids stay below 2**63 (the config checks this), so the cast is lossless.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg.graph.base import (
    BlockOutput,
    Edges,
    LutFolder,
    Nodes,
    StageState,
    StoreError,
    chunked_edges,
    concatenate_edges,
    graph_from,
    stale_commit,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY, z REAL NOT NULL, y REAL NOT NULL, x REAL NOT NULL,
    size INTEGER NOT NULL, stage TEXT NOT NULL, block INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_position ON nodes (z, y, x);
CREATE INDEX IF NOT EXISTS nodes_block ON nodes (stage, block);
CREATE TABLE IF NOT EXISTS edges (
    u INTEGER NOT NULL, v INTEGER NOT NULL, score REAL NOT NULL,
    stage TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (u, v));
CREATE INDEX IF NOT EXISTS edges_v ON edges (v);
CREATE INDEX IF NOT EXISTS edges_block ON edges (stage, block);
CREATE TABLE IF NOT EXISTS edge_blocks (
    stage TEXT NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    u BLOB NOT NULL, v BLOB NOT NULL, score BLOB NOT NULL, attrs BLOB,
    PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS done (
    stage TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL, block INTEGER NOT NULL, data BLOB, PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS stages (
    stage TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_INT64 = np.int64
_STAGE_TABLES = ("nodes", "edges", "edge_blocks", "done", "results", "stages")


def _pack(arrays: dict[str, np.ndarray]) -> bytes | None:
    if not arrays:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack(data: bytes | None) -> dict[str, np.ndarray]:
    if not data:
        return {}
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class SqliteGraphStore(LutFolder):
    """Graph store in one SQLite database file; LUTs in ``<file>.luts/``.

    Parameters
    ----------
    path : str or Path
        The database file; its folder is created if needed. ``:memory:``
        gives a throwaway store.
    """

    #: One writer: the driver commits every block (workers would wait on the file's lock).
    workers_write = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        in_memory = str(path) == ":memory:"
        if not in_memory:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"graph store {self.path}: cannot create its folder ({error.strerror})") from None
        self.lut_dir = Path(f"{self.path}.luts")
        try:
            self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL keeps WAL commits atomic across a crash of the process.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"graph store {self.path}: cannot open it for writing ({error})") from None
        self._columns = {table: self._table_columns(table) for table in ("nodes", "edges")}

    def __repr__(self) -> str:
        return f"SqliteGraphStore({str(self.path)!r})"

    def __reduce__(self):
        # a pickled store (sent to a worker) reopens the file there, for reading
        return (SqliteGraphStore, (self.path,))

    def _table_columns(self, table: str) -> list[str]:
        return [row[1] for row in self._db.execute(f"PRAGMA table_info({table})")]

    def _attribute_columns(self, table: str) -> list[str]:
        fixed = {"nodes": 7, "edges": 5}[table]
        return self._columns[table][fixed:]

    def _declare(self, table: str, attrs: dict[str, np.ndarray]) -> None:
        """Add a column for each attribute not seen before (inside the open transaction)."""
        for name, values in attrs.items():
            if name not in self._columns[table]:
                kind = "INTEGER" if np.issubdtype(values.dtype, np.integer) else "REAL"
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                self._columns[table].append(name)

    # -- writing -----------------------------------------------------------
    def commit_block(self, stage: str, block_id: int, output: BlockOutput, token: str | None = None) -> None:
        output.check()
        db = self._db
        block_id = int(block_id)
        db.execute("BEGIN IMMEDIATE")
        try:
            if token is not None:
                row = db.execute("SELECT token FROM stages WHERE stage = ?", (stage,)).fetchone()
                if row is None or row[0] != token:
                    raise stale_commit(stage, block_id, token, None if row is None else row[0])
            for table in ("nodes", "edges", "edge_blocks", "results"):
                db.execute(f"DELETE FROM {table} WHERE stage = ? AND block = ?", (stage, block_id))
            if output.nodes is not None and len(output.nodes):
                self._insert_nodes(stage, block_id, output.nodes)
            if output.edges is not None and len(output.edges):
                self._insert_edges(stage, block_id, output.edges)
            if output.result is not None:
                db.execute("INSERT INTO results VALUES (?, ?, ?)", (stage, block_id, output.result))
            db.execute("INSERT OR REPLACE INTO done VALUES (?, ?)", (stage, block_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._columns = {table: self._table_columns(table) for table in ("nodes", "edges")}
            raise

    def _insert_nodes(self, stage: str, block_id: int, nodes: Nodes) -> None:
        self._declare("nodes", nodes.attrs)
        names = list(nodes.attrs)
        columns = ["id", "z", "y", "x", "size", "stage", "block"] + names
        rows = zip(
            nodes.ids.astype(_INT64).tolist(),
            *(nodes.centers[:, d].astype(float).tolist() for d in range(3)),
            nodes.sizes.astype(_INT64).tolist(),
            [stage] * len(nodes),
            [block_id] * len(nodes),
            *(nodes.attrs[n].tolist() for n in names),
        )
        marks = ", ".join("?" * len(columns))
        self._db.executemany(f"INSERT OR REPLACE INTO nodes ({', '.join(columns)}) VALUES ({marks})", rows)

    def _insert_edges(self, stage: str, block_id: int, edges: Edges) -> None:
        self._declare("edges", edges.attrs)
        names = list(edges.attrs)
        columns = ["u", "v", "score", "stage", "block"] + names
        u = edges.u.astype(np.uint64)
        v = edges.v.astype(np.uint64)
        scores = edges.scores.astype(np.float32)
        rows = zip(
            u.astype(_INT64).tolist(),
            v.astype(_INT64).tolist(),
            scores.astype(float).tolist(),
            [stage] * len(edges),
            [block_id] * len(edges),
            *(edges.attrs[n].tolist() for n in names),
        )
        marks = ", ".join("?" * len(columns))
        self._db.executemany(f"INSERT OR REPLACE INTO edges ({', '.join(columns)}) VALUES ({marks})", rows)
        self._db.execute(
            "INSERT INTO edge_blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
            (stage, block_id, len(edges), u.tobytes(), v.tobytes(), scores.tobytes(), _pack(edges.attrs)),
        )

    def drop_stage(self, stage: str) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in _STAGE_TABLES:
                db.execute(f"DELETE FROM {table} WHERE stage = ?", (stage,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def set_stage_state(self, stage: str, state: StageState) -> None:
        self._db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?)", (stage, state.fingerprint, state.token))

    def write_meta(self, meta: dict) -> None:
        import json

        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('pipeline', ?)", (json.dumps(meta, sort_keys=True),))

    # -- reading -----------------------------------------------------------
    def read_meta(self) -> dict | None:
        import json

        row = self._db.execute("SELECT value FROM meta WHERE key = 'pipeline'").fetchone()
        return json.loads(row[0]) if row else None

    def done_blocks(self, stage: str) -> set[int]:
        rows = self._db.execute("SELECT block FROM done WHERE stage = ?", (stage,))
        return {row[0] for row in rows}

    def stage_state(self, stage: str) -> StageState | None:
        row = self._db.execute("SELECT fingerprint, token FROM stages WHERE stage = ?", (stage,)).fetchone()
        return StageState(*row) if row else None

    def block_results(self, stage: str) -> dict[int, bytes]:
        rows = self._db.execute("SELECT block, data FROM results WHERE stage = ?", (stage,))
        return {block: data for block, data in rows}

    def read_block_results(self, stage: str, block_ids: Sequence[int]) -> dict[int, bytes]:
        found = {}
        for block_id in sorted({int(b) for b in block_ids}):
            row = self._db.execute("SELECT data FROM results WHERE stage = ? AND block = ?", (stage, block_id)).fetchone()
            if row is not None:
                found[block_id] = bytes(row[0])
        return found

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        names = self._attribute_columns("nodes")
        columns = ", ".join(["id", "z", "y", "x", "size"] + names)
        where, params = _roi_clause(roi)
        rows = self._db.execute(f"SELECT {columns} FROM nodes{where} ORDER BY id", params).fetchall()
        if not rows:
            return Nodes.empty()
        columns_data = list(zip(*rows))
        ids = np.array(columns_data[0], dtype=np.int64).astype(np.uint64)
        centers = np.stack([np.array(columns_data[i], dtype=np.float64) for i in (1, 2, 3)], axis=1)
        sizes = np.array(columns_data[4], dtype=np.int64)
        attrs = {name: _column(columns_data[5 + i]) for i, name in enumerate(names)}
        return Nodes(ids, centers, sizes, attrs)

    def read_edges(self, roi: Roi | None = None) -> Edges:
        if roi is None:
            edges = concatenate_edges(list(self.iter_edges()))
            order = np.lexsort((edges.v, edges.u))
            return edges.take(order)
        names = self._attribute_columns("edges")
        columns = ", ".join(["u", "v", "score"] + names)
        where, params = _roi_clause(roi)
        inside = f"SELECT id FROM nodes{where}"
        rows = self._db.execute(
            f"SELECT {columns} FROM edges WHERE u IN ({inside}) OR v IN ({inside}) ORDER BY u, v",
            params + params,
        ).fetchall()
        if not rows:
            return Edges.empty()
        data = list(zip(*rows))
        return Edges(
            np.array(data[0], dtype=np.int64).astype(np.uint64),
            np.array(data[1], dtype=np.int64).astype(np.uint64),
            np.array(data[2], dtype=np.float32),
            {name: _column(data[3 + i]) for i, name in enumerate(names)},
        )

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        cursor = self._db.execute("SELECT u, v, score, attrs FROM edge_blocks ORDER BY stage, block")
        blocks = (
            Edges(
                np.frombuffer(u, dtype=np.uint64),
                np.frombuffer(v, dtype=np.uint64),
                np.frombuffer(score, dtype=np.float32),
                _unpack(attrs),
            )
            for u, v, score, attrs in cursor
        )
        return chunked_edges(blocks, chunk_size)

    def edge_block_ids(self, stage: str) -> list[int]:
        """Ids of the blocks of ``stage`` that wrote edges (sorted)."""
        rows = self._db.execute("SELECT block FROM edge_blocks WHERE stage = ? ORDER BY block", (stage,))
        return [row[0] for row in rows]

    def read_block_node_ids(self, stage: str, block_ids: Sequence[int]) -> np.ndarray:
        """Ids (uint64) of the nodes that blocks ``block_ids`` of ``stage`` wrote, in no particular order."""
        parts = []
        for block_id in block_ids:
            rows = self._db.execute("SELECT id FROM nodes WHERE stage = ? AND block = ?", (stage, int(block_id)))
            parts.append(np.array([row[0] for row in rows], np.int64))
        return np.concatenate(parts).astype(np.uint64) if parts else np.zeros(0, np.uint64)

    def read_block_edges(self, stage: str, block_ids: Sequence[int]) -> Edges:
        """The edges that blocks ``block_ids`` of ``stage`` wrote, block by block in the order given."""
        parts = []
        for block_id in block_ids:
            row = self._db.execute(
                "SELECT u, v, score, attrs FROM edge_blocks WHERE stage = ? AND block = ?", (stage, int(block_id))
            ).fetchone()
            if row is not None:
                u, v, score, attrs = row
                parts.append(Edges(np.frombuffer(u, dtype=np.uint64), np.frombuffer(v, dtype=np.uint64),
                                   np.frombuffer(score, dtype=np.float32), _unpack(attrs)))
        return concatenate_edges(parts)

    def read_graph(self, roi: Roi | None = None) -> nx.Graph:
        """A networkx graph of the nodes inside ``roi`` and their edges."""
        return graph_from(self.read_nodes(roi), self.read_edges(roi))

    def close(self) -> None:
        self._db.close()


def _column(values: tuple) -> np.ndarray:
    # NULL (an attribute another stage did not write) reads as NaN
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _roi_clause(roi: Roi | None) -> tuple[str, list]:
    if roi is None:
        return "", []
    clause = " WHERE z >= ? AND z < ? AND y >= ? AND y < ? AND x >= ? AND x < ?"
    params: list = []
    for o, e in zip(roi.offset, roi.end):
        params += [o, e]
    return clause, params
