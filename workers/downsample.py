"""Downsampling by integer factors: mean for intensities, mode for labels.

Each output voxel summarises one window of ``factor`` input voxels. Along an
axis whose length is not a multiple of its factor, the last window is
partial and summarises only the voxels that exist (no padding value leaks
into the result). Windows start at index 0, so downsampling a block whose
start is a multiple of the factor gives exactly the matching part of the
whole-volume result: that is what lets the pyramid be written blockwise.

Factors apply to the *last* ``len(factor)`` axes; leading (channel) axes are
kept as they are.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np


def check_factor(factor: Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    """Validate a downsampling factor and return it as a tuple of ints.

    Raises
    ------
    ValueError
        If a value is not a positive integer, or there are more factors than axes.

    Examples
    --------
    >>> check_factor([1, 2, 2])
    (1, 2, 2)
    """
    values = tuple(factor)
    if not values:
        raise ValueError("downsampling factor is empty; give one positive integer per spatial axis")
    for value in values:
        if isinstance(value, bool) or not float(value).is_integer() or value < 1:
            raise ValueError(f"downsampling factor {list(values)} must hold positive integers (1 keeps an axis)")
    if ndim is not None and len(values) > ndim:
        raise ValueError(f"downsampling factor {list(values)} has {len(values)} values but the array only {ndim} axes")
    return tuple(int(v) for v in values)


def downsampled_shape(shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    """Shape after downsampling: ``ceil(shape / factor)`` on the last axes.

    Examples
    --------
    >>> downsampled_shape((3, 5, 10, 9), (1, 2, 2))
    (3, 5, 5, 5)
    """
    factor = check_factor(factor, len(shape))
    lead = len(shape) - len(factor)
    return tuple(shape[:lead]) + tuple(-(-s // f) for s, f in zip(shape[lead:], factor))


def _windowed(array: np.ndarray, factor: tuple[int, ...]) -> np.ndarray:
    """An array whose trailing axes are multiples of ``factor`` as (window voxel, ..., window index...).

    The voxels of a window go first so that each of them is one contiguous
    array, which is what the reducers below iterate over.
    """
    lead = array.ndim - len(factor)
    shape = list(array.shape[:lead])
    for size, f in zip(array.shape[lead:], factor):
        shape += [size // f, f]
    split = array.reshape(shape)
    # move the within-window axes (every second trailing axis) to the end
    outer = list(range(lead)) + [lead + 2 * i for i in range(len(factor))]
    inner = [lead + 2 * i + 1 for i in range(len(factor))]
    moved = split.transpose(inner + outer)
    return moved.reshape((-1,) + moved.shape[len(factor):])


def _by_region(
    array: np.ndarray, factor: tuple[int, ...], reduce: Callable[[np.ndarray], np.ndarray], dtype: np.dtype
) -> np.ndarray:
    """Apply ``reduce`` over windows, treating the partial windows at the far ends separately.

    Splitting each axis into its whole windows and its (at most one) partial
    window gives up to ``2 ** ndim`` regions, each made of windows of one
    shape, so ``reduce`` never sees padding.
    """
    lead = array.ndim - len(factor)
    out = np.empty(downsampled_shape(array.shape, factor), dtype=dtype)
    pieces = []
    for size, f in zip(array.shape[lead:], factor):
        whole = size // f
        axis_pieces = []
        if whole:
            axis_pieces.append((slice(0, whole * f), slice(0, whole), f))
        if size % f:
            axis_pieces.append((slice(whole * f, size), slice(whole, whole + 1), size % f))
        pieces.append(axis_pieces)
    keep = (slice(None),) * lead
    for combination in itertools.product(*pieces):
        source = keep + tuple(p[0] for p in combination)
        target = keep + tuple(p[1] for p in combination)
        window = tuple(p[2] for p in combination)
        out[target] = reduce(_windowed(array[source], window))
    return out


def _mean(windows: np.ndarray) -> np.ndarray:
    return windows.mean(axis=0, dtype=np.float64)


def downsample_mean(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over windows of ``factor`` voxels, for intensities and affinities.

    The mean is taken in float64. Floating-point input keeps its dtype;
    integer input is rounded to the nearest integer (half to even), so a
    uint8 raw volume stays uint8.

    Parameters
    ----------
    array : ndarray
        Numeric array; ``factor`` applies to its last ``len(factor)`` axes.
    factor : sequence of int
        Window size per axis (1 keeps the axis).

    Returns
    -------
    ndarray
        Shape ``ceil(shape / factor)`` on the downsampled axes, same dtype.

    Examples
    --------
    >>> downsample_mean(np.array([[0, 2, 4], [2, 4, 7]], np.uint8), (2, 2))
    array([[2, 6]], dtype=uint8)
    """
    array = np.asarray(array)
    factor = check_factor(factor, array.ndim)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"mean downsampling needs an integer or floating-point array, got dtype {array.dtype}")
    means = _by_region(array, factor, _mean, np.dtype(np.float64))
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.rint(means), info.min, info.max).astype(array.dtype)
    return means.astype(array.dtype)


# up to this many voxels per window, counting by pairwise comparison beats sorting
_PAIRWISE_MODE_MAX = 16


def _mode(windows: np.ndarray) -> np.ndarray:
    """Most frequent value of each window (first axis); ties go to the smallest value."""
    n = windows.shape[0]
    if n > _PAIRWISE_MODE_MAX:
        return _mode_by_sorting(np.moveaxis(windows, 0, -1))
    best = windows[0].copy()
    best_count = np.zeros(best.shape, np.int32)
    for j in range(n):
        count = np.zeros(best.shape, np.int32)
        for k in range(n):
            count += windows[k] == windows[j]
        better = (count > best_count) | ((count == best_count) & (windows[j] < best))
        np.copyto(best, windows[j], where=better)
        np.copyto(best_count, count, where=better)
    return best


def _mode_by_sorting(windows: np.ndarray) -> np.ndarray:
    """:func:`_mode` over the last axis, for large windows: sort, then find the longest run."""
    values = np.sort(windows, axis=-1)
    n = values.shape[-1]
    index = np.arange(n)
    different = values[..., 1:] != values[..., :-1]
    true = np.ones(values.shape[:-1] + (1,), bool)
    starts = np.concatenate([true, different], axis=-1)
    ends = np.concatenate([different, true], axis=-1)
    # first and last position of the run each sorted value belongs to
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, index, n), axis=-1), axis=-1), axis=-1)
    counts = last - first + 1
    # argmax returns the first maximum: in sorted order that is the smallest value
    best = np.argmax(counts, axis=-1)
    return np.take_along_axis(values, best[..., None], axis=-1)[..., 0]


def downsample_mode(labels: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Most frequent label over windows of ``factor`` voxels.

    Every output value occurs in its window, so no label appears that is not
    in the input. Ties go to the smallest label (background 0 included), which
    keeps the result independent of voxel order.

    Parameters
    ----------
    labels : ndarray
        Integer labels; ``factor`` applies to the last ``len(factor)`` axes.
    factor : sequence of int
        Window size per axis (1 keeps the axis).

    Returns
    -------
    ndarray
        Shape ``ceil(shape / factor)`` on the downsampled axes, same dtype.

    Examples
    --------
    >>> downsample_mode(np.array([[5, 5, 1, 2], [3, 5, 2, 1]], np.uint64), (2, 2))
    array([[5, 1]], dtype=uint64)
    """
    labels = np.asarray(labels)
    factor = check_factor(factor, labels.ndim)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"mode downsampling needs integer labels, got dtype {labels.dtype}")
    return _by_region(labels, factor, _mode, labels.dtype)


def pyramid_factors(voxel_size: Sequence[int], levels: int, factor: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Per-level factors (each relative to the level above) for ``levels`` levels below level 0.

    With ``factor`` given, every level uses it. Without, each level halves
    the axes whose voxel size is below twice the smallest one at that level,
    which makes anisotropic data (e.g. 40 x 8 x 8 nm) more isotropic before
    the coarse axis is touched.

    Examples
    --------
    >>> pyramid_factors((40, 8, 8), 3)
    [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    >>> pyramid_factors((20, 10, 10), 2, factor=(1, 2, 2))
    [(1, 2, 2), (1, 2, 2)]
    """
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise ValueError(f"levels must be a positive integer (the number of levels below level 0), got {levels!r}")
    if factor is not None:
        chosen = check_factor(factor)
        if len(chosen) != len(voxel_size):
            raise ValueError(f"downsampling factor {list(chosen)} needs one value per axis of voxel size {list(voxel_size)}")
        return [chosen] * int(levels)
    current = [int(v) for v in voxel_size]
    factors = []
    for _ in range(int(levels)):
        smallest = min(current)
        step = tuple(2 if v < 2 * smallest else 1 for v in current)
        factors.append(step)
        current = [v * s for v, s in zip(current, step)]
    return factors


def cumulative_factors(factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Each level's total factor relative to level 0 (level 0 itself first).

    Examples
    --------
    >>> cumulative_factors([(1, 2, 2), (2, 2, 2)])
    [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    """
    if not factors:
        return []
    total = (1,) * len(factors[0])
    out = [total]
    for step in factors:
        total = tuple(t * s for t, s in zip(total, step))
        out.append(total)
    return out


def pyramid(array: np.ndarray, factors: Sequence[Sequence[int]], method: str) -> list[np.ndarray]:
    """Level 0 and each coarser level, each computed from the level above it.

    Parameters
    ----------
    array : ndarray
        Level 0.
    factors : sequence of sequence of int
        Per-level factors (as from :func:`pyramid_factors`).
    method : {"mean", "mode"}
        ``mean`` for intensities and affinities, ``mode`` for labels.

    Examples
    --------
    >>> [level.shape for level in pyramid(np.zeros((4, 8, 8)), [(1, 2, 2), (2, 2, 2)], "mean")]
    [(4, 8, 8), (4, 4, 4), (2, 2, 2)]
    """
    reducers = {"mean": downsample_mean, "mode": downsample_mode}
    if method not in reducers:
        raise ValueError(f"unknown downsampling method {method!r}; expected 'mean' or 'mode'")
    levels = [np.asarray(array)]
    for step in factors:
        levels.append(reducers[method](levels[-1], step))
    return levels
