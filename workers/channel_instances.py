"""Instances from BiaPy-style channel predictions (B, C, D, M, P, Dv2).

A network trained on the channel targets of :mod:`workers.channels` predicts,
per voxel, the probability of being inside an instance (``B``), on its
contour (``C``), in the foreground (``M``) or on its central point (``P``),
and a distance to the contour (``D``, or ``Dv2`` which also covers the
background). :func:`segment_channels` turns such a prediction back into
instances with a marker-controlled watershed:

================  ===============================================  ===================  =========
channel set       seeds                                            grows inside         over
================  ===============================================  ===================  =========
``BC``, ``BCM``   ``B > binary_mask`` and ``C < contour``          ``B > foreground``   ``B``
``BCD``           ... and ``D > distance``                         ... and ``D >``      ``B``
                                                                   ``dist_foreground``
``BP``            ``P > points``                                   ``B > foreground``   ``B``
``BCDv2``         ``B``, ``C`` as above and ``Dv2 < distance``;    everywhere           ``Dv2``
                  background: not in a dilation of
                  ``B > binary_mask`` or ``C > contour``
``BDv2``          ``B`` as above and ``Dv2 < distance``;           everywhere           ``Dv2``
                  background: ``Dv2 < distance`` elsewhere
``Dv2``           ``Dv2 < distance`` (no background seed)          everywhere           ``Dv2``
================  ===============================================  ===================  =========

(each threshold named ``data_mw_th_<name>``, and ``th_points``). Seeds are
the face-connected components of the seed mask; seeds smaller than
``data_remove_small_obj`` voxels are dropped. A seed always belongs to its
growth area, even where ``B`` is low: a central point on its object's rim
would otherwise never grow. The ``Dv2`` sets have no growth mask; their
background seed grows with the others and is 0 in the result. Three optional
post-processing steps follow, each also a function of its own:
:func:`repair_large_blobs`, :func:`filter_by_circularity` and
:func:`voronoi_growth`.

The threshold names are the seed's configuration keys in snake_case
(``PROBLEM.INSTANCE_SEG.DATA_MW_TH_BINARY_MASK`` becomes
``data_mw_th_binary_mask``; ``TEST.POST_PROCESSING.REPARE_LARGE_BLOBS_SIZE``
keeps its spelling), and :class:`ChannelWatershedParams` groups them so that a
pipeline config can hold them as one typed object.

Examples
--------
>>> import numpy as np
>>> from workers.channels import instance_channels
>>> truth = np.zeros((8, 14), np.uint8)
>>> truth[1:7, 1:7], truth[1:7, 7:13] = 1, 2          # two touching squares
>>> bc = instance_channels(truth, "BC")
>>> segment_channels(bc, "BC", data_remove_small_obj=0)[3]       # their insides
array([0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0, 0], dtype=uint64)
>>> found = segment_channels(bc, "BC", data_remove_small_obj=0, voronoi_on_mask=True)
>>> bool((found == truth).all())                   # contours given back by Voronoi
True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, watershed

from workers.channel_params import (  # noqa: F401
    _B_SETS,
    _DISTANCES,
    _PROBABILITIES,
    _VORONOI_SETS,
    ChannelWatershedParams,
    _is_int,
    _is_real,
)
from workers.channels import channel_names, check_voxel_size
from workers.instance_postprocessing import (  # noqa: F401
    _check_labels,
    _fill_holes_of,
    _padded,
    _touching_pairs,
    circularity,
    filter_by_circularity,
    remove_small_instances,
    repair_large_blobs,
    voronoi_growth,
)

# --------------------------------------------------------------------------
# the watershed


def segment_channels(
    channels: np.ndarray,
    channel_set: str,
    *,
    data_mw_th_binary_mask: float = 0.5,
    data_mw_th_contour: float = 0.1,
    data_mw_th_foreground: float = 0.3,
    data_mw_th_distance: float = 1.5,
    data_mw_th_dist_foreground: float = 1.2,
    th_points: float = 0.5,
    data_remove_small_obj: int = 30,
    data_remove_before_mw: bool | None = None,
    repare_large_blobs_size: int = -1,
    watershed_circularity: float = -1.0,
    voronoi_on_mask: bool = False,
    grow_into_contour: int = 0,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Instances from the channels of one BiaPy channel set.

    Parameters
    ----------
    channels : ndarray, shape (C, y, x) or (C, z, y, x)
        The channels of ``channel_set`` in the order of its name, as
        :func:`workers.channels.instance_channels` stacks them: ``B``, ``C``,
        ``M``, ``P`` probabilities, ``D`` and ``Dv2`` distances.
    channel_set : str
        One of ``BC``, ``BP``, ``BCM``, ``BCD``, ``BCDv2``, ``Dv2``, ``BDv2``.
    data_mw_th_binary_mask, data_mw_th_contour, data_mw_th_foreground, \
data_mw_th_distance, data_mw_th_dist_foreground, th_points, \
data_remove_small_obj, data_remove_before_mw, repare_large_blobs_size, \
watershed_circularity, voronoi_on_mask, grow_into_contour
        See :class:`ChannelWatershedParams` (same names, same defaults).
    voxel_size : sequence of float, optional
        Voxel size, for the Voronoi distances and the 3D surface area;
        isotropic voxels when omitted.

    Returns
    -------
    ndarray of uint64, the spatial shape of ``channels``
        Instances numbered 1..n in the order of their first voxel (C order);
        0 is background. The same input always gives the same output.

    Raises
    ------
    ValueError
        For an unknown channel set, a channel count that does not match the
        set, channels that are not 2D or 3D, not numbers or not finite, a
        probability threshold outside [0, 1], or another bad parameter.

    Examples
    --------
    >>> import numpy as np
    >>> b = np.zeros((1, 11, 11), np.float32)
    >>> b[0, 2:9, 2:9] = 0.9
    >>> p = np.zeros_like(b)
    >>> p[0, 5, 5] = 1
    >>> labels = segment_channels(np.concatenate([b, p]), "BP")
    >>> int(labels.max()), int((labels == 1).sum())
    (1, 49)
    """
    params = ChannelWatershedParams(
        data_mw_th_binary_mask=data_mw_th_binary_mask,
        data_mw_th_contour=data_mw_th_contour,
        data_mw_th_foreground=data_mw_th_foreground,
        data_mw_th_distance=data_mw_th_distance,
        data_mw_th_dist_foreground=data_mw_th_dist_foreground,
        th_points=th_points,
        data_remove_small_obj=data_remove_small_obj,
        data_remove_before_mw=data_remove_before_mw,
        repare_large_blobs_size=repare_large_blobs_size,
        watershed_circularity=watershed_circularity,
        voronoi_on_mask=voronoi_on_mask,
        grow_into_contour=grow_into_contour,
    )
    named = _check_channels(channels, channel_set)
    spacing = check_voxel_size(voxel_size, next(iter(named.values())).ndim)
    if params.voronoi_on_mask and channel_set not in _VORONOI_SETS:
        raise ValueError(
            f"voronoi_on_mask needs a foreground from B and C (or M): channel sets {', '.join(_VORONOI_SETS)}, "
            f"not {channel_set}"
        )
    before = params.data_remove_before_mw
    if before is None:
        before = channel_set != "BP"
    min_size = params.data_remove_small_obj

    if channel_set in _B_SETS:
        markers, background, elevation, mask = _b_watershed_inputs(named, channel_set, params)
    else:
        markers, background, elevation, mask = _dv2_watershed_inputs(named, channel_set, params)
    if before and min_size > 0:
        markers = remove_small_instances(markers, min_size)
    if background is not None:
        # One marker for all background: it floods with the instances and
        # is dropped at the end, so no instance leaks into the background.
        background_id = int(markers.max(initial=0)) + 1
        markers[background & (markers == 0)] = background_id
    labels = watershed(elevation, markers=markers, mask=mask, connectivity=1)
    if background is not None:
        labels[labels == background_id] = 0
    if not before and min_size > 0:
        labels = remove_small_instances(labels, min_size)

    if params.repare_large_blobs_size != -1:
        labels = repair_large_blobs(labels, params.repare_large_blobs_size)
    if params.watershed_circularity != -1:
        labels = filter_by_circularity(labels, params.watershed_circularity, voxel_size=spacing)
    if params.voronoi_on_mask:
        labels = voronoi_growth(labels, _voronoi_area(named, params), voxel_size=spacing)
    if params.grow_into_contour:
        # In voxels, not nm: the shell to restore is the contour the targets
        # drew, which is a number of voxels thick and includes the diagonal
        # corners, hence the sqrt(ndim) (for one voxel, exactly the corners).
        reach = params.grow_into_contour * math.sqrt(labels.ndim)
        labels = expand_labels(labels, distance=reach)
    return _consecutive(labels)


def segment_channels_with(
    channels: np.ndarray, channel_set: str, params: ChannelWatershedParams, **kwargs
) -> np.ndarray:
    """:func:`segment_channels` with the thresholds of a :class:`ChannelWatershedParams`.

    Examples
    --------
    >>> import numpy as np
    >>> bc = np.zeros((2, 6, 6), np.float32)
    >>> bc[0, 1:5, 1:5] = 1
    >>> int(segment_channels_with(bc, "BC", ChannelWatershedParams(data_remove_small_obj=0)).max())
    1
    """
    return segment_channels(channels, channel_set, **dataclasses.asdict(params), **kwargs)


def _check_channels(channels: np.ndarray, channel_set: str) -> dict[str, np.ndarray]:
    names = channel_names(channel_set)  # the ValueError listing the known sets
    array = np.asarray(channels)
    if array.dtype == bool:
        array = array.astype(np.float32)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"channels must be numbers (float probabilities and distances), got dtype {array.dtype}")
    if array.ndim not in (3, 4):
        raise ValueError(
            f"channels must be shaped (C, y, x) or (C, z, y, x) with C = {len(names)} for {channel_set}, "
            f"got shape {array.shape}"
        )
    if array.shape[0] != len(names):
        raise ValueError(
            f"channel set {channel_set} has {len(names)} channels ({', '.join(names)}, in that order), "
            f"got {array.shape[0]} in an array of shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("channels contain NaN or infinite values; a network output must be finite")
    return {name: array[index] for index, name in enumerate(names)}


def _face_structure(ndim: int) -> np.ndarray:
    return ndi.generate_binary_structure(ndim, 1)


def _label_seeds(seed_mask: np.ndarray) -> np.ndarray:
    # Face connectivity: with one-voxel contours inside each instance, the
    # insides of two touching instances can meet at a corner in 3D (never
    # across a face), and a corner must not join two seeds.
    labels, _ = ndi.label(seed_mask, structure=_face_structure(seed_mask.ndim))
    return labels


def _b_watershed_inputs(named: dict[str, np.ndarray], channel_set: str, params: ChannelWatershedParams):
    b = named["B"]
    if channel_set == "BP":
        seed_mask = named["P"] > params.th_points
    else:
        seed_mask = b > params.data_mw_th_binary_mask
        seed_mask &= named["C"] < params.data_mw_th_contour
        if "D" in named:
            seed_mask &= named["D"] > params.data_mw_th_distance
    foreground = b > params.data_mw_th_foreground
    if "D" in named:
        foreground &= named["D"] > params.data_mw_th_dist_foreground
    # A seed may always hold its own voxels. Without this, a central point
    # that lies on its object's contour (where B is low: the centre of a
    # C-shaped object falls outside it, and its nearest voxel is on the rim)
    # is outside the growth area, and the whole object is lost.
    foreground |= seed_mask
    # Seeds flood from high B down; float32 keeps skimage from copying to float64.
    elevation = -b.astype(np.float32, copy=False)
    return _label_seeds(seed_mask), None, elevation, foreground


def _dv2_watershed_inputs(named: dict[str, np.ndarray], channel_set: str, params: ChannelWatershedParams):
    dv2 = named["Dv2"]
    seed_mask = dv2 < params.data_mw_th_distance
    background = None
    if "B" in named:
        inside = named["B"] > params.data_mw_th_binary_mask
        if channel_set == "BDv2":
            # Low Dv2 away from B: the far background, grown as one seed.
            background = seed_mask & ~inside
        seed_mask &= inside
    if "C" in named:
        seed_mask &= named["C"] < params.data_mw_th_contour
        cells = (named["B"] > params.data_mw_th_binary_mask) | (named["C"] > params.data_mw_th_contour)
        # One voxel of dilation keeps the background seed off the cells' rims.
        background = ~ndi.binary_dilation(cells, structure=_face_structure(cells.ndim))
    # Dv2 is high on contours: the ridges between basins.
    return _label_seeds(seed_mask), background, dv2.astype(np.float32, copy=False), None


def _voronoi_area(named: dict[str, np.ndarray], params: ChannelWatershedParams) -> np.ndarray:
    if "M" in named:
        return named["M"] > params.data_mw_th_foreground
    return (named["B"] + named["C"]) > params.data_mw_th_foreground


def _consecutive(labels: np.ndarray) -> np.ndarray:
    # renumber numbers by first appearance in C order: deterministic and
    # independent of how the seeds happened to be numbered.
    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    return out.astype(np.uint64, copy=False)
