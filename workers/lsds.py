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

from collections.abc import Sequence

import fastremap
import numpy as np
from scipy import ndimage

from workers.lsd_checks import (  # noqa: F401
    ComponentsLike,
    SigmaLike,
    _check_downsample,
    _check_labels,
    _check_ndim,
    _is_sequence,
    _parse_components,
    _per_axis,
    num_channels,
)
from workers.lsd_moments import (  # noqa: F401
    _SLAB_VOXELS,
    MIN_VARIANCE,
    TRUNCATE,
    _AxisFilter,
    _descriptors,
    _last_pass,
    _max_order,
    _moment_kernels,
    _one_object,
    _pairs,
    _radius,
    _size_channel,
    _window_moments,
)


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
