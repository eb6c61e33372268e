"""Lookup tables of the whole RAG computed on the cluster, never holding all edges in one process.

The blocks are cut into *pieces* of ``blocks_per_piece`` consecutive block
ids. A task per piece reads the edges and nodes its blocks wrote (on a
worker, from the store) and labels every fragment they name with the
smallest id of its component inside the piece, at every threshold
(:func:`workers.components.threshold_labels`).

A fragment is named only by blocks within ``reach`` block ids of its home
block (``reach`` is measured on the way, exactly). So a fragment whose home
lies more than ``reach`` inside a range of blocks can be named by no block
outside it: it is *closed* there. Only open fragments travel up, as pairs
``(fragment, label)``; neighbouring ranges join their pairs
(:func:`workers.components.merge_pairs`), level by level, each level twice
as wide, until one range holds every block and everything is closed. Then
the labels travel down: each range looks its labels up in its parent's, and
each piece writes its LUT piece (the fragments whose home block it holds) to
the store, from the worker.

What a level holds is the fragments near the borders of its ranges, not the
graph. None of it stays in memory: every task writes what later tasks read
(a piece's labels, a range's joined pairs, its final labels) to a scratch
folder beside the LUTs (:func:`scratch_root`; on the filesystem all workers
share, as the LUT pieces are) and returns only the file's path. So the
scheduler and the workers hold paths and a handful of numbers between
tasks, a worker holds the arrays of the task it runs, and the driver holds
futures; the state that grows with the volume lies on disk. Each run of the
stage writes to a fresh folder (a rerun after a crash never reads an
earlier run's files) and removes it when it finishes.

Scratch files are ``.npy`` tables of uint64 rows, written under a temporary
name and renamed into place:

    piece_<k>.npy             (1 + T, n): a piece's fragment ids (row 0, sorted) and
                              their labels at each of the T sorted thresholds
    join_<level>_<i>_<r>.npy  (2, n): a range's joined ids and labels at threshold r
    final_<level>_<i>_<r>.npy (2, n): a range's final labels at threshold r

The price is disk: every level narrower than ``2 * reach`` blocks passes all
its fragments up, so the folder peaks at several times the LUTs' size
(benchmarks/scale.py at 10^8 edges: 30.6 GB of scratch beside 3.1 GB of
LUTs). What still grows with the volume in memory is a join's input, the
fragments within ``reach`` of its children's borders: with blocks numbered
in z, y, x order that is a slab of the volume a few block layers thick.

The result equals :func:`blockseg.segments.connected_component_luts` exactly:
every label is the smallest id of a component, and the smallest id of a
union of components is the smallest of their smallest ids.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from blockseg import lut_pieces
from workers.components import UNBOUNDED, lookup, merge_pairs, open_mask, threshold_labels

# edges per piece the piece size aims at (memory of a piece task: about 0.3 KB per edge)
EDGES_PER_PIECE = 2_000_000
# and at least this many pieces, for parallelism, once a graph has PARALLEL_EDGES edges
MIN_PIECES = 8
# below this a graph is one piece: a piece task is milliseconds there, and the
# tree of joins over 8 pieces (a task per threshold and level) cost 0.75 s on
# the 8-block benchmark volume against 0.05 s for the whole stage before
PARALLEL_EDGES = 1_000_000
# the scratch folder is the LUT folder's name with this suffix, beside it
SCRATCH_SUFFIX = ".scratch"


# -- reading a piece's rows on a worker -------------------------------------


def read_piece(store_url: str, stages: Sequence[str], first_block: int, end_block: int, ids_per_block: int):
    """The edges and node ids blocks ``first_block .. end_block - 1`` wrote, and how far they reach.

    Returns ``(u, v, scores, node_ids, reach)``; ``reach`` is the largest
    distance, in block ids, between a block and the home block of a fragment
    it names.
    """
    from blockseg.graph import open_store

    store = open_store(store_url)
    try:
        us, vs, scores, nodes = [], [], [], []
        reach = 0
        per_block = np.uint64(ids_per_block)
        for stage in stages:
            for block_id in range(first_block, end_block):
                edges = store.read_block_edges(stage, [block_id])
                ids = store.read_block_node_ids(stage, [block_id])
                for named in (edges.u, edges.v, ids):
                    if len(named):
                        home = (np.asarray(named, np.uint64) // per_block).astype(np.int64)
                        reach = max(reach, int(np.abs(home - block_id).max()))
                if len(edges):
                    us.append(np.asarray(edges.u, np.uint64))
                    vs.append(np.asarray(edges.v, np.uint64))
                    scores.append(np.asarray(edges.scores))
                if len(ids):
                    nodes.append(ids)
    finally:
        store.close()
    empty = np.zeros(0, np.uint64)
    u = np.concatenate(us) if us else empty
    v = np.concatenate(vs) if vs else empty
    if (u == 0).any() or (v == 0).any():
        raise ValueError("an edge names fragment 0, which is background")
    node_ids = np.concatenate(nodes) if nodes else empty
    return u, v, (np.concatenate(scores) if scores else np.zeros(0, np.float32)), node_ids[node_ids != 0], reach


# -- scratch files ---------------------------------------------------------


def scratch_root(store) -> Path:
    """Where the stage's scratch folders go: beside the store's LUT folder, ``<lut_dir>.scratch``.

    Beside it rather than inside it, so that nothing that lists or watches
    the LUT folder (a LUT's thresholds, its removal, its size) sees them; on
    the same filesystem as the LUTs, which every worker already shares.
    """
    lut_dir = Path(store.lut_dir)
    return lut_dir.with_name(lut_dir.name + SCRATCH_SUFFIX)


def fresh_scratch(store) -> Path:
    """An empty scratch folder of its own for this run of the stage, after removing every earlier run's.

    A run that crashed left its folder behind; its files are never read again
    (this run's folder has a new name), and removing them frees the disk.
    """
    root = scratch_root(store)
    shutil.rmtree(root, ignore_errors=True)
    folder = root / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def remove_scratch(folder: Path) -> None:
    """Remove a run's scratch folder, and the scratch root once no other folder is left in it."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # not empty (or gone already)
        pass


def save_rows(path: str | Path, rows: Sequence[np.ndarray]) -> str:
    """Write ``rows`` as one ``(k, n)`` uint64 ``.npy`` table, under a temporary name renamed into place.

    Parameters
    ----------
    path : str or Path
        The table's file; its folder must exist (a task of a run whose
        scratch folder was removed fails instead of writing a stray file).
    rows : sequence of ndarray
        1-D arrays of length ``n`` or 2-D arrays of ``n`` columns, uint64;
        written one after the other without stacking them into a copy.

    Returns
    -------
    str
        ``path``, the task's small result.
    """
    arrays = [np.atleast_2d(np.asarray(row, np.uint64)) for row in rows]
    n = arrays[0].shape[1]
    if any(a.ndim != 2 or a.shape[1] != n for a in arrays):
        raise ValueError(f"rows of different lengths: {[a.shape for a in arrays]}")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint64)), "fortran_order": False,
              "shape": (sum(a.shape[0] for a in arrays), n)}
    path = Path(path)
    # a task run twice (a lost worker's result recomputed) replaces the file
    # whole: a reader that mapped the old one keeps its (identical) content
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for array in arrays:
                np.ascontiguousarray(array).tofile(handle)
        # no fsync: a crash discards the whole scratch folder anyway
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return str(path)


def load_rows(path: str | Path) -> np.ndarray:
    """A scratch table, memory-mapped: a task pages in only the rows (and parts of rows) it reads."""
    return np.load(path, mmap_mode="r")


# -- the tasks --------------------------------------------------------------


def piece_labels(
    store_url: str,
    stages: Sequence[str],
    first_block: int,
    end_block: int,
    ids_per_block: int,
    thresholds: Sequence[float],
    out: str,
) -> tuple[str, int]:
    """Label a piece's fragments within the piece and write them to ``out``: ``(out, reach)``.

    ``out`` holds the sorted ids (row 0) and their labels at each sorted
    threshold (rows 1 ..); ``reach`` is how far the piece's blocks name
    fragments from their home block (:func:`read_piece`).
    """
    u, v, scores, node_ids, reach = read_piece(store_url, stages, first_block, end_block, ids_per_block)
    ids, labels = threshold_labels(u, v, scores, thresholds, extra_ids=node_ids)
    del u, v, scores, node_ids
    return save_rows(out, [ids, labels]), reach


def open_pairs(
    ids: np.ndarray, labels: np.ndarray, low: int, high: int, reach: int, ids_per_block: int
) -> tuple[np.ndarray, np.ndarray]:
    """What a range (or piece) of blocks ``low .. high - 1`` passes up at one threshold: open ids, their labels."""
    is_open = open_mask(ids, ids_per_block, low, high, reach)
    return np.asarray(ids[is_open]), np.asarray(labels[is_open])


def join_ranges(
    children: Sequence[str],
    label_rows: Sequence[int],
    lows: Sequence[int],
    highs: Sequence[int],
    reach: int,
    ids_per_block: int,
    out: str,
) -> str:
    """Join the open pairs of neighbouring ranges at one threshold and write the components to ``out``.

    Parameters
    ----------
    children : sequence of str
        Each child's table: a piece's labels or a range's joined pairs.
    label_rows : sequence of int
        The row of each child's table that holds this threshold's labels
        (1 + the threshold's index for a piece, 1 for a range); row 0 holds the ids.
    lows, highs : sequence of int
        Each child's blocks, ``low .. high - 1``: its closed fragments stay behind.
    reach, ids_per_block : int
        As :func:`workers.components.open_mask` takes them.
    out : str
        Where the joined ids and labels go, as a ``(2, n)`` table.

    Returns
    -------
    str
        ``out``.
    """
    vertices, parents = [], []
    for path, row, low, high in zip(children, label_rows, lows, highs):
        table = load_rows(path)
        ids, labels = open_pairs(table[0], table[row], low, high, reach, ids_per_block)
        vertices.append(ids)
        parents.append(labels)
        del table
    vertices_all, parents_all = np.concatenate(vertices), np.concatenate(parents)
    del vertices, parents
    ids, labels = merge_pairs(vertices_all, parents_all)
    del vertices_all, parents_all
    return save_rows(out, [ids, labels])


def _contains(sorted_ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each of ``queries`` is among ``sorted_ids`` (a binary search: both are sorted, no hashing)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(queries), bool)
    position = np.minimum(np.searchsorted(sorted_ids, queries), len(sorted_ids) - 1)
    return sorted_ids[position] == queries


def _homed_in(ids: np.ndarray, ids_per_block: int, low: int, high: int) -> np.ndarray:
    home = (ids // np.uint64(ids_per_block)).astype(np.int64)
    return (home >= low) & (home < high)


def resolve(joined, parent_final, low: int, high: int, ids_per_block: int):
    """Final labels of a range's ids at one threshold, and of its parent's ids homed in the range (passed on down)."""
    if parent_final is None:
        return joined
    ids, labels = joined
    keys, values = parent_final
    final = lookup(keys, values, labels)
    inherited = _homed_in(keys, ids_per_block, low, high) & ~_contains(ids, keys)
    all_ids = np.concatenate([ids, keys[inherited]])
    all_final = np.concatenate([final, values[inherited]])
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_final[order]


def _pairs(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``(2, n)`` table as ``(ids, labels)``."""
    return table[0], table[1]


def resolve_range(joined: str, parent_final: str, low: int, high: int, ids_per_block: int, out: str) -> str:
    """:func:`resolve` at one threshold from the range's joined table and its parent's final one, into ``out``."""
    ids, final = resolve(_pairs(load_rows(joined)), _pairs(load_rows(parent_final)), low, high, ids_per_block)
    return save_rows(out, [ids, final])


def write_lut_pieces(
    state: str,
    parent_finals: Sequence[str] | None,
    lut_folders: Sequence[Path],
    piece: int,
    low: int,
    high: int,
    ids_per_block: int,
) -> list[tuple[int, int]]:
    """Write the LUT piece of every threshold: the fragments homed in blocks ``low .. high - 1``.

    ``state`` is the piece's table (:func:`piece_labels`), ``parent_finals``
    the parent range's final table per threshold (None for a run of one
    piece). Returns ``[(fragments, segments)]`` per threshold.
    """
    table = load_rows(state)
    home = _homed_in(table[0], ids_per_block, low, high)
    own_ids = np.asarray(table[0][home])
    counts = []
    for row, folder in enumerate(lut_folders):
        # the piece's own fragments resolved against the parent as a range's are
        parent = None if parent_finals is None else _pairs(load_rows(parent_finals[row]))
        own, segments = resolve((own_ids, np.asarray(table[1 + row][home])), parent, low, high, ids_per_block)
        lut_pieces.write_piece(folder, piece, own, segments)
        counts.append((len(own), int(np.count_nonzero(own == segments))))
        del parent, own, segments
    return counts


# -- the driver's side ------------------------------------------------------


@dataclass
class _Range:
    low: int
    high: int
    # per threshold: the table holding the pairs this range passes up (a path, or
    # the future of one) and the row of that table holding the threshold's labels
    up: list[tuple[Any, int]]
    joined: list = None  # futures of the joined tables per threshold (None for a piece)
    state: str | None = None  # a piece's table (None for a joined range)
    piece: int = -1
    level: int = 0
    index: int = 0
    children: list = field(default_factory=list)


def choose_blocks_per_piece(store, stages: Sequence[str], num_blocks: int) -> int:
    """Blocks per piece from the edges of a few sampled blocks (deterministic for the same graph)."""
    samples = sorted({int(b) for b in np.linspace(0, max(num_blocks - 1, 0), min(num_blocks, 16))})
    edges = sum(len(store.read_block_edges(stage, [b])) for stage in stages for b in samples)
    per_block = max(1.0, edges / max(len(samples), 1))
    by_memory = max(1, int(EDGES_PER_PIECE // per_block))
    if per_block * num_blocks < PARALLEL_EDGES:
        return max(1, min(by_memory, num_blocks))
    return max(1, min(by_memory, math.ceil(num_blocks / MIN_PIECES)))


def _folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


def distributed_luts(
    client,
    store,
    stages: Sequence[str],
    thresholds: Sequence[float],
    num_blocks: int,
    ids_per_block: int,
    blocks_per_piece: int | None = None,
    stats: dict | None = None,
) -> dict[float, tuple[int, int]]:
    """Compute and store every threshold's LUT on the cluster; ``{threshold: (fragments, segments)}``.

    Each LUT is complete (its index written) only when all its pieces are.
    The intermediate tables go to a fresh scratch folder
    (:func:`fresh_scratch`), removed when the stage ends, however it ends.

    Parameters
    ----------
    client : distributed.Client
        Runs the tasks; its workers open the store from ``store.url``.
    store : GraphStore
        Holds the blocks' nodes and edges and receives the LUTs.
    stages : sequence of str
        The stages whose blocks wrote nodes or edges.
    thresholds : sequence of float
        One LUT per threshold.
    num_blocks, ids_per_block : int
        The block grid's size and the id range each block's fragments take.
    blocks_per_piece : int, optional
        Consecutive blocks per piece; by default from the edges of a few
        sampled blocks (:func:`choose_blocks_per_piece`).
    stats : dict, optional
        Receives ``pieces``, ``blocks_per_piece``, ``reach`` and
        ``scratch_bytes`` (what the scratch folder held at the end).

    Returns
    -------
    dict
        ``{threshold: (fragments, segments)}``.
    """
    thresholds = sorted(float(t) for t in thresholds)
    if blocks_per_piece is None:
        blocks_per_piece = choose_blocks_per_piece(store, stages, num_blocks)
    num_pieces = max(1, math.ceil(num_blocks / blocks_per_piece))
    folders = [store.lut_folder(t) for t in thresholds]
    # a LUT is trusted when its index exists: drop any from an interrupted run before a piece is written
    store.drop_luts()
    url, stages = store.url, list(stages)
    scratch = fresh_scratch(store)
    # every future until the stage ends: their results are paths, and holding
    # them keeps a lost worker's results recomputable (their inputs stay on disk)
    futures: list = []
    try:
        counts = _compute(client, url, stages, thresholds, folders, num_blocks, num_pieces, blocks_per_piece,
                          ids_per_block, scratch, futures, stats)
        if stats is not None:
            stats["scratch_bytes"] = _folder_bytes(scratch)
    except BaseException:
        # what is still queued would read and write a folder about to go; a
        # task already running fails on the missing folder instead of writing into it
        try:
            client.cancel(futures)
        except Exception:  # the original error is the one to report
            pass
        raise
    finally:
        futures.clear()
        remove_scratch(scratch)
    for threshold, folder in zip(thresholds, folders):
        lut_pieces.write_index(folder, threshold, blocks_per_piece * ids_per_block, num_pieces)
    return {
        t: (sum(c[row][0] for c in counts), sum(c[row][1] for c in counts)) for row, t in enumerate(thresholds)
    }


def _compute(
    client,
    url: str,
    stages: list[str],
    thresholds: list[float],
    folders: list[Path],
    num_blocks: int,
    num_pieces: int,
    blocks_per_piece: int,
    ids_per_block: int,
    scratch: Path,
    futures: list,
    stats: dict | None,
) -> list[list[tuple[int, int]]]:
    """The tasks of :func:`distributed_luts`, their tables in ``scratch``; each piece's counts per threshold.

    Every future submitted is appended to ``futures``, for the caller to cancel after a failure.
    """
    rows = range(len(thresholds))
    submitted = []
    for k in range(num_pieces):
        first, end = k * blocks_per_piece, min((k + 1) * blocks_per_piece, num_blocks)
        out = str(scratch / f"piece_{k}.npy")
        submitted.append(client.submit(piece_labels, url, stages, first, end, ids_per_block, thresholds, out,
                                       pure=False))
    futures.extend(submitted)
    # each result is a path and a number: the labels themselves stay on disk
    states = client.gather(submitted)
    del submitted
    reach = max(r for _, r in states)
    pieces = []
    for k, (path, _) in enumerate(states):
        low = k * blocks_per_piece if k > 0 else -UNBOUNDED
        high = min((k + 1) * blocks_per_piece, num_blocks) if k < num_pieces - 1 else UNBOUNDED
        pieces.append(_Range(low, high, [(path, 1 + r) for r in rows], state=path, piece=k, index=k))
    if stats is not None:
        stats.update(pieces=num_pieces, blocks_per_piece=blocks_per_piece, reach=reach)

    level, depth = pieces, 0
    while len(level) > 1:
        depth += 1
        parents = []
        for i in range(0, len(level), 2):
            children = level[i : i + 2]
            low, high = children[0].low, children[-1].high
            # one task per threshold: the thresholds' components are independent
            joined = [
                client.submit(
                    join_ranges, [c.up[r][0] for c in children], [c.up[r][1] for c in children],
                    [c.low for c in children], [c.high for c in children], reach, ids_per_block,
                    str(scratch / f"join_{depth}_{i // 2}_{r}.npy"), pure=False,
                )
                for r in rows
            ]
            futures.extend(joined)
            parents.append(_Range(low, high, [(j, 1) for j in joined], joined=joined, level=depth, index=i // 2,
                                  children=children))
        level = parents

    written = []

    def down(node: _Range, parent_final: list | None) -> None:
        if node.piece >= 0:
            written.append(client.submit(
                write_lut_pieces, node.state, parent_final, folders, node.piece,
                node.piece * blocks_per_piece if node.piece > 0 else 0,
                (node.piece + 1) * blocks_per_piece if node.piece < num_pieces - 1 else UNBOUNDED,
                ids_per_block, pure=False,
            ))
            return
        if parent_final is None:  # the root: its joined labels are final
            final = node.joined
        else:
            final = [
                client.submit(resolve_range, node.joined[r], parent_final[r], node.low, node.high, ids_per_block,
                              str(scratch / f"final_{node.level}_{node.index}_{r}.npy"), pure=False)
                for r in rows
            ]
            futures.extend(final)
        for child in node.children:
            down(child, final)

    down(level[0], None)
    futures.extend(written)
    return client.gather(written)
