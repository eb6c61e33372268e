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

import numba
import numpy as np
import waterz

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

# The kernels below are compiled by numba on first use (and cached on disk).
# Each gets one fixed dtype per argument (the callers cast first), so that
# numba compiles one version of each. Integers inside are uint64 or intp on
# purpose: numba turns a mix of uint64 and int64 into float64.
#
# Labels and label pairs are looked up in hash tables: open addressing with
# linear probing over a power-of-two uint64 table, 0 marking a free slot
# (labels and packed pairs are never 0), kept at most half full.

# Fibonacci hashing: the top bits of key * 2**64 / golden ratio (modulo 2**64)
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_U32 = np.uint64(32)
_LOW_32_BITS = np.uint64(2**32 - 1)


@numba.njit(cache=True, nogil=True)
def _shift(size: int) -> np.uint64:
    """``64 - log2(size)`` for a table of ``size`` slots, a power of two > 1."""
    bits = 0
    while (1 << bits) < size:
        bits += 1
    return np.uint64(64 - bits)


@numba.njit(cache=True, nogil=True)
def _slot(key: np.uint64, shift: np.uint64) -> int:
    """The first slot of ``key`` in a table of ``2**(64 - shift)`` slots."""
    return np.intp((key * _HASH_MULTIPLIER) >> shift)


@numba.njit(cache=True, nogil=True)
def _insert(table: np.ndarray, shift: np.uint64, key: np.uint64) -> int:
    """Add nonzero ``key`` to the hash set ``table``; 1 if it is new, else 0.

    ``shift`` is :func:`_shift` of the table's size.
    """
    mask = table.size - 1
    i = _slot(key, shift)
    while True:
        found = table[i]
        if found == key:
            return 0
        if found == 0:
            table[i] = key
            return 1
        i = (i + 1) & mask


@numba.njit(cache=True, nogil=True)
def _pair_key(a: np.uint64, b: np.uint64) -> np.uint64:
    """``min << 32 | max`` of two different ids below 2**32."""
    return (a << _U32) | b if a < b else (b << _U32) | a


@numba.njit(cache=True, nogil=True)
def _grown_map(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hash map ``keys -> values`` in a table four times as large."""
    new_keys = np.zeros(4 * keys.size, dtype=np.uint64)
    new_values = np.zeros(4 * keys.size, dtype=np.uint64)
    mask = new_keys.size - 1
    shift = _shift(new_keys.size)
    for j in range(keys.size):
        key = keys[j]
        if key != 0:
            i = _slot(key, shift)
            while new_keys[i] != 0:
                i = (i + 1) & mask
            new_keys[i] = key
            new_values[i] = values[j]
    return new_keys, new_values


@numba.njit(cache=True, nogil=True)
def _grown_set(table: np.ndarray) -> np.ndarray:
    """The hash set ``table`` in a table four times as large."""
    bigger = np.zeros(4 * table.size, dtype=np.uint64)
    shift = _shift(bigger.size)
    for key in table:
        if key != 0:
            _insert(bigger, shift, key)
    return bigger


@numba.njit(cache=True, nogil=True)
def _scan_rows(
    flat: np.ndarray,
    out: np.ndarray,
    height: int,
    width: int,
    first_row: int,
    id_keys: np.ndarray,
    id_ranks: np.ndarray,
    firsts: np.ndarray,
    num_ids: int,
    pairs: np.ndarray,
    num_pairs: int,
    with_edges: bool,
) -> tuple[int, int, int]:
    """Number the labels of ``flat`` by first appearance, collect the RAG.

    Goes through the rows (of ``width`` voxels) of the C-ordered volume
    ``flat`` from ``first_row`` on. A label gets the next number when it is
    first seen (the hash map ``id_keys -> id_ranks``, ``firsts[k - 1]`` is
    the label numbered ``k``), and ``out`` gets the numbers (0 stays 0).
    With ``with_edges``, each pair of differing nonzero numbers ``a < b`` on
    face-adjacent voxels goes into the hash set ``pairs`` as the key
    ``a << 32 | b``.

    Stops early at the start of a row for which a table could get more than
    half full; the caller grows it and calls again from that row (rows are
    done whole, so a row done twice changes nothing). Growing a table inside
    this loop instead makes numba's loop several times slower.

    Returns
    -------
    row : int
        The row to go on from (the number of rows when done).
    num_ids, num_pairs : int
        The updated counts.
    """
    plane = height * width
    num_rows = flat.size // width if width else 0
    id_mask = id_keys.size - 1
    id_shift = _shift(id_keys.size)
    pair_shift = _shift(pairs.size)
    for row in range(first_row, num_rows):
        if with_edges and 2 * (num_pairs + 3 * width) > pairs.size:
            return row, num_ids, num_pairs
        # labels come in runs along x: look up only where a run starts,
        # which is also where the x-pairs are
        previous = np.uint64(0)
        rank = np.uint64(0)
        last_y = last_z = np.uint64(0)
        has_row_before = row % height > 0
        has_plane_before = row >= height
        begin = row * width
        for index in range(begin, begin + width):
            label = flat[index]
            if label != previous:
                previous = label
                if label == 0:
                    rank = np.uint64(0)
                else:
                    i = _slot(label, id_shift)
                    while True:
                        found = id_keys[i]
                        if found == label:
                            rank = id_ranks[i]
                            break
                        if found == 0:
                            if 2 * (num_ids + 1) > id_keys.size:
                                return row, num_ids, num_pairs
                            firsts[num_ids] = label
                            num_ids += 1
                            rank = np.uint64(num_ids)
                            id_keys[i] = label
                            id_ranks[i] = rank
                            break
                        i = (i + 1) & id_mask
                    if with_edges and index > begin:
                        other = out[index - 1]
                        if other != 0:
                            key = _pair_key(other, rank)
                            num_pairs += _insert(pairs, pair_shift, key)
            out[index] = rank
            if with_edges and rank != 0:
                if has_row_before:
                    other = out[index - width]
                    if other != 0 and other != rank:
                        key = _pair_key(other, rank)
                        num_pairs += _insert(pairs, pair_shift, key)
                if has_plane_before:
                    other = out[index - plane]
                    if other != 0 and other != rank:
                        key = _pair_key(other, rank)
                        num_pairs += _insert(pairs, pair_shift, key)
    return num_rows, num_ids, num_pairs


@numba.njit(cache=True, nogil=True)
def _relabel_kernel(
    fragments: np.ndarray, out: np.ndarray, with_edges: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Write the rank of each label of ``fragments`` into ``out``; the RAG.

    ``fragments`` and ``out`` are C-contiguous 3D uint64 arrays of one shape.
    The k-th smallest nonzero label becomes ``k``, 0 stays 0.

    Returns
    -------
    ids : numpy.ndarray
        uint64, the distinct nonzero labels, sorted.
    keys : numpy.ndarray
        uint64, with ``with_edges`` the distinct ``a << 32 | b`` of the
        ranks ``0 < a < b`` on face-adjacent voxels, sorted; else empty.
    """
    _, height, width = fragments.shape
    flat = fragments.reshape(-1)
    out_flat = out.reshape(-1)
    id_keys = np.zeros(1 << 13, dtype=np.uint64)
    id_ranks = np.zeros(1 << 13, dtype=np.uint64)
    firsts = np.zeros(1 << 12, dtype=np.uint64)
    pairs = np.zeros(1 << 16 if with_edges else 2, dtype=np.uint64)
    num_ids = 0
    num_pairs = 0
    row = 0
    num_rows = flat.size // width if width else 0
    while True:
        row, num_ids, num_pairs = _scan_rows(
            flat, out_flat, height, width, row, id_keys, id_ranks, firsts,
            num_ids, pairs, num_pairs, with_edges,
        )
        if row >= num_rows:
            break
        if 2 * (num_ids + 1) > id_keys.size:
            id_keys, id_ranks = _grown_map(id_keys, id_ranks)
            more = np.zeros(id_keys.size // 2, dtype=np.uint64)
            more[:num_ids] = firsts[:num_ids]
            firsts = more
        if with_edges and 2 * (num_pairs + 3 * width) > pairs.size:
            pairs = _grown_set(pairs)

    # numbers by first appearance -> ranks in sorted order
    order = np.argsort(firsts[:num_ids])
    ids = firsts[order]
    rank_of = np.zeros(num_ids + 1, dtype=np.uint64)
    in_order = True
    for k in range(num_ids):
        rank_of[order[k] + 1] = k + 1
        in_order = in_order and order[k] == k
    if not in_order:
        for index in range(out_flat.size):
            out_flat[index] = rank_of[out_flat[index]]
    keys = np.empty(num_pairs, dtype=np.uint64)
    n = 0
    for key in pairs:
        if key != 0:
            keys[n] = _pair_key(rank_of[key >> _U32], rank_of[key & _LOW_32_BITS])
            n += 1
    return ids, np.sort(keys)


def _relabel_and_edges(
    fragments: np.ndarray, with_edges: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_relabel`, and the RAG edges of the relabeled volume.

    Returns
    -------
    relabeled, original : numpy.ndarray
        As for :func:`_relabel`.
    u, v : numpy.ndarray
        uint64, the distinct pairs of relabeled ids ``0 < u < v`` on
        face-adjacent voxels, sorted by ``(u, v)`` (and so by the original
        ids too); empty without ``with_edges``.
    """
    fragments = np.ascontiguousarray(_as_fragments(fragments))
    if fragments.size >= 2**32:
        raise ValueError("too many voxels to pack a pair of ranks in 64 bits")
    relabeled = np.empty(fragments.shape, dtype=np.uint64)
    ids, keys = _relabel_kernel(fragments, relabeled, bool(with_edges))
    original = np.concatenate([np.zeros(1, dtype=np.uint64), ids])
    return relabeled, original, keys >> _U32, keys & _LOW_32_BITS


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
    # work on ranks (small ids that pack into one key), which keep the order
    # of the pairs
    _, original, u, v = _relabel_and_edges(fragments)
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
    relabeled, original, _, _ = _relabel_and_edges(fragments, with_edges=False)
    return relabeled, original


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
    """Load (or compile, the first time on a machine) the numba kernels here.

    :func:`agglomerate_block`, :func:`rag_edges` and
    :func:`epsilon_agglomerate` compile them on first use otherwise, inside
    the first block a worker gets.
    """
    fragments = np.array([[[1, 1, 2], [3, 0, 2]]], dtype=np.uint64)
    _, _, u, v = _relabel_and_edges(fragments)
    _relabel_and_edges(fragments, with_edges=False)
    history = [{"a": 1, "b": 2, "c": 1, "score": 0.5}]
    _merge_scores(4, u, v, history)
