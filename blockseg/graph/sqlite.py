"""The SQLite graph store: one file, written only by the driver.

WAL mode lets workers or users read while the driver commits; every block
commit is one transaction, so the done mark and the rows are never apart.
Fragment ids are uint64 in blockseg but SQLite integers are signed 64 bit:
ids stay below 2**63 (the config checks this), so the cast is lossless.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg.graph.base import BlockOutput, Edges, Nodes, StageState

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
CREATE TABLE IF NOT EXISTS done (
    stage TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS results (
    stage TEXT NOT NULL, block INTEGER NOT NULL, data BLOB, PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS stages (
    stage TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, token TEXT NOT NULL);
"""

_INT64 = np.int64


class SqliteGraphStore:
    """Graph store in one SQLite database file.

    Parameters
    ----------
    path : str or Path
        The database file; its folder is created if needed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":  # an in-memory store holds throwaway ledgers
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL keeps WAL commits atomic across a crash of the process.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteGraphStore({str(self.path)!r})"

    # -- writing -----------------------------------------------------------
    def commit_block(self, stage: str, block_id: int, output: BlockOutput) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM nodes WHERE stage = ? AND block = ?", (stage, block_id))
            db.execute("DELETE FROM edges WHERE stage = ? AND block = ?", (stage, block_id))
            # a rerun replaces the block's result too, even when it produces none
            db.execute("DELETE FROM results WHERE stage = ? AND block = ?", (stage, block_id))
            if output.nodes is not None and len(output.nodes):
                n = output.nodes
                rows = zip(
                    n.ids.astype(_INT64).tolist(),
                    *(n.centers[:, d].tolist() for d in range(3)),
                    n.sizes.astype(_INT64).tolist(),
                )
                db.executemany(
                    f"INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, '{_quote(stage)}', {int(block_id)})", rows
                )
            if output.edges is not None and len(output.edges):
                e = output.edges
                rows = zip(e.u.astype(_INT64).tolist(), e.v.astype(_INT64).tolist(), e.scores.astype(float).tolist())
                db.executemany(
                    f"INSERT OR REPLACE INTO edges VALUES (?, ?, ?, '{_quote(stage)}', {int(block_id)})", rows
                )
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                (stage, block_id, output.result),
            ) if output.result is not None else None
            db.execute("INSERT OR REPLACE INTO done VALUES (?, ?)", (stage, block_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def drop_stage(self, stage: str) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("nodes", "edges", "done", "results", "stages"):
                db.execute(f"DELETE FROM {table} WHERE stage = ?", (stage,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def set_stage_state(self, stage: str, state: StageState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO stages VALUES (?, ?, ?)", (stage, state.fingerprint, state.token)
        )

    # -- reading -----------------------------------------------------------
    def done_blocks(self, stage: str) -> set[int]:
        rows = self._db.execute("SELECT block FROM done WHERE stage = ?", (stage,))
        return {row[0] for row in rows}

    def stage_state(self, stage: str) -> StageState | None:
        row = self._db.execute("SELECT fingerprint, token FROM stages WHERE stage = ?", (stage,)).fetchone()
        return StageState(*row) if row else None

    def block_results(self, stage: str) -> dict[int, bytes]:
        rows = self._db.execute("SELECT block, data FROM results WHERE stage = ?", (stage,))
        return {block: data for block, data in rows}

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        query = "SELECT id, z, y, x, size FROM nodes"
        where, params = _roi_clause(roi)
        rows = self._db.execute(query + where + " ORDER BY id", params).fetchall()
        if not rows:
            return Nodes.empty()
        table = np.array(rows, dtype=np.float64)
        ids = np.array([r[0] for r in rows], dtype=np.int64).astype(np.uint64)
        return Nodes(ids, table[:, 1:4], table[:, 4].astype(np.int64))

    def read_edges(self, roi: Roi | None = None) -> Edges:
        if roi is None:
            chunks = list(self.iter_edges())
            if not chunks:
                return Edges.empty()
            return Edges(*(np.concatenate([getattr(c, f) for c in chunks]) for f in ("u", "v", "scores")))
        where, params = _roi_clause(roi)
        inside = f"SELECT id FROM nodes{where}"
        rows = self._db.execute(
            f"SELECT u, v, score FROM edges WHERE u IN ({inside}) OR v IN ({inside}) ORDER BY u, v",
            params + params,
        ).fetchall()
        return _edges_from_rows(rows)

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        cursor = self._db.execute("SELECT u, v, score FROM edges")
        while True:
            rows = cursor.fetchmany(chunk_size)
            if not rows:
                return
            yield _edges_from_rows(rows)

    def read_graph(self, roi: Roi | None = None) -> nx.Graph:
        """A networkx graph of the nodes inside ``roi`` and their edges."""
        nodes = self.read_nodes(roi)
        edges = self.read_edges(roi)
        graph = nx.Graph()
        for node_id, center, size in zip(nodes.ids.tolist(), nodes.centers.tolist(), nodes.sizes.tolist()):
            graph.add_node(node_id, center=tuple(center), size=size)
        for u, v, score in zip(edges.u.tolist(), edges.v.tolist(), edges.scores.tolist()):
            graph.add_edge(u, v, merge_score=score)
        return graph

    def close(self) -> None:
        self._db.close()


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _roi_clause(roi: Roi | None) -> tuple[str, list]:
    if roi is None:
        return "", []
    clause = " WHERE z >= ? AND z < ? AND y >= ? AND y < ? AND x >= ? AND x < ?"
    params: list = []
    for o, e in zip(roi.offset, roi.end):
        params += [o, e]
    return clause, params


def _edges_from_rows(rows: list) -> Edges:
    if not rows:
        return Edges.empty()
    u, v, s = zip(*rows)
    return Edges(
        np.array(u, dtype=np.int64).astype(np.uint64),
        np.array(v, dtype=np.int64).astype(np.uint64),
        np.array(s, dtype=np.float32),
    )
