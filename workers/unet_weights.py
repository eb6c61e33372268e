"""Exact U-Net weight maps (Ronneberger et al., as parameterised by deepflash2).

:func:`unet_weights` computes the weights from the exact Euclidean distances
``d1`` and ``d2`` to the nearest and second-nearest instance
(:func:`instance_distances`); :func:`weights_context` gives the context a
block needs for them to equal the whole-volume weights.

Examples
--------
>>> round(weights_saturation_distance(10, 10, 10, 0.1, 1e-7), 2)
61.83
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi

from workers.channels import check_voxel_size as _check_voxel_size
from workers.ridges import _check_labels, _remove_ridges


def _check_weight_parameters(bws: float, fds: float, bwf: float, fbr: float, tolerance: float) -> None:
    if not (bws > 0 and fds > 0):
        raise ValueError(f"bws and fds must be > 0, got bws={bws!r}, fds={fds!r}")
    if not bwf >= 0:
        raise ValueError(f"bwf must be >= 0, got {bwf!r}")
    if not 0 <= fbr <= 1:
        raise ValueError(f"fbr must lie in [0, 1], got {fbr!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")


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
