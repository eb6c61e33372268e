"""Hierarchical agglomeration of fragments inside one block, with waterz.

The functions here are pure: they take numpy arrays and return numpy arrays,
and know nothing about blocks, dask or zarr. The orchestration reads a block
(with context) of affinities and fragments, calls :func:`agglomerate_block`,
and stores the scored edges of the region adjacency graph (RAG) it returns.

The score of an edge ``(u, v)`` is the score of the merge at which ``u`` and
``v`` first end up in the same region, when waterz agglomerates the block
until everything that touches is merged. Thresholding these scores at ``t``
(keeping ``score < t``, as waterz does) and taking connected components
therefore reproduces waterz's own segmentation at threshold ``t``, for every
``t`` at once (with a bin queue: for ``t`` on a bin boundary, see
:func:`_merge_scores`).

Examples
--------
>>> import numpy as np
>>> fragments = np.array([[[1, 1, 2, 2]]], dtype=np.uint64)
>>> affinities = np.ones((3, 1, 1, 4), dtype=np.float32)
>>> u, v, score = agglomerate_block(affinities, fragments, scoring="mean")
>>> u.tolist(), v.tolist(), score.tolist()
([1], [2], [0.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import waterz

from workers.merge_tree import (  # noqa: F401
    _NEVER,
    _join_times,
    _merge_arrays,
    _merge_scores,
    _merge_tree,
)
from workers.rag import (  # noqa: F401
    _EMPTY_IDS,
    _HASH_MULTIPLIER,
    _LOW_32_BITS,
    _U32,
    _as_fragments,
    _grown_map,
    _grown_set,
    _insert,
    _pair_key,
    _relabel,
    _relabel_and_edges,
    _relabel_kernel,
    _scan_rows,
    _shift,
    _slot,
    rag_edges,
)
from workers.scoring import (  # noqa: F401
    _QUANTILES,
    SCORING_FUNCTIONS,
    _prebuilt_specs,
    _without_spaces,
    prebuilt_scoring_functions,
    scoring_function,
)
from workers.silence import (  # noqa: F401
    _SILENCE_LOCK,
    _SILENCED,
    _STREAM_NAMES,
    _NullWriter,
    _dup_to_devnull,
    _flush_all,
    _redirect_to_devnull,
    _restore,
    silence_stdout,
)

__all__ = [
    "SCORING_FUNCTIONS",
    "agglomerate_block",
    "compile_kernels",
    "epsilon_agglomerate",
    "prebuilt_scoring_functions",
    "rag_edges",
    "scoring_function",
    "silence_stdout",
]


# ---------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------


def _as_affinities(affinities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The first 3 channels of ``affinities`` as C-contiguous float32 in [0, 1].

    uint8 affinities are scaled by 1/255. Values outside [0, 1] are clipped,
    which keeps every score in [0, 1] (what waterz's bin queue assumes, and
    what makes a threshold just above 1 merge everything).
    """
    affinities = np.asarray(affinities)
    if affinities.ndim != 4 or affinities.shape[0] < 3:
        raise ValueError(
            f"affinities must have the shape (3, z, y, x), not {affinities.shape}"
        )
    if tuple(affinities.shape[1:]) != tuple(shape):
        raise ValueError(
            f"affinities {affinities.shape} do not fit fragments {tuple(shape)}"
        )
    affinities = affinities[:3]
    if affinities.dtype == np.uint8:
        return np.ascontiguousarray(affinities, dtype=np.float32) / np.float32(255)
    affinities = np.ascontiguousarray(affinities, dtype=np.float32)
    if affinities.size and (affinities.min() < 0 or affinities.max() > 1):
        # clip into a new array: the caller's array is not ours to change
        affinities = np.clip(affinities, 0, 1)
    return affinities


# ---------------------------------------------------------------------------
# running waterz
# ---------------------------------------------------------------------------

# waterz merges while the cheapest score is strictly below the threshold;
# every score is at most 1 (affinities are clipped to [0, 1]), so this merges
# all regions that touch
_ABOVE_MAX_SCORE = 1.0 + 1e-3


def _run_waterz(
    affinities: np.ndarray,
    fragments: np.ndarray,
    threshold: float,
    scoring: str,
    discretize_queue: int,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One silenced waterz agglomeration of ``fragments`` (changed in place).

    Returns
    -------
    segmentation : numpy.ndarray
        ``fragments``, now holding waterz's region ids at ``threshold``.
    merge_history : list of dict
        The merges, in order, as dicts with keys a, b, c and score.

    Raises
    ------
    RuntimeError
        If the scoring function is not prebuilt and compiling it failed.
    """
    function = scoring_function(scoring)
    with silence_stdout():
        try:
            results = waterz.agglomerate(
                affinities,
                thresholds=[threshold],
                fragments=fragments,
                scoring_function=function,
                discretize_queue=discretize_queue,
                return_merge_history=True,
            )
        except ValueError:  # bad arguments, checked before any compilation
            raise
        except Exception as error:  # compilation failures come in many types
            if scoring in prebuilt_scoring_functions(discretize_queue):
                raise
            prebuilt = ", ".join(prebuilt_scoring_functions(discretize_queue))
            raise RuntimeError(
                f"scoring function {scoring!r} ({function}) with "
                f"discretize_queue={discretize_queue} is not prebuilt in waterz "
                f"and compiling it failed ({type(error).__name__}: {error}); it "
                "needs witty, a C++ compiler and the boost headers. Prebuilt "
                f"scoring functions for this queue: {prebuilt}"
            ) from error
        segmentation, merge_history = next(iter(results))
    return segmentation, merge_history


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def agglomerate_block(
    affinities: np.ndarray,
    fragments: np.ndarray,
    scoring: str = "hist_quant_50",
    discretize_queue: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score every RAG edge of a block by the waterz merge that joins it.

    waterz agglomerates ``fragments`` until every pair of touching regions is
    merged; the score of an edge ``(u, v)`` is the score of the merge at which
    ``u`` and ``v`` first end up in one region. Components of the edges with
    score below ``t`` are waterz's segmentation at threshold ``t``.

    Parameters
    ----------
    affinities : numpy.ndarray
        float32 (or uint8, scaled by 1/255) of shape ``(3, z, y, x)``, in
        [0, 1]; channel ``c`` at voxel ``p`` is the affinity between ``p`` and
        ``p - e_c`` (waterz's convention). Further channels are ignored.
    fragments : numpy.ndarray
        Integer labels of shape ``(z, y, x)``; 0 is background. Not changed.
    scoring : str, default "hist_quant_50"
        A name in :data:`SCORING_FUNCTIONS`.
    discretize_queue : int, default 256
        Bins of waterz's merge queue; 0 for an exact (slower) priority queue.

    Returns
    -------
    u, v : numpy.ndarray
        uint64, the edges of :func:`rag_edges` (original ids, ``u < v``),
        sorted by ``(u, v)``.
    score : numpy.ndarray
        float32 merge score per edge, in [0, 1] (``+inf`` if never merged).

    Raises
    ------
    ValueError
        For an unknown scoring function or arrays of the wrong shape.
    RuntimeError
        If a scoring function that is not prebuilt fails to compile.
    """
    scoring_function(scoring)  # fail early on an unknown name
    fragments = _as_fragments(fragments)
    affinities = _as_affinities(affinities, fragments.shape)

    relabeled, original, u, v = _relabel_and_edges(fragments)
    if u.size == 0:
        return _EMPTY_IDS.copy(), _EMPTY_IDS.copy(), np.zeros(0, np.float32)

    _, merge_history = _run_waterz(
        affinities, relabeled, _ABOVE_MAX_SCORE, scoring, discretize_queue
    )
    scores = _merge_scores(original.size, u, v, merge_history)
    # the relabeling kept the order, so the edges are still sorted by (u, v)
    return original[u], original[v], scores


def epsilon_agglomerate(
    affinities: np.ndarray,
    fragments: np.ndarray,
    epsilon: float,
    scoring: str = "mean",
    discretize_queue: int = 0,
) -> np.ndarray:
    """Merge the fragments that waterz merges below ``epsilon``.

    Parameters
    ----------
    affinities : numpy.ndarray
        As for :func:`agglomerate_block`.
    fragments : numpy.ndarray
        Integer labels of shape ``(z, y, x)``; 0 is background. Not changed.
    epsilon : float
        waterz threshold: merges happen while the lowest score is strictly
        below it. ``epsilon <= 0`` merges nothing.
    scoring : str, default "mean"
        A name in :data:`SCORING_FUNCTIONS`.
    discretize_queue : int, default 0
        Bins of waterz's merge queue. The exact queue (0) merges every pair
        that scores below ``epsilon``; a bin queue may stop a little early.

    Returns
    -------
    numpy.ndarray
        uint64 fragments of the same shape, in the same id space: each merged
        region carries the smallest original id of its members, 0 stays 0.
    """
    scoring_function(scoring)
    fragments = _as_fragments(fragments)
    affinities = _as_affinities(affinities, fragments.shape)
    if epsilon <= 0:
        return fragments.copy()

    relabeled, original = _relabel(fragments)
    if original.size <= 2:  # at most one fragment: nothing to merge
        return fragments.copy()
    segmentation, _ = _run_waterz(
        affinities, relabeled.copy(), float(epsilon), scoring, discretize_queue
    )

    # waterz names a region after one of its members; find, per region, the
    # smallest member (ids are consecutive and ordered like the originals)
    region_of = np.zeros(original.size, dtype=np.uint64)
    region_of[relabeled.reshape(-1)] = segmentation.reshape(-1)
    smallest = np.full(original.size, original.size, dtype=np.int64)
    np.minimum.at(smallest, region_of.astype(np.intp), np.arange(original.size))
    representative = original[smallest[region_of.astype(np.intp)]]
    return representative[relabeled]


def compile_kernels() -> None:
    """Load (or compile, the first time on a machine) the numba kernels it uses.

    :func:`agglomerate_block`, :func:`rag_edges` and
    :func:`epsilon_agglomerate` compile them on first use otherwise, inside
    the first block a worker gets.
    """
    fragments = np.array([[[1, 1, 2], [3, 0, 2]]], dtype=np.uint64)
    _, _, u, v = _relabel_and_edges(fragments)
    _relabel_and_edges(fragments, with_edges=False)
    history = [{"a": 1, "b": 2, "c": 1, "score": 0.5}]
    _merge_scores(4, u, v, history)
