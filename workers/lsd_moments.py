"""The window moments of one object, from which its local shape descriptors follow.

:mod:`workers.lsds` computes the descriptors object by object, each inside
its bounding box: :func:`_one_object` takes the Gaussian-window moments of
the displacement (separable 1D passes as banded matrix products, see
:class:`_AxisFilter` and :func:`_moment_kernels`) and turns them into the
channels (:func:`_descriptors`).
"""

from __future__ import annotations

import numpy as np

from workers.lsd_checks import num_channels


# The oracle (lsd-lite) truncates its Gaussians at 3 sigma; so do we.
TRUNCATE = 3.0

# Variances are floored at this many nm^2 before normalising, as the oracle
# does, so a flat (one-voxel-thick) window gives a finite Pearson.
MIN_VARIANCE = 1e-3

# Voxels per slab in the passes after the first (see _window_moments): a
# slab's moments take about ten times this many float64s.
_SLAB_VOXELS = 1 << 20


def _one_object(
    compact: np.ndarray,
    sub_compact: np.ndarray,
    label: int,
    box: tuple[slice, ...],
    downsample: int,
    filters: list[_AxisFilter],
    sigma_nm: tuple[float, ...],
    channels: list[int],
    out: np.ndarray,
) -> None:
    """Write the descriptors of object ``label`` (bounding box ``box``) into ``out``."""
    voxels = np.nonzero(compact[box] == label)
    voxels = tuple(v + s.start for v, s in zip(voxels, box))

    # Downsampled cells covering the box: the object's downsampled voxels
    # and the first voxel of every cell one of its voxels falls into.
    sub_box = tuple(slice(s.start // downsample, (s.stop - 1) // downsample + 1) for s in box)
    mask = (sub_compact[sub_box] == label).astype(np.float64)
    points = tuple(v // downsample - s.start for v, s in zip(voxels, sub_box))
    cell_of_voxel = None
    if downsample > 1:
        # up to downsample**ndim voxels share a cell: compute each cell once
        # (numbering the cells through a dense array avoids sorting)
        cell_number = np.full(mask.shape, -1, dtype=np.intp)
        cell_number[points] = 0
        cells = np.nonzero(cell_number == 0)
        cell_number[cells] = np.arange(cells[0].size)
        cell_of_voxel = cell_number[points]
        points = cells

    descriptors = _descriptors(_window_moments(mask, filters, points), sigma_nm, channels)
    if cell_of_voxel is not None:
        descriptors = descriptors[:, cell_of_voxel]
    # one flat index per voxel scatters faster than ndim index arrays
    out.reshape(out.shape[0], -1)[:, np.ravel_multi_index(voxels, out.shape[1:])] = descriptors


def _window_moments(
    mask: np.ndarray, filters: list[_AxisFilter], points: tuple[np.ndarray, ...]
) -> dict[tuple[int, ...], np.ndarray]:
    """Gaussian-weighted displacement moments of ``mask`` at ``points``.

    ``moments[(a, b, c)][i]`` is the sum over mask voxels ``q`` of
    ``g(q - p) * dz**a * dy**b * dx**c`` with ``d = q - p`` in nm and ``p``
    the i-th point (``points`` in C order, as ``np.nonzero`` gives them).
    The Gaussian is separable, so a moment is one 1D pass per axis, and
    passes are shared: axis 0 splits the mask into orders 0..k, axis 1
    splits each of those into the orders still allowed, and so on.

    Passes after the first never mix along axis 0, so they run on slabs of
    axis 0 and keep only the values at the slab's points: memory stays a
    few copies of the box, however many moments there are. The last pass
    runs only on the lines that hold points.
    """
    ndim = mask.ndim
    max_order = filters[0].max_order
    first = filters[0](mask, axis=0, orders=max_order + 1)
    plane = int(np.prod(mask.shape[1:]))
    thickness = max(1, _SLAB_VOXELS // max(plane, 1))
    moments: dict[tuple[int, ...], list[np.ndarray]] = {}
    for start in range(0, mask.shape[0], thickness):
        stop = min(start + thickness, mask.shape[0])
        lo, hi = np.searchsorted(points[0], [start, stop])
        if lo == hi:
            continue
        slab_points = (points[0][lo:hi] - start,) + tuple(p[lo:hi] for p in points[1:])
        partial = {(order,): first[order, start:stop] for order in range(max_order + 1)}
        for axis in range(1, ndim - 1):
            partial = {
                exponents + (order,): filtered
                for exponents, array in partial.items()
                for order, filtered in enumerate(filters[axis](array, axis, max_order - sum(exponents) + 1))
            }
        for exponents, values in _last_pass(partial, filters[-1], slab_points, max_order).items():
            moments.setdefault(exponents, []).append(values)
    return {exponents: np.concatenate(parts) for exponents, parts in moments.items()}


def _last_pass(
    partial: dict[tuple[int, ...], np.ndarray],
    last_filter: _AxisFilter,
    points: tuple[np.ndarray, ...],
    max_order: int,
) -> dict[tuple[int, ...], np.ndarray]:
    """Filter along the last axis, only on the lines through ``points``.

    ``partial`` holds arrays already filtered along the other axes, keyed by
    their exponents; the result holds the finished moments at ``points``.
    """
    shape = next(iter(partial.values())).shape
    # points come in C order, so the line index is sorted: unique by diff
    line = np.ravel_multi_index(points[:-1], shape[:-1])
    new_line = np.concatenate(([True], line[1:] != line[:-1]))
    lines = line[new_line]
    which = np.cumsum(new_line) - 1
    moments = {}
    for exponents, array in partial.items():
        # lines as columns: the filter is fastest along the first axis
        columns = array.reshape(-1, shape[-1])[lines].T
        filtered = last_filter(columns, 0, max_order - sum(exponents) + 1)
        for order in range(filtered.shape[0]):
            moments[exponents + (order,)] = filtered[order, points[-1], which]
    return moments


class _AxisFilter:
    """The moment kernels of one axis, applied along an axis as matrix products.

    A 1D correlation with zeros beyond the array is a product with a banded
    Toeplitz matrix; BLAS runs those several times faster than a tap-by-tap
    loop (``ndimage.correlate1d``), even counting the zeros it multiplies.
    The axis is cut into chunks of output rows; each chunk multiplies the
    ``chunk + 2 * radius`` input rows it reads by the same band block, so
    few zeros are multiplied and no matrix grows with the axis.

    Parameters
    ----------
    kernels : ndarray, shape (orders, 2 * radius + 1)
        ``kernels[k, radius + j]`` weighs the input ``j`` voxels after the
        output voxel, as in :func:`_moment_kernels`.

    Examples
    --------
    >>> from scipy import ndimage
    >>> kernels = np.stack(_moment_kernels(1.5, 4.0, 2))
    >>> array = np.random.default_rng(0).random((300, 5))
    >>> filtered = _AxisFilter(kernels)(array, axis=0, orders=3)
    >>> expected = ndimage.correlate1d(array, kernels[2], axis=0, mode="constant")
    >>> bool(np.allclose(filtered[2], expected))
    True
    """

    # Output rows per product: small chunks multiply fewer zeros, but below
    # ~32 rows BLAS loses efficiency.
    chunk = 32

    def __init__(self, kernels: np.ndarray) -> None:
        self.max_order = kernels.shape[0] - 1
        self.radius = kernels.shape[1] // 2
        # band[k, i, j] = kernels[k, j - i] on the band, so row i of a chunk
        # (output start + i) reads input row start - radius + j.
        width = self.chunk + 2 * self.radius
        tap = np.arange(width)[None, :] - np.arange(self.chunk)[:, None]
        on_band = (tap >= 0) & (tap <= 2 * self.radius)
        self.band = np.where(on_band, kernels[:, np.clip(tap, 0, 2 * self.radius)], 0.0)

    def __call__(self, array: np.ndarray, axis: int, orders: int) -> np.ndarray:
        """``(orders,) + array.shape``: ``array`` correlated with kernels ``0..orders-1``.

        The products take ``axis`` as rows and the axes after it as columns;
        BLAS wants many columns, so ``axis`` should not be the last one.
        """
        array = np.ascontiguousarray(array)
        length = array.shape[axis]
        before = int(np.prod(array.shape[:axis]))
        out = np.empty((orders,) + array.shape)
        cols = array.reshape(before, length, -1)
        out_cols = out.reshape(orders, before, length, cols.shape[2])
        for start in range(0, length, self.chunk):
            stop = min(start + self.chunk, length)
            # input rows beyond the array are zeros: leave them out
            lo, hi = max(0, start - self.radius), min(length, stop + self.radius)
            block = self.band[:, : stop - start, lo - start + self.radius : hi - start + self.radius]
            for order in range(orders):
                np.matmul(block[order], cols[:, lo:hi], out=out_cols[order, :, start:stop])
        return out


def _descriptors(
    moments: dict[tuple[int, ...], np.ndarray], sigma_nm: tuple[float, ...], channels: list[int]
) -> np.ndarray:
    """The requested channels (rows) from window moments, float32 in [0, 1]."""
    ndim = len(sigma_nm)
    unit = [tuple(int(a == d) for a in range(ndim)) for d in range(ndim)]
    mass = moments[(0,) * ndim]
    # No own voxel in the window (only possible when downsampling): report
    # no offset, floored variance, no correlation, size 0.
    empty = mass == 0
    safe_mass = np.where(empty, 1.0, mass)

    max_order = max(sum(exponents) for exponents in moments)
    rows: dict[int, np.ndarray] = {_size_channel(ndim): mass}
    if max_order >= 1:
        mean = [moments[unit[d]] / safe_mass for d in range(ndim)]
        for d in range(ndim):
            rows[d] = mean[d] / sigma_nm[d] * 0.5 + 0.5
    if max_order >= 2:

        def covariance(i: int, j: int) -> np.ndarray:
            exponents = tuple(a + b for a, b in zip(unit[i], unit[j]))
            return moments[exponents] / safe_mass - mean[i] * mean[j]

        variance = [np.maximum(covariance(d, d), MIN_VARIANCE) for d in range(ndim)]
        for d in range(ndim):
            rows[ndim + d] = variance[d] / sigma_nm[d] ** 2
        for k, (i, j) in enumerate(_pairs(ndim)):
            rows[2 * ndim + k] = covariance(i, j) / (2 * np.sqrt(variance[i] * variance[j])) + 0.5

    stacked = np.stack([rows[c] for c in channels]).astype(np.float32)
    return np.clip(stacked, 0.0, 1.0, out=stacked)


# --------------------------------------------------------------------------
# kernels


def _radius(sigma_voxels: float) -> int:
    """Half-width in voxels of the truncated Gaussian, as scipy rounds it."""
    return int(TRUNCATE * sigma_voxels + 0.5)


def _moment_kernels(sigma_voxels: float, step_nm: float, max_order: int) -> list[np.ndarray]:
    """1D kernels ``g(k) * (k * step_nm)**order`` for ``order = 0..max_order``.

    ``g`` is scipy's normalised Gaussian truncated at ``TRUNCATE`` sigma, so
    the order-0 kernel is exactly what ``gaussian_filter`` uses; ``k`` runs
    from ``-radius`` to ``radius`` and, with ``correlate1d``, is the offset
    of the input voxel from the output voxel.

    Examples
    --------
    >>> [k.round(3).tolist() for k in _moment_kernels(0.4, 10.0, 1)]
    [[0.04, 0.919, 0.04], [-0.404, 0.0, 0.404]]
    """
    radius = _radius(sigma_voxels)
    steps = np.arange(-radius, radius + 1, dtype=np.float64)
    gaussian = np.exp(-0.5 / sigma_voxels**2 * steps**2)
    gaussian /= gaussian.sum()
    displacement = steps * step_nm
    return [gaussian * displacement**order for order in range(max_order + 1)]


def _max_order(channels: list[int], ndim: int) -> int:
    """Highest moment order the requested channels need (size 0, offset 1, rest 2)."""
    orders = [0 if c == _size_channel(ndim) else 1 if c < ndim else 2 for c in channels]
    return max(orders)


def _size_channel(ndim: int) -> int:
    return num_channels(ndim) - 1


def _pairs(ndim: int) -> list[tuple[int, int]]:
    """Axis pairs of the Pearson channels, in the oracle's (paper's) order."""
    return [(i, j) for i in range(ndim) for j in range(i + 1, ndim)]
