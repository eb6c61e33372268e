"""BiaPy channel targets from instance labels: B, C, D, M, P and Dv2.

A network for instance segmentation is trained on channels derived from the
instance labels (0 is background), and the instances are recovered from its
output by a marker-controlled watershed (see ``workers.fragments``):

======  ===========================================================  =====
name    what it holds                                                dtype
======  ===========================================================  =====
``B``   each instance without its contour (binary mask)              0/1
``C``   the contours of the instances, ``contour_thickness`` thick   0/1
``D``   inside ``B``: distance to the nearest contour voxel          float
``M``   the foreground, ``B`` + ``C``                                0/1
``P``   one central voxel per instance                               0/1
``Dv2`` ``distance_clip - distance to the contour``, everywhere      float
======  ===========================================================  =====

:func:`instance_channels` stacks the channels of one of the sets ``BC``,
``BP``, ``BCM``, ``BCD``, ``BCDv2``, ``Dv2`` and ``BDv2`` in the order of
the set's name; :func:`channels_context` gives the context a block needs so
that the blockwise result equals the whole-volume one exactly.

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((7, 7), np.uint32)
>>> labels[1:6, 1:6] = 1
>>> bc = instance_channels(labels, "BC")
>>> bc.shape, bc.dtype
((2, 7, 7), dtype('float32'))
>>> int(bc[0].sum()), int(bc[1].sum())   # a 3 x 3 inside, a 16-voxel ring
(9, 16)
>>> channels_context("BC", voxel_size=(40, 8))
(40, 8)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from workers.channel_checks import (  # noqa: F401
    CHANNEL_SETS,
    _check_distance_clip,
    _check_thickness,
    channel_names,
    check_labels,
    check_voxel_size,
)
from workers.channel_masks import (  # noqa: F401
    _central_voxel,
    _contour,
    _d_channel,
    _distance_to,
    _dv2_channel,
    central_points,
    contour_distance,
    contour_distance_v2,
    contour_mask,
    foreground_mask,
    inside_mask,
)


# --------------------------------------------------------------------------
# channel sets


def instance_channels(
    labels: np.ndarray,
    channel_set: str,
    contour_thickness: int = 1,
    voxel_size: Sequence[float] | None = None,
    distance_clip: float | None = None,
) -> np.ndarray:
    """Return the channels of ``channel_set`` computed from instance labels.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 is background.
    channel_set : str
        One of ``BC``, ``BP``, ``BCM``, ``BCD``, ``BCDv2``, ``Dv2``, ``BDv2``.
    contour_thickness : int
        Contour width in voxels (see :func:`contour_mask`); it also decides
        what is left for ``B``.
    voxel_size : sequence of float, optional
        Voxel size in world units; ``D``, ``Dv2`` and the choice of ``P`` use
        world distances. Voxels when omitted.
    distance_clip : float, optional
        World units at which ``D`` and ``Dv2`` saturate. Required for
        ``Dv2``; for ``D`` it is what makes the blockwise context finite.

    Returns
    -------
    ndarray of float32, shape ``(len(channel_set's channels), *labels.shape)``
        The channels in the order of the set's name.

    Raises
    ------
    ValueError
        For float or negative labels, an unknown channel set, a thickness
        that is not an integer >= 1, a bad voxel size or clip.

    Examples
    --------
    >>> labels = np.zeros((7, 7), np.uint8)
    >>> labels[1:6, 1:6] = 1
    >>> bcd = instance_channels(labels, "BCD", distance_clip=1.5)
    >>> bcd[2, 3].tolist()       # D along the middle row, saturated at 1.5
    [0.0, 0.0, 1.0, 1.5, 1.0, 0.0, 0.0]
    """
    names = channel_names(channel_set)
    labels = check_labels(labels)
    thickness = _check_thickness(contour_thickness)
    spacing = check_voxel_size(voxel_size, labels.ndim)
    clip = _check_distance_clip(distance_clip, "Dv2" if "Dv2" in names else None)
    contour = _contour(labels, thickness)
    out = np.empty((len(names),) + labels.shape, np.float32)
    for index, name in enumerate(names):
        out[index] = _channel(name, labels, contour, spacing, clip)
    return out


def _channel(
    name: str, labels: np.ndarray, contour: np.ndarray, spacing: tuple[float, ...], clip: float | None
) -> np.ndarray:
    if name == "B":
        return (labels != 0) & ~contour
    if name == "C":
        return contour
    if name == "M":
        return labels != 0
    if name == "D":
        return _d_channel(labels, contour, spacing, clip)
    if name == "Dv2":
        return _dv2_channel(contour, spacing, clip)
    return central_points(labels, spacing)  # "P"


def channels_context(
    channel_set: str,
    *,
    voxel_size: Sequence[float],
    contour_thickness: int = 1,
    distance_clip: float | None = None,
    max_object_extent: float | Sequence[float] | None = None,
) -> tuple[int | float, ...]:
    """Return the context (world units, per axis) a block needs for exact channels.

    Computing :func:`instance_channels` on a block's write ROI grown by this
    context (clipped to the volume) and cropping to the write ROI gives
    exactly the whole-volume result:

    - ``C`` and ``B`` look ``contour_thickness`` voxels around each voxel;
      ``M`` looks nowhere.
    - ``D`` and ``Dv2`` need every contour voxel closer than
      ``distance_clip``, and those voxels' own contour test:
      ``contour_thickness + ceil(distance_clip / voxel_size)`` voxels.
      Without a clip the nearest contour can be arbitrarily far, so a clip is
      required here.
    - ``P`` depends on the whole instance (its centre of mass), so a block
      must hold every instance that reaches its write ROI entirely:
      ``ceil(max_object_extent / voxel_size)`` voxels, where
      ``max_object_extent`` bounds the bounding-box size (world units, per
      axis or one number) of every label in the volume. Long neurites make
      this large; ``P`` is meant for compact objects such as nuclei.

    Parameters
    ----------
    channel_set : str
        One of :data:`CHANNEL_SETS`.
    voxel_size : sequence of float
        Voxel size in world units; its length gives the dimensionality.
    contour_thickness, distance_clip
        As given to :func:`instance_channels`.
    max_object_extent : float or sequence of float, optional
        Required for sets with ``P``.

    Returns
    -------
    tuple
        Whole numbers of voxels times the voxel size: ints when the voxel
        size is integral (nm), floats otherwise.

    Examples
    --------
    >>> channels_context("BCD", voxel_size=(40, 4, 4), contour_thickness=2, distance_clip=80)
    (160, 88, 88)
    """
    names = channel_names(channel_set)
    spacing = check_voxel_size(voxel_size, len(voxel_size))
    thickness = _check_thickness(contour_thickness)
    needs_clip = next((n for n in names if n in ("D", "Dv2")), None)
    clip = _check_distance_clip(distance_clip, f"the blockwise context of {needs_clip}" if needs_clip else None)
    extent = _check_extent(max_object_extent, len(spacing)) if "P" in names else None
    voxels = [0] * len(spacing)
    for name in names:
        own = _context_voxels(name, thickness, clip, extent, spacing)
        voxels = [max(a, b) for a, b in zip(voxels, own)]
    return tuple(_world(v, size) for v, size in zip(voxels, spacing))


def _check_extent(extent: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if extent is None:
        raise ValueError(
            "channel P depends on whole instances: pass max_object_extent, the largest "
            "bounding-box size of any label in world units"
        )
    values = (float(extent),) * ndim if np.isscalar(extent) else tuple(float(e) for e in extent)
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"max_object_extent must be positive world units (one or {ndim}), got {extent!r}")
    return values


def _context_voxels(
    name: str, thickness: int, clip: float | None, extent: tuple[float, ...] | None, spacing: tuple[float, ...]
) -> list[int]:
    if name in ("B", "C"):
        return [thickness] * len(spacing)
    if name == "M":
        return [0] * len(spacing)
    if name in ("D", "Dv2"):
        # Contours at distance >= clip do not change a saturated value, and
        # one at distance < clip is fewer than ceil(clip / size) voxels away
        # along every axis; its contour test looks `thickness` further. The
        # voxel this keeps to spare covers a contour exactly at the clip whose
        # float distance rounds just below it.
        return [thickness + math.ceil(clip / size) for size in spacing]
    # An instance of n voxels that reaches the write ROI ends at most n - 1
    # voxels outside it; n <= ceil(extent / size).
    return [math.ceil(e / size) for e, size in zip(extent, spacing)]  # "P"


def _world(voxels: int, size: float) -> int | float:
    value = voxels * size
    return int(value) if float(size).is_integer() else value
