"""The thresholds of the channel watershed, as one typed and checked object.

:class:`ChannelWatershedParams` groups the seed, growth and post-processing
settings of :func:`workers.channel_instances.segment_channels` (BiaPy's
configuration keys in snake_case), so that a pipeline config can hold them as
one object; the constants say which channel sets grow over ``B`` and which
use the seeds for the Voronoi growth area.

Examples
--------
>>> ChannelWatershedParams().data_remove_small_obj >= 0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


#: Channel sets whose watershed grows over ``B`` inside a foreground mask.
_B_SETS = ("BC", "BCM", "BCD", "BP")
#: Channel sets for which the seed defines the Voronoi growth area.
_VORONOI_SETS = ("BC", "BCM", "BCD", "BCDv2")
_PROBABILITIES = ("data_mw_th_binary_mask", "data_mw_th_contour", "data_mw_th_foreground", "th_points")
_DISTANCES = ("data_mw_th_distance", "data_mw_th_dist_foreground")


@dataclass(frozen=True)
class ChannelWatershedParams:
    """Thresholds and post-processing switches of :func:`segment_channels`.

    Every field is validated on construction, so a config holding one is
    known to be usable.

    Parameters
    ----------
    data_mw_th_binary_mask : float
        ``B`` above this may seed (probability, [0, 1]).
    data_mw_th_contour : float
        ``C`` must be below this to seed; in ``BCDv2`` ``C`` above it is
        foreground when placing the background seed (probability).
    data_mw_th_foreground : float
        Seeds grow only where ``B`` is above this (``BC``, ``BCM``, ``BCD``,
        ``BP``); also the level of the Voronoi growth area (probability).
    data_mw_th_distance : float
        ``D`` must be above this to seed; ``Dv2`` must be below it. Same units
        as the distance channel (voxels, or world units if the targets were
        made with a voxel size), >= 0.
    data_mw_th_dist_foreground : float
        ``BCD`` seeds grow only where ``D`` is above this (>= 0).
    th_points : float
        ``P`` above this is a seed (``BP``; probability).
    data_remove_small_obj : int
        Instances smaller than this many voxels are removed (0 keeps all).
    data_remove_before_mw : bool, optional
        Remove them as seeds, before the watershed (the seed's order), or as
        grown instances, after it. ``None`` picks *after* for ``BP`` only,
        whose seeds are single points that a size filter would all remove.
    repare_large_blobs_size : int
        -1 (off) or a size in voxels: see :func:`repair_large_blobs`.
    watershed_circularity : float
        -1 (off) or the least circularity (2D) / sphericity (3D), in
        [0, 1], an instance must have: see :func:`filter_by_circularity`.
    voronoi_on_mask : bool
        Grow the instances by Voronoi tessellation over the foreground
        (``M`` for ``BCM``, ``B + C`` otherwise; only the sets with ``C``).
    grow_into_contour : int
        After everything else, grow each instance by up to this many voxels
        into unlabelled voxels, diagonals included (Euclidean reach
        ``grow_into_contour * sqrt(ndim)``; 0, the default, is off; not in
        the seed).
        The sets without ``C`` (``BP``, ``Dv2``, ``BDv2``) have no foreground
        to grow back into, so their instances lack the contour shell that
        ``B`` excludes; on thin 3D neurites that shell is half the object.
        Set it to the contour thickness the targets were made with.

    Examples
    --------
    >>> params = ChannelWatershedParams(data_mw_th_contour=0.2)
    >>> params.data_mw_th_binary_mask, params.data_mw_th_contour
    (0.5, 0.2)
    >>> ChannelWatershedParams(th_points=2)
    Traceback (most recent call last):
    ...
    ValueError: th_points is a probability threshold and must lie in [0, 1], got 2
    """

    data_mw_th_binary_mask: float = 0.5
    data_mw_th_contour: float = 0.1
    data_mw_th_foreground: float = 0.3
    data_mw_th_distance: float = 1.5
    data_mw_th_dist_foreground: float = 1.2
    th_points: float = 0.5
    data_remove_small_obj: int = 30
    data_remove_before_mw: bool | None = None
    repare_large_blobs_size: int = -1
    watershed_circularity: float = -1.0
    voronoi_on_mask: bool = False
    grow_into_contour: int = 0

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability threshold and must lie in [0, 1], got {value!r}")
        for name in _DISTANCES:
            value = getattr(self, name)
            if not _is_real(value) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} is a distance threshold and must be a finite number >= 0, got {value!r}")
        if not _is_int(self.data_remove_small_obj) or self.data_remove_small_obj < 0:
            raise ValueError(
                "data_remove_small_obj must be an integer >= 0 (voxels; 0 keeps all), "
                f"got {self.data_remove_small_obj!r}"
            )
        if self.data_remove_before_mw not in (None, True, False):
            raise ValueError(f"data_remove_before_mw must be True, False or None, got {self.data_remove_before_mw!r}")
        size = self.repare_large_blobs_size
        if not _is_int(size) or not (size == -1 or size >= 1):
            raise ValueError(f"repare_large_blobs_size must be -1 (off) or an integer >= 1 (voxels), got {size!r}")
        circ = self.watershed_circularity
        if not _is_real(circ) or not (circ == -1 or 0.0 <= circ <= 1.0):
            raise ValueError(f"watershed_circularity must be -1 (off) or lie in [0, 1], got {circ!r}")
        if self.voronoi_on_mask not in (True, False):
            raise ValueError(f"voronoi_on_mask must be True or False, got {self.voronoi_on_mask!r}")
        if not _is_int(self.grow_into_contour) or self.grow_into_contour < 0:
            raise ValueError(
                f"grow_into_contour must be an integer >= 0 (voxels; 0 is off), got {self.grow_into_contour!r}"
            )


def _is_real(value: object) -> bool:
    # bool is a number to Python, but True as a threshold is surely a mistake.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
