"""Local shape descriptors (LSDs) of a label volume, on one block.

For every voxel of an object, LSDs summarise the part of that object seen
through a Gaussian window (``sigma`` in nm) centred on the voxel: the offset
to the window's centre of mass, the covariance of the object's voxels in the
window (variances and Pearson correlations) and its Gaussian-weighted size.
They follow lsd-lite's ``get_lsds`` (Sheridan et al., Nature Methods 2022):
same channels, order, normalisation and clipping, Gaussian truncated at
3 sigma with zeros beyond the array.

Channels, each in [0, 1] and float32 (3D: 10, 2D: 6)::

    3D  0-2 mean offset (z, y, x)   offset / sigma * 0.5 + 0.5
        3-5 variance (z, y, x)      variance / sigma**2
        6-8 pearson (zy, zx, yx)    pearson * 0.5 + 0.5
        9   size                    Gaussian-weighted fraction of the window
    2D  0-1 mean offset, 2-3 variance, 4 pearson (yx), 5 size

Background (label 0) is zero in every channel.

How it is fast: the window sums a voxel needs run over its own object only,
and that object lies inside its bounding box, so filtering the box alone
(zeros around it, exactly what the whole-volume filter sees there) gives
exactly the whole-volume sums. Each object costs its box, not the volume
(lsd-lite filters the whole volume once per label). The separable 1D
passes are banded matrix products (BLAS), shared between moments.

Why it is exact: moments are taken of the displacement from the output
voxel (kernels ``g(d) * d**k``), never of absolute coordinates, and summed
in float64. The result does not depend on where the array starts, so a
block gives the whole volume's numbers, and ``E[x**2] - E[x]**2`` does not
cancel. lsd-lite uses float32 absolute coordinates: its variance and
Pearson channels carry ~1e-5..1e-4 of rounding on ordinary volumes (and up
to 0.5 on one-voxel objects), which change if the input is padded.

Memory: about five float64 copies of the largest object's bounding box,
besides the float32 output. BLAS may use several threads; pin them
(``OPENBLAS_NUM_THREADS=1``) when a machine runs one worker per core.

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((16, 16), np.uint32)
>>> labels[4:12, 4:12] = 7                      # a square
>>> lsds = local_shape_descriptors(labels, sigma=4.0)
>>> lsds.shape, lsds.dtype
((6, 16, 16), dtype('float32'))
>>> float(lsds[4, 8, 8])                        # no yx correlation in a square
0.5
>>> float(lsds[:, 0, 0].max())                  # background stays zero
0.0
>>> lsd_context(sigma=60, voxel_size=(40, 10, 10))
(200, 180, 180)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Union

import fastremap
import numpy as np
from scipy import ndimage

# The oracle (lsd-lite) truncates its Gaussians at 3 sigma; so do we.
TRUNCATE = 3.0

# Variances are floored at this many nm^2 before normalising, as the oracle
# does, so a flat (one-voxel-thick) window gives a finite Pearson.
MIN_VARIANCE = 1e-3

# Voxels per slab in the passes after the first (see _window_moments): a
# slab's moments take about ten times this many float64s.
_SLAB_VOXELS = 1 << 20

SigmaLike = Union[float, Sequence[float]]
ComponentsLike = Union[str, Sequence[int], None]


def num_channels(ndim: int) -> int:
    """Number of LSD channels for ``ndim``-dimensional labels (2D: 6, 3D: 10).

    Examples
    --------
    >>> num_channels(3), num_channels(2)
    (10, 6)
    """
    _check_ndim(ndim)
    # offsets (n) + variances (n) + pearsons (n choose 2) + size (1)
    return 2 * ndim + ndim * (ndim - 1) // 2 + 1


def local_shape_descriptors(
    labels: np.ndarray,
    sigma: SigmaLike,
    voxel_size: Sequence[float] | None = None,
    downsample: int = 1,
    components: ComponentsLike = None,
) -> np.ndarray:
    """Local shape descriptors of every labelled voxel.

    Parameters
    ----------
    labels : ndarray of int, 2D or 3D
        Object ids; 0 is background. Non-negative integers (or bool).
    sigma : float or sequence of float
        Standard deviation of the Gaussian window in world units (nm), one
        for all axes or one per axis. The window is truncated at 3 sigma.
    voxel_size : sequence of float, optional
        Voxel size in nm per axis; defaults to 1 on every axis.
    downsample : int, optional
        Compute on ``labels[::downsample, ...]`` (every axis) and give each
        voxel the descriptor of the first voxel of its ``downsample**ndim``
        cell, computed for the voxel's own label, as lsd-lite does. Every
        axis of ``labels`` must be divisible by it. Defaults to 1.
    components : str or sequence of int, optional
        Channels to return, in ascending order: a string of channel digits
        (``"0129"``, as in the lsd package) or a sequence of ints. Only the
        moments these channels need are computed. Defaults to all.

    Returns
    -------
    ndarray of float32, shape ``(channels,) + labels.shape``
        Values in [0, 1]; zero on background.

    Raises
    ------
    ValueError
        On labels that are not 2D/3D, not integer or negative; a sigma or
        voxel size that is not positive; a bad ``downsample``; an unknown
        component.

    Notes
    -----
    Equals lsd-lite's ``get_lsds`` evaluated in float64 to within float32
    output rounding (~1e-7). The stock float32 lsd-lite agrees to ~1e-6 in
    the offset and size channels; in the variance and Pearson channels it
    is off by its own rounding (see the module notes). One deliberate
    difference: with ``downsample > 1`` a voxel whose label has no
    downsampled voxel within the window (an object smaller than the
    downsampling cell) gets mean offset 0.5 (no offset), where lsd-lite
    writes ``0.5 - coordinate / (2 sigma)``, a value that depends on where
    the array starts. The other channels agree (variance floor, Pearson
    0.5, size 0). A non-integer ``voxel_size`` is used as given; lsd-lite
    truncates it to an integer.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((9, 9, 9), np.uint8)
    >>> labels[2:7, 2:7, 2:7] = 1                   # a centred cube
    >>> lsds = local_shape_descriptors(labels, sigma=2.0, components="0129")
    >>> lsds.shape
    (4, 9, 9, 9)
    >>> [round(float(v), 3) for v in lsds[:, 4, 4, 4]]   # centred: offsets 0.5
    [0.5, 0.5, 0.5, 0.501]
    """
    labels = _check_labels(labels)
    ndim = labels.ndim
    sigma_nm = _per_axis(sigma, ndim, "sigma")
    voxel_nm = _per_axis(1.0 if voxel_size is None else voxel_size, ndim, "voxel_size")
    downsample = _check_downsample(downsample, labels.shape)
    channels = _parse_components(components, ndim)

    out = np.zeros((len(channels),) + labels.shape, dtype=np.float32)
    if labels.size == 0 or not labels.any():
        return out

    sub_voxel_nm = tuple(v * downsample for v in voxel_nm)
    max_order = _max_order(channels, ndim)
    filters = [_AxisFilter(np.stack(_moment_kernels(s / v, v, max_order))) for s, v in zip(sigma_nm, sub_voxel_nm)]

    # Compact ids so find_objects needs one slot per object, not per id.
    compact, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    # The downsampled grid keeps every downsample-th voxel from the origin.
    sub_compact = compact[(slice(None, None, downsample),) * ndim]
    for index, box in enumerate(ndimage.find_objects(compact)):
        if box is None:
            continue
        _one_object(compact, sub_compact, index + 1, box, downsample, filters, sigma_nm, channels, out)
    return out


def lsd_context(sigma: SigmaLike, voxel_size: Sequence[int], downsample: int = 1) -> tuple[int, ...]:
    """Context (nm per axis) a block needs for exact blockwise LSDs.

    A voxel's descriptor depends on the labels within the truncated Gaussian
    window around the first voxel of its downsampling cell, i.e. within
    ``radius * downsample`` voxels on either side, where ``radius`` is the
    window radius in downsampled voxels. Computing on the write ROI grown
    by this context (clipped to the volume) and cropping to the write ROI
    then equals the whole-volume result, provided the write ROI and the
    volume are whole numbers of ``downsample`` voxels along every axis (so
    the block's downsampled grid is the volume's).

    Parameters
    ----------
    sigma : float or sequence of float
        Gaussian sigma in nm, as for :func:`local_shape_descriptors`.
    voxel_size : sequence of int
        Voxel size in whole nm per axis.
    downsample : int, optional
        Downsampling factor, as for :func:`local_shape_descriptors`.

    Returns
    -------
    tuple of int
        Context in nm, a multiple of ``voxel_size * downsample`` per axis.

    Examples
    --------
    >>> lsd_context(80, (10, 10, 10))                 # 3 sigma = 24 voxels
    (240, 240, 240)
    >>> lsd_context(80, (10, 10, 10), downsample=2)   # 12 cells of 2 voxels
    (240, 240, 240)
    >>> lsd_context((60, 45), (10, 10))               # radius rounds to nearest
    (180, 140)
    """
    if not _is_sequence(voxel_size) or len(voxel_size) not in (2, 3):
        raise ValueError(f"voxel_size must have one value per axis (2 or 3), got {voxel_size!r}")
    voxel_nm = _per_axis(voxel_size, len(voxel_size), "voxel_size")
    if any(v != int(v) for v in voxel_nm):
        raise ValueError(f"voxel_size must be whole numbers of nm, got {tuple(voxel_size)}")
    sigma_nm = _per_axis(sigma, len(voxel_nm), "sigma")
    downsample = _check_downsample(downsample, (0,) * len(voxel_nm))
    return tuple(
        _radius(s / (v * downsample)) * downsample * int(v) for s, v in zip(sigma_nm, voxel_nm)
    )


# --------------------------------------------------------------------------
# one object


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


# --------------------------------------------------------------------------
# argument checks


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got {ndim}D")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    _check_ndim(labels.ndim)
    if labels.dtype == np.bool_:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got minimum {labels.min()}")
    return labels


def _is_sequence(value: object) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _per_axis(value: SigmaLike, ndim: int, name: str) -> tuple[float, ...]:
    """``value`` as one positive finite float per axis."""
    if _is_sequence(value):
        values = tuple(np.asarray(value, dtype=object).ravel())
        if len(values) != ndim:
            raise ValueError(f"{name} must have {ndim} values (one per axis), got {len(values)}")
    else:
        values = (value,) * ndim
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number or one number per axis, got {value!r}")
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return tuple(float(v) for v in values)


def _check_downsample(downsample: int, shape: tuple[int, ...]) -> int:
    if isinstance(downsample, (bool, np.bool_)) or not isinstance(downsample, numbers.Integral) or downsample < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    if any(s % downsample for s in shape):
        raise ValueError(f"labels shape {tuple(shape)} must be divisible by downsample {downsample} on every axis")
    return int(downsample)


def _parse_components(components: ComponentsLike, ndim: int) -> list[int]:
    """Channel indices from ``"0129"`` or ``[0, 1, 2, 9]``; all when None."""
    count = num_channels(ndim)
    if components is None:
        return list(range(count))
    if isinstance(components, str):
        if not components or not components.isdigit():
            raise ValueError(f"components must be a string of channel digits such as '012', got {components!r}")
        indices = [int(c) for c in components]
    else:
        items = list(components) if _is_sequence(components) else []
        if not items or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in items):
            raise ValueError(f"components must be channel indices such as [0, 1, 2], got {components!r}")
        indices = [int(c) for c in items]
    unknown = [c for c in indices if not 0 <= c < count]
    if unknown:
        raise ValueError(f"unknown component {unknown[0]}: {ndim}D labels have channels 0..{count - 1}")
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError(f"components must be in ascending order without repeats, got {components!r}")
    return indices
