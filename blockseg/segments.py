"""Global connected components of the RAG in one process: one lookup table per threshold.

The pipeline's segments stage computes the same tables on the cluster, in
pieces by home block (:mod:`blockseg.distributed_segments`); this module is
the single-process reference they are tested against, and the single-file
LUT format of earlier versions.

A fragment's segment at threshold ``t`` is its connected component in the
graph of edges with merge score ``<= t``. The edges are sorted by score once;
each threshold then only adds the edges between it and the previous one to a
graph of the previous threshold's components, so every edge is looked at once.

The segment id of a component is its smallest fragment id: never 0, and the
same whatever order blocks ran in.

LUTs are ``.npy`` files of shape (2, n), uint64, sorted by fragment id (row 0)
with the segment ids in row 1, named after the exact threshold
(``threshold_0.29.npy``). Sorted, memory-mapped LUTs let a relabel block read
only the rows of its own fragments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def lut_name(threshold: float) -> str:
    """File name of a LUT; ``repr`` keeps the exact float, so 0.29 and 0.58 never collide."""
    return f"threshold_{float(threshold)!r}.npy"


def connected_component_luts(
    fragment_ids: np.ndarray, u: np.ndarray, v: np.ndarray, scores: np.ndarray, thresholds: Sequence[float]
) -> Iterable[tuple[float, np.ndarray, np.ndarray]]:
    """Yield ``(threshold, fragment_ids, segment_ids)`` for each threshold, ascending.

    Parameters
    ----------
    fragment_ids : ndarray of uint64
        Every fragment (RAG node); ids used by edges are added if missing.
    u, v : ndarray of uint64
        Edge endpoints.
    scores : ndarray of float
        Merge score of each edge.
    thresholds : sequence of float
        Edges with score ``<= threshold`` join their fragments.

    Examples
    --------
    >>> ids = np.array([3, 5, 7, 9], np.uint64)
    >>> u, v = np.array([3, 7], np.uint64), np.array([5, 9], np.uint64)
    >>> [(t, s.tolist()) for t, _, s in connected_component_luts(ids, u, v, np.array([0.2, 0.6]), [0.5, 0.7])]
    [(0.5, [3, 3, 7, 9]), (0.7, [3, 3, 7, 7])]
    """
    u = np.asarray(u, np.uint64)
    v = np.asarray(v, np.uint64)
    ids = np.asarray(fragment_ids, np.uint64)
    # stores hand over sorted, unique ids: check that (cheap) before sorting
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        ids = np.unique(ids)
    # 0 is background, never a node (an edge to it would be a bug upstream)
    ids = ids[ids != 0]
    su, found_u = _index_of(ids, u)
    sv, found_v = _index_of(ids, v)
    if not (found_u.all() and found_v.all()):
        # edges name fragments the nodes do not: take them in (rare, slower)
        ids = np.union1d(ids, np.concatenate([u[~found_u], v[~found_v]]))
        su, _ = _index_of(ids, u)
        sv, _ = _index_of(ids, v)
    if (u == 0).any() or (v == 0).any():
        raise ValueError("an edge names fragment 0, which is background")
    # any order of equal scores gives the same components
    order = np.argsort(scores)
    su = su[order]
    sv = sv[order]
    sorted_scores = np.asarray(scores)[order]
    # component[i]: the component (a representative index) of fragment i so far
    component = np.arange(len(ids), dtype=np.int64)
    start = 0
    for threshold in sorted(float(t) for t in thresholds):
        stop = int(np.searchsorted(sorted_scores, threshold, side="right"))
        if stop > start:
            a = component[su[start:stop]]
            b = component[sv[start:stop]]
            n = len(ids)
            graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
            _, labels = connected_components(graph, directed=False)
            component = labels[component].astype(np.int64)
            start = stop
        # smallest fragment id of each component: ids are sorted, so the first
        # fragment that belongs to a component is its smallest.
        if len(ids) == 0:
            yield threshold, ids, ids.copy()
            continue
        representatives, first_index = np.unique(component, return_index=True)
        smallest = np.zeros(int(representatives[-1]) + 1, np.int64)
        smallest[representatives] = first_index
        segments = ids[smallest[component]]
        yield threshold, ids, segments


def _index_of(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` in ``sorted_ids`` and whether each is there.

    The values are sorted first: a binary search for sorted needles walks
    the table in order and stays in cache, several times faster than
    searching for randomly ordered ones.
    """
    order = np.argsort(values)
    positions = np.empty(len(values), np.int64)
    positions[order] = np.searchsorted(sorted_ids, values[order])
    clipped = np.minimum(positions, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[clipped] == values) if len(sorted_ids) else np.zeros(len(values), bool)
    return clipped, found


def write_lut(folder: Path, threshold: float, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> Path:
    """Write a LUT atomically (temporary file, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lut_name(threshold)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, np.stack([fragment_ids.astype(np.uint64), segment_ids.astype(np.uint64)]))
    os.replace(temporary, path)
    return path


def read_lut_range(path: Path, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """The LUT rows with ``low <= fragment id < high``, read through a memory map."""
    lut = np.load(path, mmap_mode="r")
    start = int(np.searchsorted(lut[0], np.uint64(low), side="left"))
    stop = int(np.searchsorted(lut[0], np.uint64(high), side="left"))
    return np.array(lut[0, start:stop]), np.array(lut[1, start:stop])


def read_lut(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lut = np.load(path)
    return lut[0], lut[1]
