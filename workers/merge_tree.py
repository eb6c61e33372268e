"""Edge scores from a waterz merge history, with numba kernels.

The merge history is replayed on a union-find forest (:func:`_merge_tree`);
the score of a region adjacency graph edge is the score of the merge that
first puts its two endpoints into one region (:func:`_merge_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np


# the attach time of a root: after every merge
_NEVER = np.iinfo(np.int64).max


@numba.njit(cache=True, nogil=True)
def _merge_tree(
    num_nodes: int, merges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Replay a merge history on a union-find forest without path compression.

    ``merges`` holds rows ``(a, b, c)`` of int64 region ids below
    ``num_nodes``: the regions ``a`` and ``b`` merge into ``c``. Clusters are
    reached through a handle (one node in them) that stays valid while waterz
    names merged regions as it likes. Union by size keeps every tree of
    height O(log n). A merge of two regions already in one cluster is
    skipped (not expected from waterz).

    Returns
    -------
    parent : numpy.ndarray
        int64, the parent of each node (itself for a root).
    attached : numpy.ndarray
        int64, the index of the merge that attached each node to its parent
        (:data:`_NEVER` for a root). Along a path to the root these grow.
    """
    parent = np.arange(num_nodes)
    attached = np.full(num_nodes, _NEVER, dtype=np.int64)
    size = np.ones(num_nodes, dtype=np.int64)
    handle = np.arange(num_nodes)
    for t in range(merges.shape[0]):
        first = handle[merges[t, 0]]
        while parent[first] != first:
            first = parent[first]
        second = handle[merges[t, 1]]
        while parent[second] != second:
            second = parent[second]
        if first == second:
            continue
        if size[first] < size[second]:
            first, second = second, first
        parent[second] = first
        attached[second] = t
        size[first] += size[second]
        handle[merges[t, 2]] = first
    return parent, attached


@numba.njit(cache=True, nogil=True)
def _join_times(
    parent: np.ndarray, attached: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Per pair ``(u, v)``, the index of the merge that joins its nodes, or -1.

    From both nodes, the one attached earlier steps up to its parent, until
    the two meet: as attach times grow towards the root, no step passes the
    meeting point, and the last step is the merge that joined the two
    subtrees. Two different roots mean the nodes never join.
    """
    times = np.full(u.size, -1, dtype=np.int64)
    for k in range(u.size):
        x = u[k]
        y = v[k]
        time = np.int64(-1)
        while x != y:
            if attached[x] <= attached[y]:
                if attached[x] == _NEVER:  # both are roots
                    time = -1
                    break
                time = attached[x]
                x = parent[x]
            else:
                time = attached[y]
                y = parent[y]
        times[k] = time
    return times


def _merge_arrays(
    merge_history: Sequence[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b, c)`` rows (int64) and float32 scores of a merge history."""
    if not merge_history:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32)
    rows = np.array(
        [(merge["a"], merge["b"], merge["c"]) for merge in merge_history],
        dtype=np.int64,
    ).reshape(-1, 3)
    scores = np.array([merge["score"] for merge in merge_history], dtype=np.float32)
    return rows, scores


def _merge_scores(
    num_nodes: int,
    u: np.ndarray,
    v: np.ndarray,
    merge_history: Sequence[dict[str, Any]],
) -> np.ndarray:
    """Per RAG edge, the score of the merge that first joins its endpoints.

    The history is replayed on a union-find forest (:func:`_merge_tree`);
    the merge that joins ``u`` and ``v`` is found by climbing from both
    (:func:`_join_times`), the lowest common ancestor in the merge tree.
    That is O(log n) per edge.

    With waterz's exact priority queue the merge scores never decrease. With
    a bin queue, merges within one bin happen in insertion order, and a later
    merge can score a little (less than one bin) lower than an earlier one.
    The scores are kept as they are: thresholds on bin boundaries still cut
    the history exactly where waterz stops.

    Returns
    -------
    numpy.ndarray
        float32 scores, ``+inf`` for edges whose endpoints never merge.

    Raises
    ------
    IndexError
        If the history names a region id outside ``[0, num_nodes)``.
    """
    rows, merge_scores = _merge_arrays(merge_history)
    if rows.size and (rows.min() < 0 or rows.max() >= num_nodes):
        raise IndexError(f"merge history names regions outside [0, {num_nodes})")
    nodes_u = np.asarray(u, dtype=np.int64)
    nodes_v = np.asarray(v, dtype=np.int64)
    if nodes_u.size and (
        min(nodes_u.min(), nodes_v.min()) < 0
        or max(nodes_u.max(), nodes_v.max()) >= num_nodes
    ):
        raise IndexError(f"edges name nodes outside [0, {num_nodes})")
    parent, attached = _merge_tree(int(num_nodes), rows)
    times = _join_times(parent, attached, nodes_u, nodes_v)
    scores = np.full(times.size, np.inf, dtype=np.float32)
    joined = times >= 0
    scores[joined] = merge_scores[times[joined]]
    return scores
