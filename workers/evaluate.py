"""Segmentation accuracy metrics computed from sparse contingency tables.

A contingency table here is a triple ``(seg_ids, gt_ids, counts)`` of equal
length 1-D arrays: ``counts[k]`` voxels carry segmentation label
``seg_ids[k]`` and ground-truth label ``gt_ids[k]``.  Rows are unique and
sorted lexicographically by ``(seg_id, gt_id)``.  Ground-truth label 0 is
"unlabelled" and never appears; segmentation label 0 is an ordinary label.

Working on tables rather than volumes is what makes blockwise evaluation
possible: tables of disjoint blocks are merged by summing counts, and an
agglomeration of fragments into segments is applied to the (small) table
instead of rewriting the (large) volume.  The scores are defined to agree
with :func:`skimage.metrics.variation_of_information` and
:func:`skimage.metrics.adapted_rand_error` with ``ignore_labels=[0]``.

This module only depends on numpy and fastremap so that it can run inside
any worker process.
"""

from __future__ import annotations

from collections.abc import Iterable

import fastremap
import numpy as np

__all__ = [
    "Table",
    "contingency_table",
    "merge_contingency",
    "relabel_contingency",
    "scores_from_contingency",
    "evaluate_arrays",
]

Table = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(seg_ids uint64, gt_ids uint64, counts int64)``."""


def _empty_table() -> Table:
    """Return a table with no rows and the canonical dtypes."""
    return (
        np.zeros(0, dtype=np.uint64),
        np.zeros(0, dtype=np.uint64),
        np.zeros(0, dtype=np.int64),
    )


def _renumber(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels onto a dense range ``0 .. k-1``.

    Parameters
    ----------
    labels : np.ndarray
        1-D uint64 array; it is overwritten (the caller passes a scratch copy).

    Returns
    -------
    dense : np.ndarray
        int64 array of the same length with values in ``0 .. k-1``.
    ids : np.ndarray
        uint64 array of length ``k`` with ``ids[dense] == labels``.
    """
    # fastremap hashes instead of sorting, roughly 10x faster than
    # np.unique(return_inverse=True) on 1e7 voxels; the order is arbitrary,
    # the final table is sorted once it has shrunk to one row per pair.
    dense, mapping = fastremap.renumber(labels, in_place=True, preserve_zero=False)
    ids = np.zeros(len(mapping), dtype=np.uint64)
    if mapping:
        new = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
        old = np.fromiter(mapping.keys(), dtype=np.uint64, count=len(mapping))
        # renumber() starts at 1 when preserve_zero is False
        ids[new - 1] = old
    return dense.astype(np.int64) - 1, ids


def _sorted_table(seg_ids: np.ndarray, gt_ids: np.ndarray, counts: np.ndarray) -> Table:
    """Sort unique rows lexicographically by ``(seg_id, gt_id)``."""
    order = np.lexsort((gt_ids, seg_ids))
    return (
        seg_ids[order].astype(np.uint64, copy=False),
        gt_ids[order].astype(np.uint64, copy=False),
        counts[order].astype(np.int64, copy=False),
    )


def contingency_table(segmentation: np.ndarray, ground_truth: np.ndarray) -> Table:
    """Count voxels for every (segment, ground-truth object) pair.

    Parameters
    ----------
    segmentation : np.ndarray
        Integer label volume to evaluate.  Label 0 is an ordinary label.
    ground_truth : np.ndarray
        Integer label volume of the same shape.  Voxels labelled 0 are
        unannotated and excluded from the table.

    Returns
    -------
    seg_ids : np.ndarray
        uint64 segmentation label of each row.
    gt_ids : np.ndarray
        uint64 ground-truth label of each row.
    counts : np.ndarray
        int64 number of voxels with that label pair.

    Notes
    -----
    Labels are reinterpreted as uint64, so negative labels wrap around.
    Rows are unique and sorted lexicographically by ``(seg_id, gt_id)``.
    """
    segmentation = np.asarray(segmentation)
    ground_truth = np.asarray(ground_truth)
    if segmentation.shape != ground_truth.shape:
        raise ValueError(
            f"shape mismatch: segmentation {segmentation.shape} "
            f"vs ground truth {ground_truth.shape}"
        )
    annotated = (ground_truth != 0).ravel()
    # Boolean indexing copies, so _renumber may work in place on the result.
    seg = segmentation.ravel()[annotated].astype(np.uint64, copy=False)
    gt = ground_truth.ravel()[annotated].astype(np.uint64, copy=False)
    if seg.size == 0:
        return _empty_table()
    seg_dense, seg_ids = _renumber(seg)
    gt_dense, gt_ids = _renumber(gt)
    # Both dense ranges are at most the voxel count, so the product fits int64.
    pair_key = seg_dense * gt_ids.size + gt_dense
    pair_dense, pair_keys = _renumber(pair_key.view(np.uint64))
    counts = np.bincount(pair_dense, minlength=pair_keys.size)
    pair_keys = pair_keys.astype(np.int64)
    seg_index, gt_index = np.divmod(pair_keys, gt_ids.size)
    return _sorted_table(seg_ids[seg_index], gt_ids[gt_index], counts)


def _group_sum(seg_ids: np.ndarray, gt_ids: np.ndarray, counts: np.ndarray) -> Table:
    """Sum counts of rows with identical ``(seg_id, gt_id)``; sort the result."""
    if seg_ids.size == 0:
        return _empty_table()
    seg_ids, gt_ids, counts = _sorted_table(seg_ids, gt_ids, counts)
    starts = np.ones(seg_ids.size, dtype=bool)
    starts[1:] = (seg_ids[1:] != seg_ids[:-1]) | (gt_ids[1:] != gt_ids[:-1])
    first = np.flatnonzero(starts)
    return seg_ids[first], gt_ids[first], np.add.reduceat(counts, first)


def merge_contingency(tables: Iterable[Table]) -> Table:
    """Sum several contingency tables into one.

    Parameters
    ----------
    tables : Iterable[Table]
        Tables ``(seg_ids, gt_ids, counts)``, e.g. one per block of a volume.

    Returns
    -------
    Table
        One row per distinct pair with the summed count, sorted by
        ``(seg_id, gt_id)``.  Empty arrays when ``tables`` is empty.
    """
    tables = list(tables)
    if not tables:
        return _empty_table()
    seg_ids = np.concatenate([np.asarray(t[0], dtype=np.uint64) for t in tables])
    gt_ids = np.concatenate([np.asarray(t[1], dtype=np.uint64) for t in tables])
    counts = np.concatenate([np.asarray(t[2], dtype=np.int64) for t in tables])
    return _group_sum(seg_ids, gt_ids, counts)


def _apply_lut(ids: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map ``ids`` through the sorted lookup table ``keys -> values``.

    Ids missing from ``keys`` map to themselves and 0 always maps to 0.
    """
    if keys.size == 0:
        return ids.copy()
    position = np.searchsorted(keys, ids)
    # searchsorted returns keys.size for ids past the end; clip to compare.
    position = np.minimum(position, keys.size - 1)
    found = (keys[position] == ids) & (ids != 0)
    return np.where(found, values[position], ids)


def relabel_contingency(
    table: Table, fragment_ids: np.ndarray, segment_ids: np.ndarray
) -> Table:
    """Relabel the segmentation column of a table, e.g. fragments to segments.

    Parameters
    ----------
    table : Table
        ``(seg_ids, gt_ids, counts)``, typically of a fragment volume.
    fragment_ids : np.ndarray
        Sorted (ascending) uint64 keys of the lookup table.
    segment_ids : np.ndarray
        uint64 value for each key, same length as ``fragment_ids``.

    Returns
    -------
    Table
        Table of the relabelled segmentation: duplicate pairs created by the
        mapping are summed and rows sorted by ``(seg_id, gt_id)``.  Ids not
        in the lookup table keep their value; id 0 always stays 0.

    Raises
    ------
    ValueError
        If the lookup arrays differ in length or the keys are not sorted.
    """
    keys = np.asarray(fragment_ids, dtype=np.uint64).ravel()
    values = np.asarray(segment_ids, dtype=np.uint64).ravel()
    if keys.size != values.size:
        raise ValueError(
            f"fragment_ids ({keys.size}) and segment_ids ({values.size}) "
            "must have the same length"
        )
    # Unsorted keys would make searchsorted silently return wrong matches.
    if keys.size > 1 and np.any(keys[1:] < keys[:-1]):
        raise ValueError("fragment_ids must be sorted ascending")
    seg_ids = np.asarray(table[0], dtype=np.uint64)
    new_seg_ids = _apply_lut(seg_ids, keys, values)
    return _group_sum(
        new_seg_ids,
        np.asarray(table[1], dtype=np.uint64),
        np.asarray(table[2], dtype=np.int64),
    )


def _object_sizes(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total count of each distinct id.

    Returns
    -------
    sizes : np.ndarray
        float64 size of each distinct id, in ascending id order.
    inverse : np.ndarray
        Index into ``sizes`` for every row, so ``sizes[inverse]`` is the
        size of the object each row belongs to.
    """
    _, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.ravel()
    return np.bincount(inverse, weights=counts), inverse


def _conditional_entropy(counts: np.ndarray, given_sizes: np.ndarray) -> float:
    """Return ``H(X | Y) = -sum p_xy log2(p_xy / p_y)`` in bits.

    Parameters
    ----------
    counts : np.ndarray
        float64 joint counts ``n_xy`` (all positive).
    given_sizes : np.ndarray
        float64 size ``n_y`` of the conditioning object of each row.
    """
    total = counts.sum()
    # log base 2 because skimage's _xlogx uses log2; keeps results comparable.
    return float(-np.sum(counts / total * np.log2(counts / given_sizes)))


def _pair_ratio(same_both: float, same_one: float) -> float:
    """Fraction of same-label voxel pairs in one labelling kept in both.

    When the labelling has no same-label pairs (all objects of size 1)
    nothing can be lost, so the ratio is defined as 1.
    """
    return same_both / same_one if same_one > 0 else 1.0


def _sum_of_squares_minus_total(sizes: np.ndarray) -> float:
    """``sum(s^2) - sum(s)``: twice the number of same-label voxel pairs.

    Computed in float64 because ``s^2`` overflows int64 for objects larger
    than about 3e9 voxels, which whole-dataset tables can contain.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(sizes @ sizes - sizes.sum())


def _rand_scores(
    counts: np.ndarray, seg_sizes: np.ndarray, gt_sizes: np.ndarray
) -> dict[str, float]:
    """Adapted Rand split/merge errors and their F-score based error.

    Parameters
    ----------
    counts : np.ndarray
        Joint counts ``n_ij`` of the table rows.
    seg_sizes, gt_sizes : np.ndarray
        Sizes of the segments and of the ground-truth objects.
    """
    pairs_both = _sum_of_squares_minus_total(counts)
    pairs_seg = _sum_of_squares_minus_total(seg_sizes)
    pairs_gt = _sum_of_squares_minus_total(gt_sizes)
    # recall: ground-truth pairs kept together; splits lower it.
    recall = _pair_ratio(pairs_both, pairs_gt)
    # precision: segmentation pairs that are truly together; merges lower it.
    precision = _pair_ratio(pairs_both, pairs_seg)
    denominator = 0.5 * (pairs_seg + pairs_gt)
    fscore = pairs_both / denominator if denominator > 0 else 1.0
    return {
        "rand_split": 1.0 - recall,
        "rand_merge": 1.0 - precision,
        "adapted_rand_error": 1.0 - fscore,
    }


def scores_from_contingency(table: Table) -> dict[str, float]:
    """Variation of information and adapted Rand scores of a table.

    Parameters
    ----------
    table : Table
        ``(seg_ids, gt_ids, counts)``; rows need not be sorted or unique.

    Returns
    -------
    dict[str, float]
        ``voi_split``
            ``H(seg | gt)`` in bits: over-segmentation (false splits).
        ``voi_merge``
            ``H(gt | seg)`` in bits: under-segmentation (false merges).
        ``voi_sum``
            ``voi_split + voi_merge``.
        ``rand_split``
            ``1 - recall`` with recall ``(sum n_ij^2 - N) / (sum a_j^2 - N)``,
            ``a_j`` the ground-truth object sizes.
        ``rand_merge``
            ``1 - precision`` with precision
            ``(sum n_ij^2 - N) / (sum b_i^2 - N)``, ``b_i`` the segment sizes.
        ``adapted_rand_error``
            ``1 - 2 P R / (P + R)``, equal to skimage's ``adapted_rand_error``.
        ``n_voxels``
            ``N``, the number of annotated voxels.

    Notes
    -----
    Logarithms are base 2 to match :mod:`skimage.metrics`.  skimage's
    ``adapted_rand_error`` labels its precision and recall the other way round
    (its "precision" divides by the ground-truth pairs); the ``rand_*`` keys
    here follow the usual meaning, so ``rand_split`` equals one minus
    skimage's "precision".  A ratio whose denominator is 0 (every object a
    single voxel) is taken as 1, i.e. no error.  An empty table gives zeros.
    """
    seg_ids, gt_ids, counts = _group_sum(
        np.asarray(table[0], dtype=np.uint64),
        np.asarray(table[1], dtype=np.uint64),
        np.asarray(table[2], dtype=np.int64),
    )
    # Zero-count rows carry no voxels but would produce log(0).
    keep = counts > 0
    seg_ids, gt_ids, counts = seg_ids[keep], gt_ids[keep], counts[keep]
    if counts.size == 0:
        return {
            "voi_split": 0.0,
            "voi_merge": 0.0,
            "voi_sum": 0.0,
            "rand_split": 0.0,
            "rand_merge": 0.0,
            "adapted_rand_error": 0.0,
            "n_voxels": 0.0,
        }
    weights = counts.astype(np.float64)
    gt_sizes, gt_row = _object_sizes(gt_ids, weights)
    seg_sizes, seg_row = _object_sizes(seg_ids, weights)
    voi_split = _conditional_entropy(weights, gt_sizes[gt_row])
    voi_merge = _conditional_entropy(weights, seg_sizes[seg_row])
    scores = {
        # A perfect result sums terms of -0.0; report a plain 0.0.
        "voi_split": max(0.0, voi_split),
        "voi_merge": max(0.0, voi_merge),
    }
    scores["voi_sum"] = scores["voi_split"] + scores["voi_merge"]
    scores.update(_rand_scores(counts, seg_sizes, gt_sizes))
    scores["n_voxels"] = float(counts.sum())
    return scores


def evaluate_arrays(
    segmentation: np.ndarray, ground_truth: np.ndarray
) -> dict[str, float]:
    """Score a segmentation volume against ground truth.

    Parameters
    ----------
    segmentation : np.ndarray
        Integer label volume to evaluate.
    ground_truth : np.ndarray
        Integer label volume of the same shape; 0 means unannotated.

    Returns
    -------
    dict[str, float]
        See :func:`scores_from_contingency`.
    """
    return scores_from_contingency(contingency_table(segmentation, ground_truth))
