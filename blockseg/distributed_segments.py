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
graph; the driver holds futures and a handful of numbers.

The result equals :func:`blockseg.segments.connected_component_luts` exactly:
every label is the smallest id of a component, and the smallest id of a
union of components is the smallest of their smallest ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

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


# -- the tasks --------------------------------------------------------------


def piece_labels(store_url, stages, first_block, end_block, ids_per_block, thresholds):
    """A piece's fragments and their labels within the piece: ``(ids, labels (T, n), reach)``."""
    u, v, scores, node_ids, reach = read_piece(store_url, stages, first_block, end_block, ids_per_block)
    ids, labels = threshold_labels(u, v, scores, thresholds, extra_ids=node_ids)
    return ids, labels, reach


def reach_of(state) -> int:
    return state[2]


def piece_pairs(state, row: int, low: int, high: int, reach: int, ids_per_block: int):
    """The open fragments of a piece and their labels at one threshold (``row`` of the sorted thresholds)."""
    ids, labels, _ = state
    is_open = open_mask(ids, ids_per_block, low, high, reach)
    return ids[is_open], labels[row][is_open]


def join_pairs(children_pairs):
    """The components of the children's pairs at one threshold: ``(ids, labels)``."""
    return merge_pairs(np.concatenate([p[0] for p in children_pairs]), np.concatenate([p[1] for p in children_pairs]))


def open_pairs(joined, low: int, high: int, reach: int, ids_per_block: int):
    """What a range passes up at one threshold: its open ids and their labels."""
    ids, labels = joined
    is_open = open_mask(ids, ids_per_block, low, high, reach)
    return ids[is_open], labels[is_open]


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


def write_lut_pieces(state, parent_finals, lut_folders, piece: int, low: int, high: int, ids_per_block: int):
    """Write the LUT piece of every threshold: the fragments homed in blocks ``low .. high - 1``.

    ``parent_finals`` holds the parent range's final labels per threshold
    (None for a run of one piece). Returns ``[(fragments, segments)]`` per threshold.
    """
    ids, labels, _ = state
    home = _homed_in(ids, ids_per_block, low, high)
    counts = []
    for row, folder in enumerate(lut_folders):
        # the piece's own fragments resolved against the parent as a range's are
        parent = None if parent_finals is None else parent_finals[row]
        own, segments = resolve((ids[home], labels[row][home]), parent, low, high, ids_per_block)
        lut_pieces.write_piece(folder, piece, own, segments)
        counts.append((len(own), int(np.count_nonzero(own == segments))))
    return counts


# -- the driver's side ------------------------------------------------------


@dataclass
class _Range:
    low: int
    high: int
    up: list  # futures of the pairs passed up, one per threshold
    joined: list = None  # futures of the joined components per threshold (None for a piece)
    state: object = None  # future of a piece's labels (None for a joined range)
    piece: int = -1
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


def distributed_luts(
    client,
    store,
    stages: Sequence[str],
    thresholds: Sequence[float],
    num_blocks: int,
    ids_per_block: int,
    blocks_per_piece: int | None = None,
) -> dict[float, tuple[int, int]]:
    """Compute and store every threshold's LUT on the cluster; ``{threshold: (fragments, segments)}``.

    Each LUT is complete (its index written) only when all its pieces are.
    """
    thresholds = sorted(float(t) for t in thresholds)
    if blocks_per_piece is None:
        blocks_per_piece = choose_blocks_per_piece(store, stages, num_blocks)
    num_pieces = max(1, math.ceil(num_blocks / blocks_per_piece))
    folders = [store.lut_folder(t) for t in thresholds]
    # a LUT is trusted when its index exists: drop any from an interrupted run before a piece is written
    store.drop_luts()
    url, stages = store.url, list(stages)

    pieces = []
    for k in range(num_pieces):
        first, end = k * blocks_per_piece, min((k + 1) * blocks_per_piece, num_blocks)
        state = client.submit(piece_labels, url, stages, first, end, ids_per_block, thresholds, pure=False)
        low = first if k > 0 else -UNBOUNDED
        high = end if k < num_pieces - 1 else UNBOUNDED
        pieces.append(_Range(low, high, None, state=state, piece=k))
    reach = max(client.gather(client.map(reach_of, [p.state for p in pieces], pure=False)))

    rows = range(len(thresholds))
    for p in pieces:
        p.up = [client.submit(piece_pairs, p.state, r, p.low, p.high, reach, ids_per_block, pure=False) for r in rows]
    level = pieces
    while len(level) > 1:
        parents = []
        for i in range(0, len(level), 2):
            children = level[i : i + 2]
            low, high = children[0].low, children[-1].high
            # one task per threshold: the thresholds' components are independent
            joined = [client.submit(join_pairs, [c.up[r] for c in children], pure=False) for r in rows]
            up = [client.submit(open_pairs, joined[r], low, high, reach, ids_per_block, pure=False) for r in rows]
            parents.append(_Range(low, high, up, joined=joined, children=children))
            for child in children:  # held by the tasks that need them; the scheduler frees them after
                child.up = None
        level = parents

    written = []

    def down(node: _Range, parent_final) -> None:
        if node.piece >= 0:
            written.append(client.submit(
                write_lut_pieces, node.state, parent_final, folders, node.piece,
                node.piece * blocks_per_piece if node.piece > 0 else 0,
                (node.piece + 1) * blocks_per_piece if node.piece < num_pieces - 1 else UNBOUNDED,
                ids_per_block, pure=False,
            ))
            node.state = None
            return
        final = [
            client.submit(resolve, node.joined[r], None if parent_final is None else parent_final[r], node.low,
                          node.high, ids_per_block, pure=False)
            for r in rows
        ]
        node.joined = None
        for child in node.children:
            down(child, final)

    down(level[0], None)
    counts = client.gather(written)
    for threshold, folder in zip(thresholds, folders):
        lut_pieces.write_index(folder, threshold, blocks_per_piece * ids_per_block, num_pieces)
    return {
        t: (sum(c[row][0] for c in counts), sum(c[row][1] for c in counts)) for row, t in enumerate(thresholds)
    }
