"""Distances between pixel embeddings, affinities for a list of offsets, and RAG edge probabilities from segment means."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from workers.embedding_checks import _check_embeddings, _check_positive
from workers.mutex import check_offsets, neighbour_slices

DISTANCE_TYPES = ("l2", "cosine", "l1")


# ----------------------------------------------------------------------------
# distances, affinities, edge probabilities
# ----------------------------------------------------------------------------


def _distance(a: np.ndarray, b: np.ndarray, distance_type: str) -> np.ndarray:
    """Distance along axis 0 between two (E, ...) arrays."""
    if distance_type == "l2":
        return np.sqrt(np.sum((a - b) ** 2, axis=0))
    if distance_type == "l1":
        return np.sum(np.abs(a - b), axis=0)
    dot = np.sum(a * b, axis=0)
    norms = np.sqrt(np.sum(a * a, axis=0) * np.sum(b * b, axis=0))
    # A zero vector has no direction: call it unrelated (similarity 0).
    similarity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return 1.0 - similarity


def _check_distance_type(distance_type: str) -> str:
    if distance_type not in DISTANCE_TYPES:
        raise ValueError(f"unknown distance_type {distance_type!r}; allowed: {', '.join(DISTANCE_TYPES)}")
    return distance_type


def embedding_distances(
    embeddings: np.ndarray, offsets: Sequence[Sequence[int]], distance_type: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Distance between each pixel's embedding and its neighbour's, per offset.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    offsets : sequence of sequence of int
        Channel ``c`` compares pixel ``p`` with ``p + offsets[c]``.
    distance_type : {"l2", "cosine", "l1"}
        Euclidean, ``1 - cosine similarity`` (a zero vector has similarity 0
        with everything), or Manhattan.

    Returns
    -------
    distances : ndarray of float32, shape (len(offsets), *spatial)
        0 where the neighbour is outside the array.
    valid : ndarray of bool, same shape
        Where the neighbour is inside.

    Examples
    --------
    >>> import numpy as np
    >>> d, valid = embedding_distances(np.array([[[0.0, 3.0]], [[0.0, 4.0]]]), [[0, 1]])
    >>> d.tolist(), valid.tolist()
    ([[[5.0, 0.0]]], [[[True, False]]])
    """
    embeddings = _check_embeddings(embeddings)
    distance_type = _check_distance_type(distance_type)
    spatial = embeddings.shape[1:]
    offsets_array = check_offsets(offsets, len(spatial))
    values = embeddings.astype(np.float32, copy=False)
    distances = np.zeros((len(offsets_array),) + spatial, dtype=np.float32)
    valid = np.zeros(distances.shape, dtype=bool)
    for c, offset in enumerate(offsets_array):
        source, target = neighbour_slices(offset, spatial)
        distances[(c,) + source] = _distance(values[(slice(None),) + source], values[(slice(None),) + target], distance_type)
        valid[(c,) + source] = True
    return distances, valid


def _push_affinity(distance: np.ndarray, delta: float) -> np.ndarray:
    # The discriminative loss pushes cluster centres 2 * delta apart: at that
    # distance (or more) the affinity is 0, at distance 0 it is 1, squared in
    # between as in Lee et al. 2019 ("Learning dense voxel embeddings").
    return np.maximum((2.0 * delta - distance) / (2.0 * delta), 0.0) ** 2


def push_dissimilarity(distances: np.ndarray, delta: float) -> np.ndarray:
    """``1 - max((2 delta - d) / (2 delta), 0) ** 2``: 0 for equal embeddings, 1 at ``2 delta`` or more.

    The weight function elf pairs with the mutex watershed on embeddings
    trained with push margin ``delta``; use it as
    ``weight_function=functools.partial(push_dissimilarity, delta=delta)``.

    Examples
    --------
    >>> import numpy as np
    >>> push_dissimilarity(np.array([0.0, 1.0, 2.0, 3.0]), delta=1.0).tolist()
    [0.0, 0.75, 1.0, 1.0]
    """
    delta = _check_positive(delta, "delta")
    return 1.0 - _push_affinity(np.asarray(distances, dtype=np.float64), delta)


def embeddings_to_affinities(
    embeddings: np.ndarray, offsets: Sequence[Sequence[int]], delta: float, invert: bool = False
) -> np.ndarray:
    """Affinities from embeddings: ``max((2 delta - ||x_p - x_{p+o}||) / (2 delta), 0) ** 2``.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D, finite.
    offsets : sequence of sequence of int
        Channel ``c`` compares pixel ``p`` with ``p + offsets[c]``.
    delta : float
        The push margin of the discriminative loss the embeddings were
        trained with (> 0).
    invert : bool
        Return ``1 - affinity`` (a boundary map).

    Returns
    -------
    ndarray of float32, shape (len(offsets), *spatial)
        In [0, 1]; where ``p + offset`` lies outside the array the affinity
        is 0 (1 when inverted): no neighbour, no evidence of one object.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 1.0, 4.0]]])
    >>> embeddings_to_affinities(embeddings, [[0, 1]], delta=1.0).tolist()
    [[[0.25, 0.0, 0.0]]]
    """
    delta = _check_positive(delta, "delta")
    distances, valid = embedding_distances(embeddings, offsets, "l2")
    affinities = np.where(valid, _push_affinity(distances, delta), 0.0).astype(np.float32)
    return (1.0 - affinities).astype(np.float32) if invert else affinities


def segment_adjacency(segmentation: np.ndarray) -> np.ndarray:
    """Pairs of different non-zero labels that touch across a face, sorted and unique.

    Parameters
    ----------
    segmentation : ndarray of int, 2D or 3D

    Returns
    -------
    ndarray of uint64, shape (M, 2), with ``u < v`` in each row.

    Examples
    --------
    >>> import numpy as np
    >>> segment_adjacency(np.array([[1, 1, 2], [3, 0, 2]])).tolist()
    [[1, 2], [1, 3]]
    """
    segmentation = np.asarray(segmentation)
    if segmentation.ndim not in (2, 3) or not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(f"segmentation must be a 2D or 3D integer label image; got {segmentation.dtype} {segmentation.shape}")
    labels = segmentation.astype(np.uint64, copy=False)
    pairs = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        touching = (a != b) & (a != 0) & (b != 0)
        pairs.append(np.stack([np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])], axis=1))
    edges = np.concatenate(pairs, axis=0)
    return np.unique(edges, axis=0) if len(edges) else np.zeros((0, 2), dtype=np.uint64)


def segment_mean_embeddings(embeddings: np.ndarray, segmentation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding of every label of ``segmentation`` (0 included if present).

    Returns
    -------
    ids : ndarray of uint64, shape (K,)
        Sorted labels.
    means : ndarray of float64, shape (K, E)

    Examples
    --------
    >>> import numpy as np
    >>> ids, means = segment_mean_embeddings(np.array([[[1.0, 3.0, 5.0]]]), np.array([[2, 2, 7]]))
    >>> ids.tolist(), means.tolist()
    ([2, 7], [[2.0], [5.0]])
    """
    embeddings = _check_embeddings(embeddings)
    segmentation = np.asarray(segmentation)
    if segmentation.shape != embeddings.shape[1:] or not np.issubdtype(segmentation.dtype, np.integer):
        raise ValueError(
            f"segmentation must be an integer label image of the embeddings' spatial shape {embeddings.shape[1:]}; "
            f"got {segmentation.dtype} {segmentation.shape}"
        )
    ids, inverse = np.unique(segmentation.ravel(), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    flat = embeddings.reshape(embeddings.shape[0], -1)
    means = np.stack([np.bincount(inverse, weights=channel, minlength=len(ids)) for channel in flat], axis=1)
    return ids.astype(np.uint64), means / counts[:, None]


def edge_probabilities_from_embeddings(
    embeddings: np.ndarray, segmentation: np.ndarray, edges: np.ndarray, delta: float
) -> np.ndarray:
    """Boundary probability of RAG edges from the segments' mean embeddings.

    ``p(u, v) = 1 - max((2 delta - ||m_u - m_v||) / (2 delta), 0) ** 2``
    with ``m`` the mean embedding of a segment: 0 for segments whose means
    coincide, 1 once they are ``2 delta`` apart.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    segmentation : ndarray of int, shape spatial
    edges : ndarray, shape (M, 2)
        Pairs of labels of ``segmentation`` (e.g. :func:`segment_adjacency`).
    delta : float
        Push margin of the loss (> 0).

    Returns
    -------
    ndarray of float32, shape (M,)

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.0, 1.0]]])
    >>> edge_probabilities_from_embeddings(embeddings, np.array([[1, 1, 2]]), np.array([[1, 2]]), delta=1.0).tolist()
    [0.75]
    """
    delta = _check_positive(delta, "delta")
    ids, means = segment_mean_embeddings(embeddings, segmentation)
    edges = np.asarray(edges)
    if edges.size == 0:
        return np.zeros(0, dtype=np.float32)
    if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"edges must be an (M, 2) integer array of label pairs; got {edges.dtype} {edges.shape}")
    if np.any(edges < 0):
        raise ValueError("edges must hold labels of the segmentation; got negative ids")
    edges = edges.astype(np.uint64)
    position = np.searchsorted(ids, edges)
    found = (position < len(ids)) & (ids[np.minimum(position, len(ids) - 1)] == edges)
    if not np.all(found):
        missing = np.unique(edges[~found])[:5].tolist()
        raise ValueError(f"edges name labels that are not in the segmentation, e.g. {missing}")
    distance = np.linalg.norm(means[position[:, 0]] - means[position[:, 1]], axis=1)
    return (1.0 - _push_affinity(distance, delta)).astype(np.float32)
