"""The region adjacency graph (RAG) of a 3D label volume, with numba kernels.

One pass over the volume numbers its labels in sorted order (small ids that
waterz can allocate tables for) and collects the distinct pairs of labels on
face-adjacent voxels, with hash tables in numba. :func:`rag_edges` is the
public entry point; :func:`_relabel_and_edges` and :func:`_relabel` serve
:mod:`workers.agglomerate`.

Examples
--------
>>> import numpy as np
>>> labels = np.array([[[1, 2], [3, 0]]], dtype=np.uint64)
>>> [pair.tolist() for pair in rag_edges(labels)]
[[1, 1], [2, 3]]
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["rag_edges"]


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


def _as_fragments(fragments: np.ndarray) -> np.ndarray:
    """``fragments`` as a 3D uint64 array (no copy if it is one already)."""
    fragments = np.asarray(fragments)
    if fragments.ndim != 3:
        raise ValueError(f"fragments must be 3D (z, y, x), not {fragments.shape}")
    if not (np.issubdtype(fragments.dtype, np.integer) or fragments.dtype == bool):
        raise ValueError(f"fragments must be integer labels, not {fragments.dtype}")
    return fragments.astype(np.uint64, copy=False)


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
