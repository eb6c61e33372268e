"""The contract every graph store keeps, and the parts all backends share.

A graph store holds the region adjacency graph of a run (fragments as nodes,
their contacts as edges with merge scores), the run's ledger (which blocks of
which stage are done, and the identity of each stage's current results) and
the lookup tables of the segments stage. Everything a block produces reaches
the store in one atomic commit together with its done mark, so a crash leaves
a block either wholly there or absent.

Nodes and edges may carry attributes beyond the required columns (a
fragment's mean affinity, several merge scores, ...): numeric arrays, one
value per row, named by the stage that writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg import lut_pieces

ATTRIBUTE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED = {"id", "z", "y", "x", "size", "u", "v", "score", "stage", "block"}


class StoreError(ValueError):
    """A graph store cannot be opened or used as asked; the message is one line."""


class StaleCommit(StoreError):
    """A block committed under a token that is no longer its stage's: the stage was reset since."""


def stale_commit(stage: str, block_id: int, token: str, current: str | None) -> StaleCommit:
    now = "the stage has no results now" if current is None else f"the stage's token is now {current[:8]}"
    return StaleCommit(f"{stage}: block {block_id} was computed for token {token[:8]}, but {now}; not committed")


def check_attribute_names(names) -> None:
    """Attribute names become SQL columns and archive keys: keep them plain."""
    for name in names:
        if not name or set(name) - ATTRIBUTE_NAME_CHARS or name[0].isdigit() or name in RESERVED:
            raise StoreError(
                f"attribute name {name!r}: use lower-case letters, digits and '_', "
                f"not starting with a digit, and none of {sorted(RESERVED)}"
            )


@dataclass
class Nodes:
    """RAG nodes: fragment ids, centres in nm (n, 3), sizes in voxels, attributes."""

    ids: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    attrs: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, dims: int = 3) -> "Nodes":
        return cls(np.zeros(0, np.uint64), np.zeros((0, dims), np.float64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "Nodes":
        return Nodes(self.ids[index], self.centers[index], self.sizes[index], {k: a[index] for k, a in self.attrs.items()})


@dataclass
class Edges:
    """RAG edges ``u < v`` with the score at which they merge, and attributes."""

    u: np.ndarray
    v: np.ndarray
    scores: np.ndarray
    attrs: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "Edges":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.u)

    def take(self, index: np.ndarray) -> "Edges":
        return Edges(self.u[index], self.v[index], self.scores[index], {k: a[index] for k, a in self.attrs.items()})


def concatenate_nodes(parts: list[Nodes]) -> Nodes:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Nodes.empty()
    names = set.intersection(*(set(p.attrs) for p in parts))
    return Nodes(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.centers for p in parts]),
        np.concatenate([p.sizes for p in parts]),
        {n: np.concatenate([p.attrs[n] for p in parts]) for n in sorted(names)},
    )


def concatenate_edges(parts: list[Edges]) -> Edges:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Edges.empty()
    names = set.intersection(*(set(p.attrs) for p in parts))
    return Edges(
        np.concatenate([p.u for p in parts]),
        np.concatenate([p.v for p in parts]),
        np.concatenate([p.scores for p in parts]),
        {n: np.concatenate([p.attrs[n] for p in parts]) for n in sorted(names)},
    )


def chunked_edges(parts, chunk_size: int):
    """Gather per-block edge arrays into chunks of at least ``chunk_size`` edges."""
    pending: list[Edges] = []
    count = 0
    for edges in parts:
        if edges is None or not len(edges):
            continue
        pending.append(edges)
        count += len(edges)
        if count >= chunk_size:
            yield concatenate_edges(pending)
            pending, count = [], 0
    if pending:
        yield concatenate_edges(pending)


@dataclass
class BlockOutput:
    """What a block hands to the store: graph rows and an opaque result."""

    nodes: Nodes | None = None
    edges: Edges | None = None
    result: bytes | None = None
    stats: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse malformed rows before anything is written."""
        if self.nodes is not None:
            n = len(self.nodes.ids)
            if self.nodes.centers.shape != (n, 3) or len(self.nodes.sizes) != n:
                raise StoreError(f"nodes: {n} ids but centers {self.nodes.centers.shape} and {len(self.nodes.sizes)} sizes")
            check_attribute_names(self.nodes.attrs)
            for name, values in self.nodes.attrs.items():
                if len(values) != n:
                    raise StoreError(f"node attribute {name}: {len(values)} values for {n} nodes")
        if self.edges is not None:
            n = len(self.edges.u)
            if len(self.edges.v) != n or len(self.edges.scores) != n:
                raise StoreError("edges: u, v and scores differ in length")
            check_attribute_names(self.edges.attrs)
            for name, values in self.edges.attrs.items():
                if len(values) != n:
                    raise StoreError(f"edge attribute {name}: {len(values)} values for {n} edges")


@dataclass(frozen=True)
class StageState:
    """Identity of a stage's results: what they were computed from, and their token."""

    fingerprint: str
    token: str


class GraphStore(Protocol):
    """What blockseg needs from a graph store."""

    url: str
    #: Whether workers commit their own blocks (the store is pickled to them and
    #: reopens there); otherwise the driver commits every block.
    workers_write: bool

    def commit_block(self, stage: str, block_id: int, output: BlockOutput, token: str | None = None) -> None:
        """Replace the block's rows of ``stage`` and mark it done, atomically.

        With ``token``, raise :class:`StaleCommit` and write nothing unless
        it is the stage's current token. Workers commit with it, so a block
        still running on a worker of an earlier run (a driver killed and
        started again with another config) cannot land in the reset stage.
        """

    def done_blocks(self, stage: str) -> set[int]:
        """Ids of the blocks of ``stage`` that are done."""

    def drop_stage(self, stage: str) -> None:
        """Forget everything ``stage`` wrote: rows, results, done marks and state."""

    def stage_state(self, stage: str) -> StageState | None: ...

    def set_stage_state(self, stage: str, state: StageState) -> None: ...

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        """Nodes whose centre lies inside ``roi`` (all nodes if None), sorted by id."""

    def read_edges(self, roi: Roi | None = None) -> Edges:
        """Edges with at least one node whose centre lies inside ``roi``, sorted by (u, v)."""

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        """All edges, in chunks of numpy arrays, without Python objects per edge."""

    def edge_block_ids(self, stage: str) -> list[int]:
        """Ids of the blocks of ``stage`` whose edges :meth:`read_block_edges` can read (sorted)."""

    def read_block_node_ids(self, stage: str, block_ids: Sequence[int]) -> np.ndarray:
        """Ids (uint64) of the nodes written by blocks ``block_ids`` of ``stage`` (any order)."""

    def read_block_edges(self, stage: str, block_ids: Sequence[int]) -> Edges:
        """The edges written by blocks ``block_ids`` of ``stage`` (any order; missing blocks read as none).

        Safe to call on a worker, on a store reopened there from its URL
        (:func:`blockseg.graph.open_store`).
        """

    def read_graph(self, roi: Roi | None = None) -> nx.Graph: ...

    def block_results(self, stage: str) -> dict[int, bytes]: ...

    def read_block_results(self, stage: str, block_ids: Sequence[int]) -> dict[int, bytes]:
        """The results that blocks ``block_ids`` of ``stage`` stored (blocks without one are left out).

        Reads only those blocks, so that tasks summing groups of blocks on
        the workers each read their own; safe on a store reopened there.
        """

    def write_lut(self, threshold: float, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> None: ...

    def read_lut(self, threshold: float) -> tuple[np.ndarray, np.ndarray]: ...

    def lut_path(self, threshold: float) -> Path:
        """The LUT's ``.npy`` file, for workers that memory-map their rows."""

    def drop_luts(self) -> None: ...

    def read_meta(self) -> dict | None: ...

    def write_meta(self, meta: dict) -> None: ...

    def close(self) -> None: ...


class LutFolder:
    """LUTs in a folder, one sub-folder of pieces per threshold, shared by the backends.

    Each threshold's LUT is stored in pieces by home block
    (:mod:`blockseg.lut_pieces`): a relabel block memory-maps the one piece
    that holds its fragments and reads only its own rows, which no database
    query would beat, and the distributed segments stage writes each piece
    from the worker that computed it. :meth:`lut_path` is the LUT's index
    file, present only once every piece is written.
    """

    lut_dir: Path

    def write_lut(self, threshold: float, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> None:
        """Store a LUT computed whole, as one piece."""
        fragment_ids = np.asarray(fragment_ids)
        segment_ids = np.asarray(segment_ids)
        if len(fragment_ids) > 1 and not bool(np.all(fragment_ids[1:] > fragment_ids[:-1])):
            order = np.argsort(fragment_ids, kind="stable")
            fragment_ids, segment_ids = fragment_ids[order], segment_ids[order]
        lut_pieces.write_whole(self.lut_folder(threshold), threshold, fragment_ids, segment_ids)

    def read_lut(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        path = self.lut_path(threshold)
        if not path.exists():
            raise StoreError(f"no LUT for threshold {threshold!r} in {self.lut_dir}")
        return lut_pieces.read_all(path)

    def read_lut_range(self, threshold: float, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        return lut_pieces.read_range(self.lut_path(threshold), low, high)

    def lut_folder(self, threshold: float) -> Path:
        """Where the pieces of a threshold's LUT go."""
        return self.lut_dir / lut_pieces.folder_name(threshold)

    def lut_path(self, threshold: float) -> Path:
        """The LUT's index file (relabel blocks and evaluate read the pieces through it)."""
        return self.lut_folder(threshold) / lut_pieces.INDEX

    def lut_thresholds(self) -> list[float]:
        if not self.lut_dir.exists():
            return []
        indexes = self.lut_dir.glob(f"threshold_*/{lut_pieces.INDEX}")
        return sorted(float(p.parent.name[len("threshold_"):]) for p in indexes)

    def drop_luts(self) -> None:
        if not self.lut_dir.exists():
            return
        for path in self.lut_dir.glob("threshold_*"):
            if path.is_dir():
                lut_pieces.drop(path)
            else:  # a single-file LUT of an earlier version
                path.unlink(missing_ok=True)


def graph_from(nodes: Nodes, edges: Edges) -> nx.Graph:
    """A networkx graph of ``nodes`` (with their attributes) and ``edges``.

    Endpoints of ``edges`` that are not among ``nodes`` (neighbours outside a
    ROI) are added without attributes.
    """
    graph = nx.Graph()
    names = list(nodes.attrs)
    columns = [nodes.attrs[n].tolist() for n in names]
    for i, (node_id, center, size) in enumerate(zip(nodes.ids.tolist(), nodes.centers.tolist(), nodes.sizes.tolist())):
        data = {"center": tuple(center), "size": size}
        data.update({name: column[i] for name, column in zip(names, columns)})
        graph.add_node(node_id, **data)
    edge_names = list(edges.attrs)
    edge_columns = [edges.attrs[n].tolist() for n in edge_names]
    for i, (u, v, score) in enumerate(zip(edges.u.tolist(), edges.v.tolist(), edges.scores.tolist())):
        data = {"merge_score": score}
        data.update({name: column[i] for name, column in zip(edge_names, edge_columns)})
        graph.add_edge(u, v, **data)
    return graph


def nodes_in_roi(nodes: Nodes, roi: Roi | None) -> np.ndarray:
    """Mask of the nodes whose centre lies in ``roi`` (half-open)."""
    if roi is None:
        return np.ones(len(nodes), bool)
    inside = np.ones(len(nodes), bool)
    for axis, (low, high) in enumerate(zip(roi.offset, roi.end)):
        inside &= (nodes.centers[:, axis] >= low) & (nodes.centers[:, axis] < high)
    return inside


def meta_text(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)
