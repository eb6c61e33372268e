"""Overlap tables of two label images, object sizes, pair scores and the foreground IoU.

An overlap table lists, for each pair of labels that share voxels, the true
id, the predicted id and the voxel count (:func:`overlap_table`); the
matching in :mod:`blockseg.evaluate` and the foreground IoU
(:func:`foreground_iou_from_overlaps`) are computed from it alone.

Examples
--------
>>> foreground_iou(np.array([1, 1, 0, 0]), np.array([0, 2, 3, 0]))
0.3333333333333333
"""

from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(f"{name}: labels must be non-negative (0 is background), got {labels.min()}")
    return labels


def overlap_table(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel counts of every (true id, predicted id) pair of two label images.

    Parameters
    ----------
    truth, prediction : np.ndarray
        Non-negative integer label images of the same shape (any dimension).

    Returns
    -------
    true_ids, pred_ids, counts : np.ndarray
        uint64, uint64, int64 arrays, one row per pair that occurs, background
        (0) pairs included, so object sizes are row sums.

    Examples
    --------
    >>> t = np.array([[1, 1, 0]]); p = np.array([[2, 0, 0]])
    >>> [a.tolist() for a in overlap_table(t, p)]
    [[0, 1, 1], [0, 0, 2], [1, 1, 1]]
    """
    truth = _check_labels(truth, "truth")
    prediction = _check_labels(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(
            f"truth {truth.shape} and prediction {prediction.shape} have different shapes; "
            "the label images must have the same shape"
        )
    t_ids, t_dense = np.unique(truth.ravel(), return_inverse=True)
    p_ids, p_dense = np.unique(prediction.ravel(), return_inverse=True)
    # a dense pair key stays below (#true ids) * (#pred ids) <= voxels^2, fine in int64 for images
    key = t_dense.ravel().astype(np.int64) * len(p_ids) + p_dense.ravel()
    keys, counts = np.unique(key, return_counts=True)
    t_index, p_index = np.divmod(keys, len(p_ids))
    return t_ids[t_index].astype(np.uint64), p_ids[p_index].astype(np.uint64), counts.astype(np.int64)


def _sizes_from(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, np.bincount(inverse.ravel(), weights=counts, minlength=len(unique)).astype(np.int64)


def _size_lookup(
    given: tuple[np.ndarray, np.ndarray] | None, ids: np.ndarray, counts: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Object ids (> 0, size > 0, sorted) and sizes; checked against the overlaps they must contain."""
    table_ids, table_sums = _sizes_from(ids, counts)
    if given is None:
        object_ids, sizes = table_ids, table_sums
    else:
        object_ids = np.asarray(given[0], dtype=np.uint64).ravel()
        sizes = np.asarray(given[1], dtype=np.int64).ravel()
        if object_ids.shape != sizes.shape:
            raise ValueError(f"{name}: {object_ids.size} ids but {sizes.size} sizes; give one size per id")
        object_ids, sizes = _sizes_from(object_ids, sizes)  # duplicates (e.g. LUT-merged) add up
        if len(object_ids) == 0:  # keeps the lookups below in bounds
            object_ids, sizes = np.zeros(1, np.uint64), np.zeros(1, np.int64)
        position = np.minimum(np.searchsorted(object_ids, table_ids), len(object_ids) - 1)
        known = object_ids[position] == table_ids
        nonzero = table_ids != 0
        if np.any(nonzero & ~known):
            missing = table_ids[nonzero & ~known][:5].tolist()
            raise ValueError(f"{name}: ids {missing} occur in the overlaps but have no size")
        short = nonzero & known & (sizes[position] < table_sums)
        if np.any(short):
            bad = int(np.flatnonzero(short)[0])
            raise ValueError(
                f"{name}: id {int(table_ids[bad])} has size {int(sizes[position[bad]])} but overlaps "
                f"{int(table_sums[bad])} voxels; a size must be at least the object's overlaps"
            )
    keep = (object_ids != 0) & (sizes > 0)
    return object_ids[keep], sizes[keep]


def _pair_scores(criterion: str, counts: np.ndarray, true_size: np.ndarray, pred_size: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64)
    if criterion == "iou":
        return counts / (true_size + pred_size - counts)
    if criterion == "iot":
        return counts / true_size
    return counts / pred_size


def foreground_iou_from_overlaps(
    true_ids: np.ndarray,
    pred_ids: np.ndarray,
    counts: np.ndarray,
    true_foreground: int | None = None,
    pred_foreground: int | None = None,
) -> float:
    """IoU of the two foregrounds (label > 0) from an overlap table.

    ``true_foreground`` / ``pred_foreground`` are the foreground voxel counts;
    ``None`` takes them from the table (right when it covers every voxel).
    Two empty foregrounds agree perfectly: 1.0.
    """
    t = np.asarray(true_ids).ravel()
    p = np.asarray(pred_ids).ravel()
    c = np.asarray(counts, dtype=np.int64).ravel()
    both = int(c[(t != 0) & (p != 0)].sum())
    true_fg = int(c[t != 0].sum()) if true_foreground is None else int(true_foreground)
    pred_fg = int(c[p != 0].sum()) if pred_foreground is None else int(pred_foreground)
    union = true_fg + pred_fg - both
    return both / union if union > 0 else 1.0


def foreground_iou(truth: np.ndarray, prediction: np.ndarray) -> float:
    """IoU of ``truth > 0`` and ``prediction > 0`` (1.0 when both are empty).

    Examples
    --------
    >>> foreground_iou(np.array([1, 1, 0, 0]), np.array([0, 2, 3, 0]))
    0.3333333333333333
    """
    return foreground_iou_from_overlaps(*overlap_table(truth, prediction))
