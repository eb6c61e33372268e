"""Instances from pixel embeddings: mean shift, HDBSCAN, consistency clustering and the mutex watershed on embedding distances."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from workers.embedding_checks import (
    _check_embeddings, _check_mask, _check_positive, _check_probability, _number_by_first_pixel,
)
from workers.embedding_distances import _check_distance_type, embedding_distances
from workers.mutex import check_offsets, mutex_watershed

# ----------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------


def _pixels(embeddings: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(N, E) embedding vectors of the pixels in ``mask`` (all pixels without one), in C order."""
    flat = embeddings.reshape(embeddings.shape[0], -1).T
    return flat if mask is None else flat[mask.ravel()]


def _scatter(cluster_ids: np.ndarray, spatial: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    """Put per-pixel cluster ids (-1 = noise) back into an image: noise and outside the mask are 0."""
    labels = np.zeros(int(np.prod(spatial)), dtype=np.int64)
    if mask is None:
        labels[:] = cluster_ids + 1
    else:
        labels[mask.ravel()] = cluster_ids + 1
    return labels.reshape(spatial)


def _mean_shift_labels(embeddings: np.ndarray, bandwidth: float, mask: np.ndarray | None, n_jobs: int) -> np.ndarray:
    from sklearn.cluster import MeanShift

    vectors = _pixels(embeddings, mask)
    if len(vectors) == 0:
        return np.zeros(embeddings.shape[1:], dtype=np.int64)
    # bin_seeding starts one climb per occupied bandwidth-sized bin instead
    # of per pixel: the same modes, orders of magnitude fewer climbs.
    estimator = MeanShift(bandwidth=bandwidth, bin_seeding=True, n_jobs=n_jobs)
    return _scatter(estimator.fit_predict(vectors.astype(np.float64)), embeddings.shape[1:], mask)


def segment_mean_shift(
    embeddings: np.ndarray, bandwidth: float, *, mask: np.ndarray | None = None, n_jobs: int = 1
) -> np.ndarray:
    """Instances by mean-shift clustering of the pixel embeddings (scikit-learn's ``MeanShift``).

    Every pixel (in ``mask``) joins the mode its embedding climbs to with a
    flat kernel of radius ``bandwidth``; seeds are binned (``bin_seeding``).
    There is no spatial term: two objects with the same embedding are one.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    bandwidth : float
        Kernel radius in embedding space (> 0); about ``delta`` for a
        discriminative loss with push margin ``2 * delta``.
    mask : ndarray of bool, optional
        Pixels to cluster; the rest are 0.
    n_jobs : int
        Parallel jobs of the estimator.

    Returns
    -------
    ndarray of uint64, shape spatial

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.1, 5.0, 5.1]]])
    >>> segment_mean_shift(embeddings, bandwidth=1.0).tolist()
    [[1, 1, 2, 2]]
    """
    embeddings = _check_embeddings(embeddings)
    bandwidth = _check_positive(bandwidth, "bandwidth")
    mask = _check_mask(mask, embeddings.shape[1:])
    return _number_by_first_pixel(_mean_shift_labels(embeddings, bandwidth, mask, n_jobs))


def segment_hdbscan(
    embeddings: np.ndarray,
    min_size: int,
    eps: float = 0.0,
    *,
    remove_largest: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Instances by HDBSCAN clustering of the pixel embeddings (scikit-learn's ``HDBSCAN``).

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
    min_size : int
        Smallest cluster, in pixels (``min_cluster_size``, >= 2).
    eps : float
        ``cluster_selection_epsilon``: clusters closer than this are not split (>= 0).
    remove_largest : bool
        Set the largest label to 0, for embeddings whose background is one
        big cluster. The count includes 0 (noise, outside the mask): when 0
        is already the largest, nothing is removed.
    mask : ndarray of bool, optional
        Semantic mask: only these pixels are clustered; the rest are 0.

    Returns
    -------
    ndarray of uint64, shape spatial
        HDBSCAN's noise pixels are 0.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[[0.0, 0.1, 0.2, 5.0, 5.1, 5.2]]])
    >>> segment_hdbscan(embeddings, min_size=2).tolist()
    [[1, 1, 1, 2, 2, 2]]
    """
    from sklearn.cluster import HDBSCAN

    embeddings = _check_embeddings(embeddings)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 2:
        raise ValueError(f"min_size must be an integer >= 2 (HDBSCAN's smallest cluster); got {min_size!r}")
    try:
        eps = float(eps)
    except (TypeError, ValueError) as error:
        raise ValueError(f"eps must be a non-negative number; got {eps!r}") from error
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a non-negative finite number; got {eps!r}")
    mask = _check_mask(mask, embeddings.shape[1:])
    vectors = _pixels(embeddings, mask)
    spatial = embeddings.shape[1:]
    if len(vectors) < 2:
        return np.zeros(spatial, dtype=np.uint64)
    # our vectors are a fresh float64 copy already; no need for another
    estimator = HDBSCAN(min_cluster_size=int(min_size), cluster_selection_epsilon=eps, copy=False)
    labels = _scatter(estimator.fit_predict(vectors.astype(np.float64)), spatial, mask)
    if remove_largest:
        ids, counts = np.unique(labels, return_counts=True)
        labels[labels == ids[np.argmax(counts)]] = 0
    return _number_by_first_pixel(labels)


def segment_consistency(
    embeddings1: np.ndarray,
    embeddings2: np.ndarray,
    bandwidth: float,
    iou_threshold: float,
    n_anchors: int,
    *,
    mask: np.ndarray | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> np.ndarray:
    """Mean-shift instances of one embedding kept only where a second embedding agrees.

    Each mean-shift cluster of ``embeddings1`` is checked against
    ``embeddings2``: for ``n_anchors`` random pixels of the cluster, the
    pixels whose ``embeddings2`` vector lies within ``bandwidth`` of the
    anchor's form an instance mask; the cluster survives when the median IoU
    of these masks with the cluster reaches ``iou_threshold``. Two
    embeddings (e.g. from two heads or two augmentations) that agree on an
    object make it trustworthy.

    Parameters
    ----------
    embeddings1, embeddings2 : ndarray, shape (E1, *spatial), (E2, *spatial)
        Same spatial shape, 2D or 3D.
    bandwidth : float
        Mean-shift bandwidth and anchor radius (> 0).
    iou_threshold : float
        In [0, 1].
    n_anchors : int
        Anchors per cluster (>= 1).
    mask : ndarray of bool, optional
        Pixels to cluster; anchors' masks are restricted to it too.
    seed : int
        Seed of the anchor draw (the result is deterministic).
    n_jobs : int
        Parallel jobs of the mean shift.

    Returns
    -------
    ndarray of uint64, shape spatial
        Surviving clusters ``1..n``; removed ones and background are 0.

    Examples
    --------
    >>> import numpy as np
    >>> first = np.array([[[0.0, 0.0, 5.0, 5.0]]])
    >>> second = np.array([[[0.0, 0.0, 5.0, 0.0]]])  # disagrees on the second object
    >>> segment_consistency(first, second, 1.0, 0.5, n_anchors=3).tolist()
    [[1, 1, 0, 0]]
    """
    embeddings1 = _check_embeddings(embeddings1, "embeddings1")
    embeddings2 = _check_embeddings(embeddings2, "embeddings2")
    if embeddings1.shape[1:] != embeddings2.shape[1:]:
        raise ValueError(
            f"embeddings1 and embeddings2 must share the spatial shape; got {embeddings1.shape[1:]} and {embeddings2.shape[1:]}"
        )
    bandwidth = _check_positive(bandwidth, "bandwidth")
    iou_threshold = _check_probability(iou_threshold, "iou_threshold")
    if isinstance(n_anchors, bool) or not isinstance(n_anchors, (int, np.integer)) or n_anchors < 1:
        raise ValueError(f"n_anchors must be a positive integer; got {n_anchors!r}")
    spatial = embeddings1.shape[1:]
    mask = _check_mask(mask, spatial)
    labels = _mean_shift_labels(embeddings1, bandwidth, mask, n_jobs).ravel()
    second = embeddings2.reshape(embeddings2.shape[0], -1).astype(np.float64)
    inside = np.ones(labels.shape, bool) if mask is None else mask.ravel()
    rng = np.random.default_rng(seed)
    for label in np.unique(labels[labels > 0]):
        cluster = labels == label
        members = np.flatnonzero(cluster)
        ious = []
        for anchor in rng.choice(members, size=int(n_anchors), replace=True):
            near = (np.linalg.norm(second - second[:, anchor : anchor + 1], axis=0) < bandwidth) & inside
            ious.append(np.count_nonzero(near & cluster) / np.count_nonzero(near | cluster))
        if np.median(ious) < iou_threshold:
            labels[cluster] = 0
    return _number_by_first_pixel(labels.reshape(spatial))


# ----------------------------------------------------------------------------
# mutex watershed on embeddings
# ----------------------------------------------------------------------------


def segment_embeddings_mws(
    embeddings: np.ndarray,
    offsets: Sequence[Sequence[int]],
    distance_type: str = "l2",
    *,
    bias: float = 0.0,
    strides: Sequence[int] | None = None,
    randomize_strides: bool = False,
    weight_function: Callable[[np.ndarray], np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Instances by the mutex watershed on embedding distances.

    The graph, as elf builds it: attractive edges between face neighbours
    (always all of them, whichever unit offsets ``offsets`` lists), repulsive
    edges for the offsets of L1 length > 1. Each edge gets a dissimilarity
    ``w = weight_function(d)`` of the distance ``d`` of its two embeddings
    (``w = d`` without a weight function). Attractive edges act in order of
    ``max(w_attractive) - w`` (the maximum over every face edge of the array,
    masked or not, so a mask removes edges without reordering the others)
    and repulsive ones of ``w + bias``, compared directly (:func:`workers.mutex.mutex_watershed`, classic mode): a
    positive bias splits more, a negative one merges more.

    Parameters
    ----------
    embeddings : ndarray, shape (E, *spatial)
        2D or 3D, finite.
    offsets : sequence of sequence of int
        Offsets; those of L1 length > 1 become repulsive channels (at least one).
    distance_type : {"l2", "cosine", "l1"}
        See :func:`embedding_distances`.
    bias : float
        Added to the repulsive priorities.
    strides, randomize_strides, seed
        Subsample the repulsive edges (see :func:`workers.mutex.mutex_watershed`).
    weight_function : callable, optional
        Maps an array of distances to dissimilarities of the same shape,
        per channel, e.g. ``functools.partial(push_dissimilarity, delta=delta)``.
        With raw distances the split between attraction and repulsion
        depends on the largest distance in the block; a bounded weight makes
        it depend on ``delta`` only.
    mask : ndarray of bool, optional
        Pixels to segment; edges touching the rest are dropped and the rest is 0.

    Returns
    -------
    ndarray of uint64, shape spatial
        Labels ``1..n`` by first pixel in C order, 0 outside ``mask``.

    Notes
    -----
    Where elf's version differs: it ignores a negative bias, subsamples
    repulsive edges by their position in an edge list (at random unless a
    weight function is given) rather than on a pixel lattice, and lets masked
    pixels join objects through weakly attractive edges; here the mask cuts
    every edge that touches its background.

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.zeros((1, 1, 8))
    >>> embeddings[0, 0, 4:] = 3.0            # two objects along a row
    >>> segment_embeddings_mws(embeddings, [[0, -1], [0, -3]]).tolist()
    [[1, 1, 1, 1, 2, 2, 2, 2]]
    """
    embeddings = _check_embeddings(embeddings)
    distance_type = _check_distance_type(distance_type)
    spatial = embeddings.shape[1:]
    ndim = len(spatial)
    offsets_array = check_offsets(offsets, ndim)
    long_range = offsets_array[np.abs(offsets_array).sum(axis=1) > 1]
    if len(long_range) == 0:
        raise ValueError("the mutex watershed needs at least one long-range offset (L1 length > 1) for repulsive edges")
    try:
        bias = float(bias)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bias must be a finite number; got {bias!r}") from error
    if not np.isfinite(bias):
        raise ValueError(f"bias must be a finite number; got {bias!r}")
    mask = _check_mask(mask, spatial)

    # Negative unit steps, like elf's grid graph: the edge (p - e_i, p) sits at p.
    unit = -np.eye(ndim, dtype=np.int64)
    all_offsets = np.concatenate([unit, long_range], axis=0)
    distances, valid = embedding_distances(embeddings, all_offsets, distance_type)
    weights = distances
    if weight_function is not None:
        weights = np.asarray(weight_function(distances), dtype=np.float64)
        if weights.shape != distances.shape:
            raise ValueError(f"weight_function must return an array of the distances' shape {distances.shape}; got {weights.shape}")
        if not np.all(np.isfinite(weights[valid])):
            raise ValueError("weight_function returned NaN or infinite values")

    # The attractive scale comes from every face edge of the array, masked
    # or not: the mask only removes edges, it must not change the order of
    # the others (elf's maximum runs over all grid edges too). A mask that
    # hides every boundary would otherwise leave only within-object
    # distances to set the scale, and repulsion would win everywhere.
    local = weights[:ndim]
    highest = float(local[valid[:ndim]].max()) if valid[:ndim].any() else 0.0

    # Classic mode priorities: attractive = affinity + bias, repulsive =
    # 1 - affinity + bias. Storing max(w) - w and 1 - w gives the priorities
    # above without touching the affinities' meaning (1 = same object).
    affinities = np.empty(weights.shape, dtype=np.float64)
    affinities[:ndim] = highest - local
    affinities[ndim:] = 1.0 - weights[ndim:]
    affinities[~valid] = 0.0
    channel_bias = [0.0] * ndim + [bias] * len(long_range)
    return mutex_watershed(
        affinities,
        all_offsets.tolist(),
        bias=channel_bias,
        attractive=ndim,
        strides=strides,
        randomize_strides=randomize_strides,
        mask=mask,
        seed=seed,
    )
