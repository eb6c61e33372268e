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
from dataclasses import dataclass
from typing import Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes, mesh_surface_area, perimeter
from skimage.segmentation import expand_labels, watershed

from workers.channels import channel_names, check_voxel_size

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


# --------------------------------------------------------------------------
# small objects and post-processing


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D integer array, got dtype {labels.dtype} and shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"{name} must be >= 0 (0 is background), got minimum {labels.min()}")
    return labels


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set instances of fewer than ``min_size`` voxels to 0 (a new array).

    Examples
    --------
    >>> remove_small_instances(np.array([[1, 1, 2], [0, 3, 3]]), 2).tolist()
    [[1, 1, 0], [0, 3, 3]]
    """
    labels = _check_labels(labels)
    if not _is_int(min_size) or min_size < 0:
        raise ValueError(f"min_size must be an integer >= 0 (voxels), got {min_size!r}")
    dense, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    sizes = np.bincount(dense.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[dense]] = 0
    return out


def _touching_pairs(dense: np.ndarray) -> np.ndarray:
    """Unique pairs (a, b), a < b, of non-zero labels that share a face."""
    pairs = []
    for axis in range(dense.ndim):
        lower = dense[(slice(None),) * axis + (slice(None, -1),)]
        upper = dense[(slice(None),) * axis + (slice(1, None),)]
        differ = (lower != upper) & (lower != 0) & (upper != 0)
        a, b = lower[differ], upper[differ]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def repair_large_blobs(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge each large instance with the instances it touches, and fill its holes.

    A large object whose prediction has several seeds (typical of ``BP``,
    where a big object may get more than one central point) comes out of
    the watershed in pieces; the pieces of it that reach ``min_size`` voxels
    absorb every instance sharing a face with them (transitively through
    other large instances), and the merged instance then fills its holes:
    voxels it encloses completely become part of it, whatever they held.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instances, 0 is background.
    min_size : int
        Instances with at least this many voxels are repaired (>= 1).

    Returns
    -------
    ndarray, the dtype of ``labels``
        Merged instances keep the smallest of their ids; others keep theirs.

    Examples
    --------
    >>> ring = np.zeros((7, 7), np.uint8)
    >>> ring[1:6, 1:6] = 1
    >>> ring[2:5, 2:5] = 0
    >>> ring[3, 3] = 2                       # a piece inside the hole
    >>> ring[1, 1:3] = 3                     # a piece on the rim
    >>> repair_large_blobs(ring, 10)[1:6, 1:6].tolist() == [[1] * 5] * 5
    True
    """
    labels = _check_labels(labels)
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1 (voxels), got {min_size!r}")
    dense, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    count = int(dense.max(initial=0))
    sizes = np.bincount(dense.ravel(), minlength=count + 1)
    large = sizes >= min_size
    large[0] = False
    if not large.any():
        return labels.copy()
    pairs = _touching_pairs(dense)
    pairs = pairs[large[pairs[:, 0]] | large[pairs[:, 1]]]
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    # Each group is named after its smallest original id, so the result does
    # not depend on how the groups happen to be numbered.
    original = np.zeros(count + 1, labels.dtype)
    for old, new in mapping.items():
        original[new] = old
    group_id = np.full(component.max() + 1, np.iinfo(labels.dtype).max, labels.dtype)
    np.minimum.at(group_id, component[1:], original[1:])
    merged = np.where(dense == 0, 0, group_id[component[dense]]).astype(labels.dtype)
    grown = np.zeros(component.max() + 1, bool)
    grown[component[large]] = True
    _fill_holes_of(merged, np.unique(group_id[grown]))
    return merged


def _fill_holes_of(labels: np.ndarray, ids: np.ndarray) -> None:
    """Fill, in place, the holes of the instances ``ids`` (few: the large ones)."""
    dense, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    boxes = ndi.find_objects(dense)
    for label_id in ids:
        index = mapping[int(label_id)]
        box = boxes[index - 1]
        filled = ndi.binary_fill_holes(dense[box] == index)
        labels[box][filled] = label_id


def _padded(mask: np.ndarray) -> np.ndarray:
    return np.pad(mask, 1)


def circularity(mask: np.ndarray, voxel_size: Sequence[float] | None = None) -> float:
    """Circularity of a 2D mask, or sphericity of a 3D one, in [0, 1].

    2D: ``4 pi area / perimeter**2`` with scikit-image's perimeter estimate
    (4-connected boundary, weighted by the local configuration), in voxels:
    that estimate has no voxel size, so ``voxel_size`` only acts in 3D.
    It counts a one-voxel-wide line's length once, not twice, so such lines
    score higher than their shape deserves (0.39 for a line of 36 voxels).
    3D: ``pi**(1/3) (6 V)**(2/3) / A``, with the surface area ``A`` of the
    marching-cubes mesh at level 0.5 (world units if ``voxel_size`` is given).
    Both are 1 for a perfect disc or ball; digitisation can push the
    estimate slightly above 1, so it is capped there.

    Examples
    --------
    >>> yy, xx = np.mgrid[-12:13, -12:13]
    >>> circularity(yy**2 + xx**2 <= 100) > 0.85
    True
    >>> line = np.zeros((5, 40), bool); line[1:3, 2:38] = True     # 2 x 36
    >>> circularity(line) < 0.2
    True
    """
    mask = np.asarray(mask, bool)
    if mask.ndim not in (2, 3) or not mask.any():
        raise ValueError(f"circularity needs a non-empty 2D or 3D mask, got shape {mask.shape}")
    spacing = check_voxel_size(voxel_size, mask.ndim)
    if mask.ndim == 2:
        length = perimeter(_padded(mask), neighborhood=4)
        value = 4 * math.pi * mask.sum() / length**2 if length > 0 else 1.0
    else:
        padded = _padded(mask).astype(np.float32)
        verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing)
        area = mesh_surface_area(verts, faces)
        volume = mask.sum() * math.prod(spacing)
        value = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area if area > 0 else 1.0
    return float(min(value, 1.0))


def filter_by_circularity(
    labels: np.ndarray, min_circularity: float, voxel_size: Sequence[float] | None = None
) -> np.ndarray:
    """Remove (set to 0) the instances whose :func:`circularity` is below ``min_circularity``.

    One measurement per instance, each on the instance's bounding box, so
    the cost grows with the volume, not with the number of instances times
    the volume.

    Examples
    --------
    >>> labels = np.zeros((30, 60), np.uint8)
    >>> yy, xx = np.mgrid[:30, :60]
    >>> labels[(yy - 15)**2 + (xx - 15)**2 <= 100] = 1     # a disc
    >>> labels[15, 35:58] = 2                               # a line
    >>> np.unique(filter_by_circularity(labels, 0.7)).tolist()
    [0, 1]
    """
    labels = _check_labels(labels)
    if not _is_real(min_circularity) or not 0.0 <= min_circularity <= 1.0:
        raise ValueError(f"min_circularity must lie in [0, 1], got {min_circularity!r}")
    dense, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    drop = np.zeros(int(dense.max(initial=0)) + 1, bool)
    for index, box in enumerate(ndi.find_objects(dense), start=1):
        if box is not None:
            drop[index] = circularity(dense[box] == index, voxel_size) < min_circularity
    out = labels.copy()
    out[drop[dense]] = 0
    return out


def voronoi_growth(labels: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Give each unlabelled voxel of ``mask`` the label of the nearest labelled voxel.

    This is the Voronoi tessellation of the instances (Euclidean distance,
    world units if ``voxel_size`` is given), cut to the mask, so that
    instances grow until they touch each other or the mask's edge. Labelled
    voxels keep their labels, inside the mask or not; with no instance at
    all, nothing changes.

    Examples
    --------
    >>> labels = np.array([[1, 0, 0, 0, 2, 0]])
    >>> mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
    >>> voronoi_growth(labels, mask).tolist()
    [[1, 1, 1, 2, 2, 0]]
    """
    labels = _check_labels(labels)
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
    spacing = check_voxel_size(voxel_size, labels.ndim)
    unlabelled = labels == 0
    if unlabelled.all() or not unlabelled.any():
        return labels.copy()
    nearest = ndi.distance_transform_edt(unlabelled, sampling=spacing, return_distances=False, return_indices=True)
    grown = labels[tuple(nearest)]
    return np.where(unlabelled & ~mask.astype(bool), 0, grown).astype(labels.dtype, copy=False)
