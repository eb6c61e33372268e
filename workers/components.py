"""Connected components of pieces of a graph, for lookup tables computed blockwise.

The segments stage splits the RAG's edges into groups of blocks. Each group
labels the fragments its edges touch with the smallest fragment id of their
component inside the group (:func:`threshold_labels`). A fragment whose
edges may lie in other groups too stays *open* (:func:`open_mask`); only the
open fragments and the labels they point to travel further, as pairs
``(fragment, label)``, and :func:`merge_pairs` joins the pairs of
neighbouring groups, level by level, until every component is closed.

Every label is the smallest fragment id of a component, which is what makes
the pieces agree: the smallest id of a union of components is the smallest of
their smallest ids.

Examples
--------
>>> import numpy as np
>>> ids, labels = threshold_labels(
...     np.array([5, 3, 9], np.uint64), np.array([7, 5], np.uint64), np.array([0.2, 0.6]), [0.5, 0.7],
...     extra_ids=np.array([11], np.uint64))
>>> ids.tolist(), labels.tolist()
([3, 5, 7, 9, 11], [[3, 5, 5, 9, 11], [3, 3, 3, 9, 11]])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# far beyond any block id: the first and last groups have no neighbour on that side
UNBOUNDED = 1 << 62


def _component_minima(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``n`` sorted vertices, the index of the first vertex of its component."""
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # vertices are sorted, so the first index of a component is its smallest id
    first = np.full(int(component.max()) + 1, n, np.int64)
    np.minimum.at(first, component, np.arange(n, dtype=np.int64))
    return first[component]


def threshold_labels(
    u: np.ndarray, v: np.ndarray, scores: np.ndarray, thresholds: Sequence[float], extra_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest fragment id of each fragment's component, at each threshold.

    Parameters
    ----------
    u, v : ndarray of uint64
        Edge endpoints (nonzero).
    scores : ndarray of float
        Merge score of each edge; edges with ``score <= threshold`` join.
    thresholds : sequence of float
        Ascending or not; the rows of the result follow ``sorted(thresholds)``.
    extra_ids : ndarray of uint64, optional
        Fragments without edges here that should be labelled too (themselves).

    Returns
    -------
    ids : ndarray of uint64
        Every fragment named, sorted and unique.
    labels : ndarray of uint64, shape (len(thresholds), len(ids))
        ``labels[k, i]``: the smallest id of the component of ``ids[i]``.
    """
    u = np.asarray(u, np.uint64)
    v = np.asarray(v, np.uint64)
    parts = [u, v] if extra_ids is None else [u, v, np.asarray(extra_ids, np.uint64)]
    ids = np.unique(np.concatenate(parts))
    su = np.searchsorted(ids, u)
    sv = np.searchsorted(ids, v)
    order = np.argsort(np.asarray(scores), kind="stable")
    su, sv = su[order], sv[order]
    sorted_scores = np.asarray(scores)[order]
    n = len(ids)
    # index of the component minimum of each vertex, carried from threshold to threshold
    root = np.arange(n, dtype=np.int64)
    labels = np.empty((len(thresholds), n), np.uint64)
    start = 0
    for row, threshold in enumerate(sorted(float(t) for t in thresholds)):
        stop = int(np.searchsorted(sorted_scores, threshold, side="right"))
        if stop > start:
            # join the components of the new edges: a graph of roots, then back to vertices
            merged = _component_minima(n, root[su[start:stop]], root[sv[start:stop]])
            root = merged[root]
            start = stop
        labels[row] = ids[root]
    return ids, labels


def open_mask(ids: np.ndarray, ids_per_block: int, block_low: int, block_high: int, reach: int) -> np.ndarray:
    """Which fragments may be named by blocks outside ``[block_low, block_high)``.

    ``reach`` is the farthest any block names a fragment from the fragment's
    home block (``id // ids_per_block``), in block ids; a fragment is closed
    when every block within ``reach`` of its home lies inside the range.
    """
    home = (np.asarray(ids, np.uint64) // np.uint64(ids_per_block)).astype(np.int64)
    return (home - reach < block_low) | (home + reach >= block_high)


def merge_pairs(vertices: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Join ``(vertex, parent)`` pairs into components labelled by their smallest id.

    Parameters
    ----------
    vertices, parents : ndarray of uint64
        Each pair says both lie in one component (a pair may be a vertex and itself).

    Returns
    -------
    ids : ndarray of uint64
        Every id named, sorted and unique.
    labels : ndarray of uint64
        The smallest id of each one's component.

    Examples
    --------
    >>> ids, labels = merge_pairs(np.array([9, 7, 4], np.uint64), np.array([7, 2, 4], np.uint64))
    >>> ids.tolist(), labels.tolist()
    ([2, 4, 7, 9], [2, 4, 2, 2])
    """
    vertices = np.asarray(vertices, np.uint64)
    parents = np.asarray(parents, np.uint64)
    ids, inverse = np.unique(np.concatenate([vertices, parents]), return_inverse=True)
    n = len(vertices)
    first = _component_minima(len(ids), inverse[:n], inverse[n:])
    return ids, ids[first]


def lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` of ``queries`` in sorted ``keys``; a query not among the keys maps to itself.

    Examples
    --------
    >>> lookup(np.array([2, 5], np.uint64), np.array([1, 1], np.uint64), np.array([5, 6], np.uint64)).tolist()
    [1, 6]
    """
    queries = np.asarray(queries, np.uint64)
    if len(keys) == 0:
        return queries.copy()
    position = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    found = keys[position] == queries
    return np.where(found, values[position], queries)
