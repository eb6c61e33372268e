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

import contextlib
import ctypes
import io
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import fastremap
import numpy as np
import waterz

__all__ = [
    "SCORING_FUNCTIONS",
    "agglomerate_block",
    "epsilon_agglomerate",
    "prebuilt_scoring_functions",
    "rag_edges",
    "scoring_function",
    "silence_stdout",
]

# ---------------------------------------------------------------------------
# silencing C-level output
# ---------------------------------------------------------------------------

# fd -> [saved duplicate of the original fd, nesting depth, saved Python
# stream]. The redirection is process-wide, so concurrent threads (dask
# workers run several) must share one redirection: the first to enter
# redirects, the last to leave restores. Without this, a second thread would
# save /dev/null as "the original" and restore it after the first one left,
# losing stdout for good.
_SILENCED: dict[int, list[Any]] = {}
_SILENCE_LOCK = threading.Lock()
_STREAM_NAMES = {1: "stdout", 2: "stderr"}


class _NullWriter(io.TextIOBase):
    """A text stream that drops everything written to it."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def _flush_all() -> None:
    """Flush Python's and libc's buffers, so no output crosses a redirection."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    # C++ iostreams are synced with C stdio by default, so flushing every C
    # stream also pushes out what std::cout holds
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _dup_to_devnull(fd: int) -> int:
    """Point ``fd`` at /dev/null; return a duplicate of the original, or -1."""
    try:
        saved = os.dup(fd)
    except OSError:
        # a closed fd prints nowhere already: nothing to restore
        return -1
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return saved


def _redirect_to_devnull(fd: int) -> None:
    """Silence ``fd``, and the Python stream of that name, once per process.

    The Python stream is swapped too because waterz's Cython wrapper also
    uses ``print``, which bypasses the fd when ``sys.stdout`` is not the
    terminal (pytest, doctest, notebooks).
    """
    entry = _SILENCED.get(fd)
    if entry is not None:
        entry[1] += 1
        return
    name = _STREAM_NAMES.get(fd)
    stream = getattr(sys, name) if name else None
    _SILENCED[fd] = [_dup_to_devnull(fd), 1, stream]
    if name:
        setattr(sys, name, _NullWriter())


def _restore(fd: int) -> None:
    """Undo one :func:`_redirect_to_devnull` of ``fd``."""
    entry = _SILENCED[fd]
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _SILENCED[fd]
    saved, _, stream = entry
    if saved >= 0:
        os.dup2(saved, fd)
        os.close(saved)
    name = _STREAM_NAMES.get(fd)
    if name:
        setattr(sys, name, stream)


@contextlib.contextmanager
def silence_stdout(stderr: bool = False) -> Iterator[None]:
    """Silence output of the whole process at the file-descriptor level.

    waterz prints its progress from C++ straight to file descriptor 1, which
    :func:`contextlib.redirect_stdout` cannot catch: that only swaps the
    Python object ``sys.stdout``. Here the descriptor itself is pointed at
    ``/dev/null`` (with ``dup2``) and restored afterwards, also when the body
    raises. Buffers are flushed on the way in (so earlier output still
    appears) and on the way out (so silenced output does not leak later).
    ``sys.stdout`` is swapped for a writer that drops everything as well,
    for Python-level prints where it is not the terminal (pytest, doctest).

    Parameters
    ----------
    stderr : bool, default False
        Also silence file descriptor 2. Off by default, such that real errors
        (and compiler messages of waterz's JIT) still show.

    Notes
    -----
    The redirection affects every thread of the process. Nested and
    concurrent uses are reference counted: the descriptors are restored when
    the last user leaves.

    Examples
    --------
    >>> with silence_stdout():
    ...     _ = os.write(1, b"never seen\\n")
    """
    fds = (1, 2) if stderr else (1,)
    with _SILENCE_LOCK:
        _flush_all()
        for fd in fds:
            _redirect_to_devnull(fd)
    try:
        yield
    finally:
        with _SILENCE_LOCK:
            _flush_all()
            for fd in fds:
                _restore(fd)


# ---------------------------------------------------------------------------
# region adjacency graph
# ---------------------------------------------------------------------------

_EMPTY_IDS = np.zeros(0, dtype=np.uint64)


def _face_pairs(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (smaller, larger) label pairs of face-adjacent voxels that differ.

    Pairs with background (0) are left out; pairs repeat once per face.
    """
    lows, highs = [], []
    for axis in range(fragments.ndim):
        if fragments.shape[axis] < 2:
            continue
        here = [slice(None)] * fragments.ndim
        before = [slice(None)] * fragments.ndim
        here[axis] = slice(1, None)
        before[axis] = slice(None, -1)
        a = fragments[tuple(here)]
        b = fragments[tuple(before)]
        touching = (a != b) & (a != 0) & (b != 0)
        a = a[touching]
        b = b[touching]
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
    if not lows:
        return _EMPTY_IDS, _EMPTY_IDS
    return np.concatenate(lows), np.concatenate(highs)


def _unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs ``(u, v)`` of ids below 2**32, sorted by ``(u, v)``.

    Each pair is packed into one uint64 key, as sorting one array is much
    faster than sorting rows (or a structured array).
    """
    if u.size == 0:
        return _EMPTY_IDS.copy(), _EMPTY_IDS.copy()
    if max(int(u.max()), int(v.max())) >= 2**32:
        raise ValueError("ids must be below 2**32 to be packed; relabel first")
    keys = np.unique((u << np.uint64(32)) | v)
    return keys >> np.uint64(32), keys & np.uint64(2**32 - 1)


def rag_edges(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The region adjacency graph of a 3D label volume.

    Two labels are adjacent if they occupy face-adjacent voxels
    (6-neighbourhood). Background (0) has no edges.

    Parameters
    ----------
    fragments : numpy.ndarray
        Integer labels of shape ``(z, y, x)``; 0 is background.

    Returns
    -------
    u, v : numpy.ndarray
        uint64 arrays of equal length, the distinct adjacent pairs with
        ``0 < u < v``, sorted by ``(u, v)``.

    Examples
    --------
    >>> labels = np.array([[[1, 2], [3, 0]]], dtype=np.uint64)
    >>> [pair.tolist() for pair in rag_edges(labels)]
    [[1, 1], [2, 3]]
    """
    fragments = _as_fragments(fragments)
    if fragments.size == 0 or int(fragments.max()) < 2**32:
        return _unique_pairs(*_face_pairs(fragments))
    # large ids do not pack into one key: work on their ranks, which keeps
    # the order of the pairs
    relabeled, original = _relabel(fragments)
    u, v = _unique_pairs(*_face_pairs(relabeled))
    return original[u], original[v]


# ---------------------------------------------------------------------------
# scoring functions
# ---------------------------------------------------------------------------

# the quantiles waterz compiles ahead of time (waterz._codegen.QUANTILES)
_QUANTILES = tuple(range(10, 100, 5))

SCORING_FUNCTIONS: dict[str, str] = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>",
    **{
        f"hist_quant_{q}": (
            f"OneMinus<HistogramQuantileAffinity<RegionGraphType,{q},ScoreValue,256,false>>"
        )
        for q in _QUANTILES
    },
    # MaxAffinity and MinAffinity are aliases in waterz's MergeFunctions.hpp,
    # but not compiled ahead of time: they need witty, a C++ compiler and the
    # boost headers on first use
    "max": "OneMinus<MaxAffinity<RegionGraphType,ScoreValue>>",
    "min": "OneMinus<MinAffinity<RegionGraphType,ScoreValue>>",
}
"""Names of scoring functions, and the C++ types waterz knows them by.

All of them score with one minus an affinity statistic of the boundary, such
that a score is in ``[0, 1]`` and lower scores are merged first.
"""


def scoring_function(name: str) -> str:
    """The waterz C++ type of the scoring function called ``name``.

    Parameters
    ----------
    name : str
        One of the keys of :data:`SCORING_FUNCTIONS`: ``"mean"``,
        ``"hist_quant_N"`` (N in 10, 15, ..., 95), ``"max"`` or ``"min"``.

    Returns
    -------
    str
        The C++ type string to pass to ``waterz.agglomerate``.

    Raises
    ------
    ValueError
        If ``name`` is not a known scoring function.
    """
    try:
        return SCORING_FUNCTIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(SCORING_FUNCTIONS)
        raise ValueError(
            f"unknown scoring function {name!r}; valid names are: {valid}"
        ) from None


def _prebuilt_specs() -> set[tuple[str, int]]:
    """The (C++ type without spaces, queue bins) pairs waterz ships compiled.

    Read from waterz's private registry, as waterz has no public one; an
    empty set if that ever goes away (then every name counts as JIT).
    """
    try:
        from waterz._codegen import iter_specs
    except ImportError:  # pragma: no cover - a waterz without the registry
        return set()
    return {(_without_spaces(f), int(bins)) for f, bins in iter_specs()}


def _without_spaces(function: str) -> str:
    """A C++ type string without whitespace, to compare spellings."""
    return "".join(function.split())


def prebuilt_scoring_functions(discretize_queue: int = 256) -> list[str]:
    """Names of the scoring functions that run without JIT compilation.

    Parameters
    ----------
    discretize_queue : int, default 256
        The number of bins of waterz's merge queue (0: exact priority queue).

    Returns
    -------
    list of str
        The names in :data:`SCORING_FUNCTIONS` that waterz has compiled ahead
        of time for that queue.
    """
    specs = _prebuilt_specs()
    return [
        name
        for name, function in SCORING_FUNCTIONS.items()
        if (_without_spaces(function), int(discretize_queue)) in specs
    ]


# ---------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------


def _as_fragments(fragments: np.ndarray) -> np.ndarray:
    """``fragments`` as a 3D uint64 array (no copy if it is one already)."""
    fragments = np.asarray(fragments)
    if fragments.ndim != 3:
        raise ValueError(f"fragments must be 3D (z, y, x), not {fragments.shape}")
    if not (np.issubdtype(fragments.dtype, np.integer) or fragments.dtype == bool):
        raise ValueError(f"fragments must be integer labels, not {fragments.dtype}")
    return fragments.astype(np.uint64, copy=False)


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


def _relabel(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace labels by consecutive ids 1..n, keeping their order.

    waterz allocates per-id tables up to the largest id, so large ids (like
    10**12) must be made small first. Keeping the order makes the result
    independent of where in the block a label happens to occur first.

    Returns
    -------
    relabeled : numpy.ndarray
        A new C-contiguous uint64 array (waterz writes into it).
    original : numpy.ndarray
        uint64 array with ``original[relabeled] == fragments``;
        ``original[0] == 0``.
    """
    ids = fastremap.unique(fragments)
    original = ids if ids.size and ids[0] == 0 else np.concatenate([[0], ids])
    original = original.astype(np.uint64)
    mapping = {int(label): new for new, label in enumerate(original.tolist())}
    relabeled = fastremap.remap(fragments, mapping, in_place=False)
    return np.ascontiguousarray(relabeled, dtype=np.uint64), original


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
# merge tree -> edge scores
# ---------------------------------------------------------------------------


def _adjacency(
    num_nodes: int, u: Sequence[int], v: Sequence[int]
) -> list[dict[int, list[int]]]:
    """Per node: neighbour -> indices of the RAG edges between the two.

    Both directions hold the same list object, such that extending it once
    updates both ends.
    """
    adjacency: list[dict[int, list[int]]] = [{} for _ in range(num_nodes)]
    for index, (a, b) in enumerate(zip(u, v)):
        edges = [index]
        adjacency[a][b] = edges
        adjacency[b][a] = edges
    return adjacency


def _absorb(
    adjacency: list[dict[int, list[int]]], big: int, small: int
) -> list[int]:
    """Merge cluster ``small`` into ``big``; return the edges that joined them.

    Only the neighbours of ``small`` are visited (the caller makes it the one
    with fewer), and of two edge lists the shorter is appended to the longer,
    so that the whole merge tree costs O(E log E).
    """
    big_map = adjacency[big]
    small_map = adjacency[small]
    joined = big_map.pop(small, [])
    small_map.pop(big, None)
    for neighbour, edges in small_map.items():
        neighbour_map = adjacency[neighbour]
        del neighbour_map[small]
        existing = big_map.get(neighbour)
        if existing is None:
            big_map[neighbour] = edges
            neighbour_map[big] = edges
        elif len(existing) >= len(edges):
            existing.extend(edges)
        else:
            edges.extend(existing)
            big_map[neighbour] = edges
            neighbour_map[big] = edges
    adjacency[small] = {}
    return joined


def _merge_scores(
    num_nodes: int,
    u: np.ndarray,
    v: np.ndarray,
    merge_history: Sequence[dict[str, Any]],
) -> np.ndarray:
    """Per RAG edge, the score of the merge that first joins its endpoints.

    Clusters are tracked by a handle (the id of a node in them) that stays
    fixed while waterz names merged regions as it likes (``c``). When the
    clusters of ``a`` and ``b`` merge, all pending RAG edges between them
    get the score of this merge; this finds the lowest common ancestor of
    every edge in the merge tree in one pass over the history.

    With waterz's exact priority queue the merge scores never decrease. With
    a bin queue, merges within one bin happen in insertion order, and a later
    merge can score a little (less than one bin) lower than an earlier one.
    The scores are kept as they are: thresholds on bin boundaries still cut
    the history exactly where waterz stops.

    Returns
    -------
    numpy.ndarray
        float32 scores, ``+inf`` for edges whose endpoints never merge.
    """
    adjacency = _adjacency(num_nodes, u.tolist(), v.tolist())
    handle = list(range(num_nodes))
    joined_edges: list[list[int]] = []
    joined_scores: list[float] = []
    for merge in merge_history:
        first, second = handle[merge["a"]], handle[merge["b"]]
        if first == second:  # not expected from waterz, harmless to skip
            continue
        if len(adjacency[first]) < len(adjacency[second]):
            first, second = second, first
        joined = _absorb(adjacency, first, second)
        if joined:
            joined_edges.append(joined)
            joined_scores.append(float(merge["score"]))
        handle[merge["c"]] = first

    scores = np.full(u.size, np.inf, dtype=np.float32)
    if joined_edges:
        counts = [len(edges) for edges in joined_edges]
        indices = np.fromiter(
            (index for edges in joined_edges for index in edges),
            dtype=np.intp,
            count=sum(counts),
        )
        scores[indices] = np.repeat(np.asarray(joined_scores, np.float32), counts)
    return scores


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

    relabeled, original = _relabel(fragments)
    u, v = _unique_pairs(*_face_pairs(relabeled))
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
