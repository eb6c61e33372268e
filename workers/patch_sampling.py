"""Drawing training-patch centres, foreground ``1 / fbr`` times as likely as background.

:func:`sampling_pdf` gives the probability of each cell of a (coarse) grid;
:func:`random_center` draws voxels from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from workers.ridges import _check_labels


def sampling_pdf(
    class_labels: np.ndarray, fbr: float = 0.1, ignore: np.ndarray | None = None, scale: int | None = 512
) -> np.ndarray:
    """Probability of drawing a patch centre in each cell of a (coarse) grid.

    Foreground voxels (label > 0) weigh 1, background ``fbr``, ignored
    voxels 0. When the largest axis exceeds ``scale`` the probabilities are
    summed over cells of a grid whose largest axis is ``scale`` (aspect
    ratio kept), which keeps the table small for big images without losing
    the mass of small objects, as interpolation would.

    Parameters
    ----------
    class_labels : ndarray of int
        Class labels (e.g. from :func:`class_labels_with_ridges`), any dimension.
    fbr : float
        Foreground/background ratio, in ``[0, 1]``.
    ignore : ndarray of bool, optional
        Voxels never to sample.
    scale : int, optional
        Largest grid axis; ``None`` keeps full resolution.

    Returns
    -------
    ndarray of float64
        Sums to 1; its shape is the grid's. Pass it to :func:`random_center`.

    Raises
    ------
    ValueError
        If every voxel has probability 0.

    Examples
    --------
    >>> pdf = sampling_pdf(np.array([[1, 0], [0, 0]]), fbr=0.5)
    >>> pdf.tolist()
    [[0.4, 0.2], [0.2, 0.2]]
    """
    labels = _check_labels(class_labels, ndims=tuple(range(1, 33)))
    if not 0 <= fbr <= 1:
        raise ValueError(f"fbr must lie in [0, 1], got {fbr!r}")
    weights = np.where(labels > 0, 1.0, float(fbr))
    if ignore is not None:
        weights[np.broadcast_to(np.asarray(ignore, bool), weights.shape)] = 0.0
    mass = _sum_over_cells(weights, _grid_shape(weights.shape, scale))
    total = mass.sum()
    if not total > 0:
        raise ValueError("nothing to sample: every voxel is ignored or has weight 0")
    return mass / total


def _grid_shape(shape: tuple[int, ...], scale: int | None) -> tuple[int, ...]:
    largest = max(shape)
    if scale is None or largest <= scale:
        return tuple(shape)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale!r}")
    return tuple(max(1, (n * scale + largest // 2) // largest) for n in shape)


def _cell_starts(length: int, cells: int) -> np.ndarray:
    # Cell c covers [c * length // cells, (c + 1) * length // cells): strictly
    # increasing starts whenever cells <= length.
    return (np.arange(cells) * length) // cells


def _sum_over_cells(weights: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    for axis, (length, cells) in enumerate(zip(weights.shape, grid)):
        if cells != length:
            weights = np.add.reduceat(weights, _cell_starts(length, cells), axis=axis)
    return weights


def random_center(
    pdf: np.ndarray, shape: Sequence[int], rng: np.random.Generator, size: int | None = None
) -> tuple[int, ...] | np.ndarray:
    """Draw patch centres from a :func:`sampling_pdf`.

    A grid cell is drawn with its probability, then a voxel uniformly within
    the cell's footprint in the original array (at full resolution, the cell
    is the voxel).

    Parameters
    ----------
    pdf : ndarray
        From :func:`sampling_pdf` for an array of shape ``shape``.
    shape : sequence of int
        Shape of the labels the PDF was made from.
    rng : numpy.random.Generator
        The only source of randomness: the same seed gives the same centres.
    size : int, optional
        Number of centres; one when omitted.

    Returns
    -------
    tuple of int, or ndarray of int64 of shape ``(size, ndim)``

    Examples
    --------
    >>> pdf = sampling_pdf(np.array([[0, 0, 1]]), fbr=0.0)
    >>> random_center(pdf, (1, 3), np.random.default_rng(0))
    (0, 2)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    pdf = np.asarray(pdf, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if pdf.ndim != len(shape) or any(g > n for g, n in zip(pdf.shape, shape)):
        raise ValueError(f"a pdf of shape {pdf.shape} cannot come from labels of shape {shape}")
    count = 1 if size is None else int(size)
    cdf = np.cumsum(pdf.ravel())
    # Drawing below cdf[-1] (not 1) keeps rounding from picking past the end;
    # side="right" never lands on a cell of zero probability.
    cells = np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right")
    cells = np.minimum(cells, cdf.size - 1)
    centers = np.empty((count, len(shape)), np.int64)
    for axis, (cell, length, n_cells) in enumerate(zip(np.unravel_index(cells, pdf.shape), shape, pdf.shape)):
        start = (cell * length) // n_cells
        stop = ((cell + 1) * length) // n_cells
        offset = np.floor(rng.random(count) * (stop - start)).astype(np.int64)
        centers[:, axis] = np.minimum(start + offset, stop - 1)
    return tuple(int(c) for c in centers[0]) if size is None else centers
