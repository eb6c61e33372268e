"""Ridges between touching instances, and the label checks of the weight maps.

deepflash2 turns the voxels at which two instances touch into background
"ridges", so that a U-Net learns to separate them: :func:`ridge_mask` finds
them, :func:`class_labels_with_ridges` makes the class labels.

Examples
--------
>>> import numpy as np
>>> ridge_mask(np.array([[1, 1, 2, 2, 0, 3]])).astype(int).tolist()
[[0, 1, 1, 0, 0, 0]]
"""

from __future__ import annotations

import fastremap
import numpy as np
from scipy import ndimage as ndi


def _check_labels(labels: np.ndarray, ndims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim not in ndims:
        raise ValueError(f"labels must have {' or '.join(map(str, ndims))} dimensions, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 is background), got minimum {labels.min()}")
    return labels


def ridge_mask(labels: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Return the instance voxels that touch another instance, boolean.

    A voxel is ridge when it belongs to an instance and a voxel of a
    *different instance* (not background) is among its neighbours. Both
    sides of an interface become ridge, as deepflash2 draws them: each
    instance, dilated by one voxel, cuts into its neighbour.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 is background.
    connectivity : int, optional
        Neighbourhood as in ``scipy.ndimage.generate_binary_structure``; the
        default, full connectivity (8 in 2D, 26 in 3D), guarantees that what
        is left of two instances never touches, even diagonally.

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 2, 0, 3]])
    >>> ridge_mask(labels).astype(int).tolist()
    [[0, 1, 1, 0, 0, 0]]
    """
    labels = _check_labels(labels)
    connectivity = labels.ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= labels.ndim:
        raise ValueError(f"connectivity must lie in [1, {labels.ndim}], got {connectivity!r}")
    footprint = ndi.generate_binary_structure(labels.ndim, connectivity)
    # A larger instance nearby raises the max; a smaller one lowers the min
    # once background is lifted to the largest label, where it can never be
    # a smaller neighbour (lifting to the dtype's top would overflow inside
    # scipy's filters). mode="nearest" repeats only voxels already in the
    # neighbourhood, so the array's edge creates no ridge. Only equality
    # matters, so dense ids first: scipy's rank filters round uint64 ids
    # above 2**53.
    labels, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    highest = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
    lifted = np.where(labels == 0, labels.max(initial=0), labels).astype(labels.dtype)
    lowest = ndi.minimum_filter(lifted, footprint=footprint, mode="nearest")
    return (labels != 0) & ((highest != labels) | (lowest != labels))


def class_labels_with_ridges(labels: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Instance labels -> class labels (uint8, 1 = foreground) with ridges as 0.

    Examples
    --------
    >>> labels = np.zeros((3, 6), np.uint16)
    >>> labels[:, 1:3], labels[:, 3:5] = 7, 9
    >>> class_labels_with_ridges(labels)[1].tolist()
    [0, 1, 0, 0, 1, 0]
    """
    labels = _check_labels(labels)
    return ((labels != 0) & ~ridge_mask(labels, connectivity)).astype(np.uint8)


def _remove_ridges(labels: np.ndarray, connectivity: int | None) -> np.ndarray:
    return np.where(ridge_mask(labels, connectivity), 0, labels).astype(labels.dtype)
