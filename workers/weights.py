"""deepflash2 mask transforms: ridges, U-Net weight maps, sampling, LogConv.

From instance labels (0 is background) this module derives what a U-Net
needs to train on touching objects:

- :func:`class_labels_with_ridges`: foreground/background class labels where
  the voxels at which two instances touch become background "ridges", so the
  network learns to separate them.
- :func:`unet_weights`: the per-voxel loss weight of Ronneberger et al. as
  parameterised by deepflash2 (``bws``, ``fds``, ``bwf``, ``fbr``), from the
  distances ``d1`` and ``d2`` to the nearest and second-nearest instance.
  :func:`weights_context` gives the context a block needs for it.
- :func:`sampling_pdf` and :func:`random_center`: draw training-patch centres
  with foreground ``1 / fbr`` times as likely as background.
- :func:`logconv_distance`, :func:`logconv_instance_distances` and
  :func:`logconv_weights`: the fast convolutional distance transform
  (LogConv, Karam, Sugimoto and Hirakawa, IEEE SPL 26(6), 2019) that
  deepflash2 uses to compute weights on the fly; ``LogConv`` is the same as a
  ``torch.nn.Module`` for GPUs, defined only when first accessed so that
  importing this module never imports torch.

The weight of a voxel is ``1`` on the foreground and, on the background
(ridges included)::

    w = fbr + (1 - fbr) * exp(-d1**2 / (2 fds**2)) + bwf * exp(-(d1 + d2)**2 / (2 bws**2))

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((1, 9), np.uint8)
>>> labels[0, 0], labels[0, 4] = 1, 2
>>> w = unet_weights(labels, bws=2, fds=2, bwf=10, fbr=0.1)
>>> round(float(w[0, 2]), 4)      # d1 = d2 = 2: 0.1 + 0.9 e^-0.5 + 10 e^-2
1.9992
>>> float(w[0, 4])                # foreground
1.0
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi

from workers.channels import check_voxel_size as _check_voxel_size

#: LogConv defaults from deepflash2: ``exp(-36 / 0.35)`` is about 2e-45, the
#: smallest float32, so a 73-tap kernel is all that float32 can resolve.
LOGCONV_LAMBDA = 0.35
LOGCONV_KERNEL_SIZE = 73


# --------------------------------------------------------------------------
# validation


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


def _check_weight_parameters(bws: float, fds: float, bwf: float, fbr: float, tolerance: float) -> None:
    if not (bws > 0 and fds > 0):
        raise ValueError(f"bws and fds must be > 0, got bws={bws!r}, fds={fds!r}")
    if not bwf >= 0:
        raise ValueError(f"bwf must be >= 0, got {bwf!r}")
    if not 0 <= fbr <= 1:
        raise ValueError(f"fbr must lie in [0, 1], got {fbr!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")


# --------------------------------------------------------------------------
# ridges and class labels


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


# --------------------------------------------------------------------------
# exact U-Net weights


def weights_saturation_distance(
    bws: float = 10.0, fds: float = 10.0, bwf: float = 10.0, fbr: float = 0.1, tolerance: float = 1e-7
) -> float:
    """Distance beyond which the weight terms change the weight by < tolerance.

    The border term is below ``tolerance / 2`` once
    ``d1 + d2 > bws * sqrt(2 ln(2 bwf / tolerance))``, and the foreground
    term once ``d1 > fds * sqrt(2 ln(2 (1 - fbr) / tolerance))``. Saturating
    ``d1`` and ``d2`` at the larger radius ``R`` therefore moves no weight by
    more than ``tolerance``: where the true distance exceeds ``R`` both the
    true and the saturated term lie in ``[0, tolerance / 2]``.

    Examples
    --------
    >>> round(weights_saturation_distance(10, 10, 10, 0.1, 1e-7), 2)
    61.83
    """
    _check_weight_parameters(bws, fds, bwf, fbr, tolerance)
    radius = 0.0
    for factor, sigma in ((bwf, bws), (1.0 - fbr, fds)):
        if factor > tolerance / 2:
            radius = max(radius, sigma * math.sqrt(2.0 * math.log(2.0 * factor / tolerance)))
    # Both terms negligible everywhere: any positive radius keeps the bound.
    return radius if radius > 0 else 1e-12


def instance_distances(
    labels: np.ndarray, voxel_size: Sequence[float] | None = None, distance_clip: float | None = None
) -> np.ndarray:
    """Distances to the nearest and the second-nearest instance (exact EDT).

    For an instance voxel the nearest instance is its own (distance 0).
    Distances are Euclidean, between voxel centres, in world units when
    ``voxel_size`` is given, and saturate at ``distance_clip`` (``inf`` where
    fewer than two instances exist and there is no clip).

    With a clip, each instance's distance transform only covers its
    bounding box grown by the clip, since nothing farther can be below it;
    the cost is the sum of those boxes, not instances times volume.

    Returns
    -------
    ndarray of float64, shape ``(2, *labels.shape)``
        ``d1`` then ``d2``.

    Examples
    --------
    >>> d = instance_distances(np.array([[1, 0, 0, 2, 0]]))
    >>> d[0].tolist(), d[1].tolist()
    ([[0.0, 1.0, 1.0, 0.0, 1.0]], [[3.0, 2.0, 2.0, 3.0, 4.0]])
    """
    labels = _check_labels(labels)
    spacing = _check_voxel_size(voxel_size, labels.ndim)
    clip = None if distance_clip is None else float(distance_clip)
    if clip is not None and not clip > 0:
        raise ValueError(f"distance_clip must be > 0, got {distance_clip!r}")
    fill = np.inf if clip is None else clip
    nearest = np.full(labels.shape, fill)
    second = np.full(labels.shape, fill)
    compact, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    for index, box in enumerate(ndi.find_objects(compact), start=1):
        if box is None:
            continue
        crop = (slice(None),) * labels.ndim if clip is None else _grow(box, spacing, clip, labels.shape)
        distance = ndi.distance_transform_edt(compact[crop] != index, sampling=spacing)
        if clip is not None:
            np.minimum(distance, clip, out=distance)
        _keep_two_smallest(nearest[crop], second[crop], distance)
    return np.stack([nearest, second])


def _grow(box: tuple[slice, ...], spacing: tuple[float, ...], clip: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    # One voxel more than ceil(clip / size): voxels outside are strictly
    # farther than the clip from every voxel of the instance.
    reach = [math.ceil(clip / size) + 1 for size in spacing]
    return tuple(slice(max(s.start - r, 0), min(s.stop + r, n)) for s, r, n in zip(box, reach, shape))


def _keep_two_smallest(nearest: np.ndarray, second: np.ndarray, distance: np.ndarray) -> None:
    # In place on views: the second smallest must be updated before the
    # smallest, from the old smallest.
    np.minimum(second, np.maximum(nearest, distance), out=second)
    np.minimum(nearest, distance, out=nearest)


def _weights_formula(foreground, d1, d2, bws: float, fds: float, bwf: float, fbr: float, exp: Callable):
    # Written with arithmetic only so that numpy arrays and torch tensors
    # share it; `foreground` is 0/1, so the blend is exact, not approximate.
    background = fbr + (1.0 - fbr) * exp(-(d1**2) / (2.0 * fds**2)) + bwf * exp(-((d1 + d2) ** 2) / (2.0 * bws**2))
    return foreground + (1.0 - foreground) * background


def unet_weights(
    labels: np.ndarray,
    bws: float = 10.0,
    fds: float = 10.0,
    bwf: float = 10.0,
    fbr: float = 0.1,
    voxel_size: Sequence[float] | None = None,
    tolerance: float = 1e-7,
    connectivity: int | None = None,
) -> np.ndarray:
    """U-Net loss weights from instance labels (deepflash2's ``calculate_weights``).

    Ridges (:func:`ridge_mask`) are removed from the instances first; the
    remaining instance voxels weigh 1, every other voxel
    ``fbr + (1 - fbr) exp(-d1^2 / 2 fds^2) + bwf exp(-(d1 + d2)^2 / 2 bws^2)``
    with ``d1``, ``d2`` the distances to the nearest and second-nearest
    (ridge-free) instance: background weighs ``fbr`` far from objects, rises
    to 1 next to them, and gaps between two close instances get up to
    ``bwf`` more.

    ``d1`` and ``d2`` saturate at :func:`weights_saturation_distance`, which
    changes no weight by more than ``tolerance`` and makes the weights depend
    only on labels within a bounded distance, so blocks computed with
    :func:`weights_context` equal the whole volume.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 is background.
    bws : float
        Border weight sigma, in the units of ``voxel_size`` (voxels if omitted).
    fds : float
        Foreground distance sigma, same units.
    bwf : float
        Border weight factor.
    fbr : float
        Foreground/background ratio: the weight of background far from objects.
    voxel_size : sequence of float, optional
        Voxel size in world units.
    tolerance : float
        Largest change of any weight caused by saturating the distances.
    connectivity : int, optional
        Of the ridges (see :func:`ridge_mask`).

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> labels = np.zeros((1, 40), np.uint8)
    >>> labels[0, 0] = 1
    >>> w = unet_weights(labels, bws=2, fds=2, fbr=0.1)
    >>> round(float(w[0, 2]), 6), round(float(w[0, 39]), 6)
    (0.645878, 0.1)
    """
    _check_weight_parameters(bws, fds, bwf, fbr, tolerance)
    labels = _check_labels(labels)
    instances = _remove_ridges(labels, connectivity)
    radius = weights_saturation_distance(bws, fds, bwf, fbr, tolerance)
    d1, d2 = instance_distances(instances, voxel_size, radius)
    foreground = (instances != 0).astype(np.float64)
    return _weights_formula(foreground, d1, d2, bws, fds, bwf, fbr, np.exp).astype(np.float32)


def weights_context(
    bws: float,
    fds: float,
    voxel_size: Sequence[float],
    *,
    bwf: float = 10.0,
    fbr: float = 0.1,
    tolerance: float = 1e-7,
) -> tuple[int | float, ...]:
    """Context (world units, per axis) that makes blockwise :func:`unet_weights` exact.

    A weight depends on ``d1`` and ``d2`` saturated at
    ``R = weights_saturation_distance(...)`` and on whether its own voxel is
    ridge. An instance voxel closer than ``R`` is at most ``ceil(R / size)``
    voxels away along each axis, and whether it is ridge depends on its
    neighbours one voxel further. With ``ceil(R / size) + 1`` voxels of
    context, every instance voxel that can influence a voxel of the write ROI
    is in the block with its correct ridge status, and the voxels that the
    block's edge may get wrong are farther than ``R``: the saturated
    distances, hence the weights, are the whole-volume ones (up to float
    rounding of ties, far below 1e-6). Use the same ``bwf``, ``fbr`` and
    ``tolerance`` as for the weights.

    Examples
    --------
    >>> weights_context(10, 10, (40, 8, 8))
    (120, 72, 72)
    """
    radius = weights_saturation_distance(bws, fds, bwf, fbr, tolerance)
    spacing = _check_voxel_size(voxel_size, len(voxel_size))
    return tuple(_world(math.ceil(radius / size) + 1, size) for size in spacing)


def _world(voxels: int, size: float) -> int | float:
    value = voxels * size
    return int(value) if float(size).is_integer() else value


# --------------------------------------------------------------------------
# sampling


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


# --------------------------------------------------------------------------
# LogConv: fast convolutional distance transform


def lambda_kernel(ks: int = LOGCONV_KERNEL_SIZE, lmbda: float = LOGCONV_LAMBDA) -> np.ndarray:
    """The 1D LogConv kernel ``exp(-|x| / lmbda)`` for ``x`` in ``-ks//2 .. ks//2``.

    Examples
    --------
    >>> k = lambda_kernel(3, 0.35)
    >>> float(k[1]), bool(np.isclose(k[0], np.exp(-1 / 0.35)))
    (1.0, True)
    """
    if isinstance(ks, bool) or not isinstance(ks, (int, np.integer)) or ks < 1 or ks % 2 == 0:
        raise ValueError(f"ks must be an odd positive integer, got {ks!r}")
    if not lmbda > 0:
        raise ValueError(f"lmbda must be > 0, got {lmbda!r}")
    offsets = np.arange(ks) - ks // 2
    return np.exp(-np.abs(offsets) / lmbda)


def logconv_distance(
    mask: np.ndarray,
    lmbda: float = LOGCONV_LAMBDA,
    ks: int = LOGCONV_KERNEL_SIZE,
    axes: Sequence[int] | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Approximate distance to the nearest ``True`` voxel of ``mask`` (LogConv).

    ``d(x) = max(0, -lmbda * log(sum_y mask(y) exp(-|x - y|_1 / lmbda)))``,
    the sum taken by separable 1D convolutions with :func:`lambda_kernel`
    along ``axes`` (zero padding). The separable kernel is the product of
    1D exponentials, so the norm is the city-block one: as ``lmbda -> 0`` the
    log-sum-exp tends to the city-block distance ``t(x)``. For any ``lmbda``

        t(x) - lmbda * ln N(x) <= d(x) <= t(x)

    where ``N(x) = sum_k n(t + k) q**k`` (``q = exp(-1/lmbda)``, ``n(k)``
    lattice points at city-block norm ``k``) bounds the other mask voxels'
    share: the nearest voxel contributes ``exp(-t/lmbda)`` and every voxel
    at norm ``t + k`` at most ``q**k`` times that. Since the Euclidean
    distance ``e`` obeys ``e <= t <= sqrt(ndim) e``, LogConv lies within
    ``[e - lmbda ln N, sqrt(ndim) e]``. Voxels with no mask voxel within
    ``ks // 2`` along every axis get ``inf``.

    Parameters
    ----------
    mask : ndarray of bool
    lmbda : float
        Kernel decay; 0.35 in deepflash2.
    ks : int
        Kernel size (odd); 73 in deepflash2.
    axes : sequence of int, optional
        Spatial axes to convolve along (all by default); other axes are a batch.
    dtype : numpy dtype
        Precision of the convolution.

    Examples
    --------
    >>> mask = np.zeros((5, 5), bool)
    >>> mask[2, 2] = True
    >>> logconv_distance(mask)[0].round(6).tolist()    # one voxel: exactly city block
    [4.0, 3.0, 2.0, 3.0, 4.0]
    """
    mask = np.asarray(mask)
    kernel = lambda_kernel(ks, lmbda).astype(dtype)
    axes = range(mask.ndim) if axes is None else axes
    total = mask.astype(dtype)
    for axis in axes:
        total = ndi.convolve1d(total, kernel, axis=axis, mode="constant", cval=0.0)
    with np.errstate(divide="ignore"):
        distance = -lmbda * np.log(total)
    # The mask voxel itself contributes exp(0) = 1 and its neighbours a
    # little more, so the raw value dips below 0 on the mask: a distance
    # cannot, and 0 is the exact value there (+ 0.0 turns -0.0 into 0.0).
    return (np.maximum(distance, 0.0) + 0.0).astype(dtype)


def logconv_instance_distances(
    labels: np.ndarray, lmbda: float = LOGCONV_LAMBDA, ks: int = LOGCONV_KERNEL_SIZE, dtype: type = np.float64
) -> np.ndarray:
    """LogConv distances to the nearest and second-nearest instance, for a batch.

    Parameters
    ----------
    labels : ndarray of int, shape ``(batch, *spatial)``
        One label image per batch entry (2 or 3 spatial dimensions).

    Returns
    -------
    ndarray, shape ``(batch, 2, *spatial)``
        ``d1`` then ``d2``, each computed as :func:`logconv_distance` to the
        instance's voxels; ``inf`` where fewer than two instances are in reach.

    Examples
    --------
    >>> d = logconv_instance_distances(np.array([[[1, 0, 0, 2]]]))
    >>> d.shape
    (1, 2, 1, 4)
    >>> d[0, :, 0].round(6).tolist()
    [[0.0, 1.0, 1.0, 0.0], [3.0, 2.0, 2.0, 3.0]]
    """
    labels = _check_labels(labels, ndims=(3, 4))
    out = np.full((labels.shape[0], 2) + labels.shape[1:], np.inf, dtype=dtype)
    for item, image in enumerate(labels):
        nearest, second = out[item]
        for label in np.unique(image[image != 0]):
            _keep_two_smallest(nearest, second, logconv_distance(image == label, lmbda, ks, dtype=dtype))
    return out


def logconv_weights(
    labels: np.ndarray,
    bws: float = 10.0,
    fds: float = 10.0,
    bwf: float = 10.0,
    fbr: float = 0.1,
    lmbda: float = LOGCONV_LAMBDA,
    ks: int = LOGCONV_KERNEL_SIZE,
) -> np.ndarray:
    """U-Net weights for a batch of label images, with LogConv distances.

    The real-time variant of :func:`unet_weights` (deepflash2's
    ``WeightTransform``): same ridges (full connectivity) and formula, but
    ``d1`` and ``d2`` come from :func:`logconv_instance_distances`, in
    voxels, so ``bws`` and ``fds`` are in voxels. LogConv cannot see past
    ``ks // 2`` voxels, where the weight terms of the default sigmas are
    already small; use :func:`unet_weights` for exact targets.

    Returns
    -------
    ndarray of float32, shape ``labels.shape``

    Examples
    --------
    >>> labels = np.zeros((1, 1, 9), np.uint8)
    >>> labels[0, 0, 0], labels[0, 0, 4] = 1, 2
    >>> w = logconv_weights(labels, bws=2, fds=2)
    >>> float(w[0, 0, 0]), round(float(w[0, 0, 2]), 3)
    (1.0, 1.999)
    """
    _check_weight_parameters(bws, fds, bwf, fbr, 1.0)
    labels = _check_labels(labels, ndims=(3, 4))
    instances = np.stack([_remove_ridges(image, None) for image in labels])
    d1, d2 = np.moveaxis(logconv_instance_distances(instances, lmbda, ks), 1, 0)
    foreground = (instances != 0).astype(np.float64)
    return _weights_formula(foreground, d1, d2, bws, fds, bwf, fbr, np.exp).astype(np.float32)


# --------------------------------------------------------------------------
# torch


def __getattr__(name: str):
    # PEP 562: `workers.weights.LogConv` imports torch only when asked for,
    # so the rest of this module works without torch installed.
    if name == "LogConv":
        return _torch_logconv()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=1)
def _torch_logconv() -> type:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as error:
        raise ImportError("workers.weights.LogConv needs torch: pip install 'blockseg[torch]'") from error

    class LogConv(torch.nn.Module):
        """LogConv distances to the nearest two instances of a batch of label images.

        ``forward(labels)`` takes integer labels of shape ``(batch, *spatial)``
        (2 or 3 spatial dimensions) and returns ``(batch, 2, *spatial)``: the
        LogConv distances ``d1`` and ``d2`` of :func:`logconv_instance_distances`,
        computed with 1D convolutions on the labels' device. ``distance(masks)``
        is :func:`logconv_distance` for a float tensor ``(n, *spatial)``, and
        ``weights(labels, ...)`` is :func:`logconv_weights`.

        Examples
        --------
        >>> import torch
        >>> module = LogConv(dtype=torch.float64)
        >>> module(torch.tensor([[[1, 0, 0, 2]]]))[0, :, 0].round(decimals=6).tolist()
        [[0.0, 1.0, 1.0, 0.0], [3.0, 2.0, 2.0, 3.0]]
        """

        def __init__(self, lmbda: float = LOGCONV_LAMBDA, ks: int = LOGCONV_KERNEL_SIZE, dtype=torch.float32):
            super().__init__()
            self.lmbda = float(lmbda)
            self.ks = int(ks)
            self.dtype = dtype
            kernel = torch.as_tensor(lambda_kernel(ks, lmbda), dtype=dtype)
            self.register_buffer("kernel", kernel.view(1, 1, -1))

        def distance(self, masks: "torch.Tensor") -> "torch.Tensor":
            total = masks.to(self.dtype)
            for axis in range(1, total.dim()):
                total = self._convolve_along(total, axis)
            distance = -self.lmbda * torch.log(total)
            return torch.clamp(distance, min=0.0) + 0.0  # as logconv_distance, no -0.0

        def _convolve_along(self, values: "torch.Tensor", axis: int) -> "torch.Tensor":
            moved = values.movedim(axis, -1)
            rows = moved.reshape(-1, 1, moved.shape[-1])
            # conv1d correlates; the kernel is symmetric, so that is convolution.
            rows = F.conv1d(rows, self.kernel, padding=self.ks // 2)
            return rows.reshape(moved.shape).movedim(-1, axis)

        def forward(self, labels: "torch.Tensor") -> "torch.Tensor":
            if labels.dim() not in (3, 4) or labels.is_floating_point():
                raise ValueError(
                    "labels must be integer (batch, *spatial) with 2 or 3 spatial dims, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            # Dense ids 1..K (0 stays 0) so the one-hot stack has K channels
            # however large the ids are.
            labels = labels.to(torch.int64)
            ids = torch.unique(torch.cat([labels.new_zeros(1), labels.flatten()]))
            compact = torch.searchsorted(ids, labels.contiguous())
            count = ids.numel() - 1
            batch, spatial = labels.shape[0], labels.shape[1:]
            if count == 0:
                return torch.full((batch, 2, *spatial), float("inf"), dtype=self.dtype, device=labels.device)
            channels = torch.arange(1, count + 1, device=labels.device).view(1, count, *([1] * len(spatial)))
            one_hot = (compact.unsqueeze(1) == channels).flatten(0, 1)
            distances = self.distance(one_hot).view(batch, count, *spatial)
            if count == 1:
                distances = torch.cat([distances, torch.full_like(distances, float("inf"))], dim=1)
            return torch.topk(distances, 2, dim=1, largest=False, sorted=True).values

        def weights(
            self, labels: "torch.Tensor", bws: float = 10.0, fds: float = 10.0, bwf: float = 10.0, fbr: float = 0.1
        ) -> "torch.Tensor":
            _check_weight_parameters(bws, fds, bwf, fbr, 1.0)
            instances = torch.where(self._ridges(labels), torch.zeros_like(labels), labels)
            d1, d2 = self.forward(instances).unbind(1)
            foreground = (instances != 0).to(self.dtype)
            return _weights_formula(foreground, d1, d2, bws, fds, bwf, fbr, torch.exp)

        @staticmethod
        def _ridges(labels: "torch.Tensor") -> "torch.Tensor":
            # Full-connectivity neighbourhood max and (background lifted) min,
            # as ridge_mask; pooling pads with -inf, so edges make no ridge.
            pool = F.max_pool2d if labels.dim() == 3 else F.max_pool3d
            values = labels.to(torch.float64).unsqueeze(1)
            highest = pool(values, 3, stride=1, padding=1)
            lifted = torch.where(values == 0, torch.full_like(values, float("inf")), values)
            lowest = -pool(-lifted, 3, stride=1, padding=1)
            return ((values != 0) & ((highest != values) | (lowest != values))).squeeze(1)

    return LogConv
