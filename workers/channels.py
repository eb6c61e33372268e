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

import fastremap
import numpy as np
from scipy import ndimage as ndi

#: The channel sets, each the tuple of its channels in output order.
CHANNEL_SETS: dict[str, tuple[str, ...]] = {
    "BC": ("B", "C"),
    "BP": ("B", "P"),
    "BCM": ("B", "C", "M"),
    "BCD": ("B", "C", "D"),
    "BCDv2": ("B", "C", "Dv2"),
    "Dv2": ("Dv2",),
    "BDv2": ("B", "Dv2"),
}


# --------------------------------------------------------------------------
# validation


def channel_names(channel_set: str) -> tuple[str, ...]:
    """Return the channels of ``channel_set`` in output order.

    Raises
    ------
    ValueError
        If ``channel_set`` is not one of :data:`CHANNEL_SETS`.

    Examples
    --------
    >>> channel_names("BCDv2")
    ('B', 'C', 'Dv2')
    """
    if not isinstance(channel_set, str) or channel_set not in CHANNEL_SETS:
        known = ", ".join(CHANNEL_SETS)
        raise ValueError(f"unknown channel set {channel_set!r}; expected one of {known}")
    return CHANNEL_SETS[channel_set]


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Check that ``labels`` are 2D or 3D non-negative integer instance labels.

    Boolean masks count as labels with the single instance 1.

    Returns
    -------
    ndarray
        ``labels`` as an integer array (no copy unless it was boolean).

    Raises
    ------
    ValueError
        For a float (or other non-integer) dtype, negative labels, or an
        array that is not 2D or 3D.

    Examples
    --------
    >>> check_labels(np.array([[0, 1], [2, 2]])).shape
    (2, 2)
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"instance labels must have an integer dtype, got {labels.dtype}; "
            "round or cast float labels explicitly"
        )
    if labels.ndim not in (2, 3):
        raise ValueError(f"instance labels must be 2D or 3D, got {labels.ndim}D of shape {labels.shape}")
    # Unsigned dtypes cannot hold negatives, and min() of a big block is a full pass.
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"instance labels must be >= 0 (0 is background), got minimum {labels.min()}")
    return labels


def _check_thickness(thickness: int) -> int:
    # bool is an int subclass, but True as a thickness is surely a mistake.
    if isinstance(thickness, (bool, np.bool_)) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise ValueError(f"contour_thickness must be an integer >= 1 (voxels), got {thickness!r}")
    return int(thickness)


def check_voxel_size(voxel_size: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """``voxel_size`` as ``ndim`` positive floats (ones when None), or a ValueError."""
    if voxel_size is None:
        return (1.0,) * ndim
    spacing = tuple(float(v) for v in voxel_size)
    if len(spacing) != ndim or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"voxel_size must be {ndim} positive numbers, got {tuple(voxel_size)!r}")
    return spacing


def _check_distance_clip(distance_clip: float | None, needed_by: str | None) -> float | None:
    if distance_clip is None:
        if needed_by is not None:
            raise ValueError(f"{needed_by} needs distance_clip (world units): the distance has no natural bound")
        return None
    clip = float(distance_clip)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"distance_clip must be a positive number of world units, got {distance_clip!r}")
    return clip


# --------------------------------------------------------------------------
# single channels


def contour_mask(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Return the contours of the instances (channel ``C``), a boolean array.

    A voxel is contour when it belongs to an instance and a voxel of another
    label (background or another instance) lies within ``thickness`` face
    steps of it (city-block distance). The contour is on the inner side of
    each boundary only, so touching instances each get their own contour and
    ``M = B + C`` holds, as the seed defines ``M``. The edge of the array is
    not a boundary: an instance cut by the field of view gets no contour
    there, so a block that reaches the volume's edge agrees with the whole
    volume.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 is background.
    thickness : int
        Width of the contour in voxels, along every axis (>= 1).

    Examples
    --------
    >>> labels = np.zeros((5, 6), np.uint8)
    >>> labels[1:4, 1:3], labels[1:4, 3:5] = 1, 2
    >>> contour_mask(labels).astype(int)
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]])
    """
    labels = check_labels(labels)
    return _contour(labels, _check_thickness(thickness))


def _contour(labels: np.ndarray, thickness: int) -> np.ndarray:
    # A voxel sees another label within the ball iff the max or the min over
    # the ball differs from its own label; one grey dilation and one erosion
    # with an L1 ball of radius `thickness` do that for all voxels at once.
    # mode="nearest" only repeats voxels already inside the ball, so the
    # array's edge is never a boundary. Only equality matters, so dense ids
    # first: scipy's rank filters round uint64 ids above 2**53.
    labels, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    ball = ndi.iterate_structure(ndi.generate_binary_structure(labels.ndim, 1), thickness)
    highest = ndi.maximum_filter(labels, footprint=ball, mode="nearest")
    lowest = ndi.minimum_filter(labels, footprint=ball, mode="nearest")
    return (labels != 0) & ((highest != labels) | (lowest != labels))


def inside_mask(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Return each instance without its contour (channel ``B``), boolean.

    Examples
    --------
    >>> labels = np.zeros((5, 5), np.uint8)
    >>> labels[1:4, 1:4] = 3
    >>> inside_mask(labels).astype(int)[2]
    array([0, 0, 1, 0, 0])
    """
    labels = check_labels(labels)
    return (labels != 0) & ~_contour(labels, _check_thickness(thickness))


def foreground_mask(labels: np.ndarray) -> np.ndarray:
    """Return the foreground (channel ``M``), boolean: every instance voxel.

    Examples
    --------
    >>> foreground_mask(np.array([[0, 4], [9, 0]])).tolist()
    [[False, True], [True, False]]
    """
    return check_labels(labels) != 0


def _distance_to(mask: np.ndarray, spacing: tuple[float, ...], clip: float | None) -> np.ndarray:
    # scipy returns garbage for an array without zeros; no contour at all
    # means "infinitely far", which the clip then saturates.
    if not mask.any():
        distance = np.full(mask.shape, np.inf)
    else:
        distance = ndi.distance_transform_edt(~mask, sampling=spacing)
    if clip is not None:
        np.minimum(distance, clip, out=distance)
    return distance


def contour_distance(
    labels: np.ndarray,
    thickness: int = 1,
    voxel_size: Sequence[float] | None = None,
    distance_clip: float | None = None,
) -> np.ndarray:
    """Return channel ``D``: inside ``B``, the distance to the instance contour.

    The distance is Euclidean, in world units when ``voxel_size`` is given
    (voxels otherwise), measured from the voxel centre to the nearest contour
    voxel's centre; it is 0 on contours and background. The seed defines no
    normalisation, so none is applied; ``distance_clip`` saturates the
    distance there (``min(distance, distance_clip)``), which bounds the context
    a block needs (see :func:`channels_context`).

    The nearest contour voxel of a voxel of instance ``i`` is always one of
    ``i``'s own contour voxels: a monotone face-connected path to any other
    voxel stays inside that voxel's bounding box, so it is shorter at every
    step, and it leaves ``i`` through a contour voxel of ``i``. One distance
    transform of the whole contour map therefore serves all instances.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 is background.
    thickness : int
        Contour width in voxels (see :func:`contour_mask`).
    voxel_size : sequence of float, optional
        Size of a voxel along each axis, in world units.
    distance_clip : float, optional
        Saturate distances at this many world units. Without it, voxels of
        an array with no contour at all get ``inf``.

    Returns
    -------
    ndarray of float64

    Examples
    --------
    >>> labels = np.zeros((7, 7), np.uint8)
    >>> labels[1:6, 1:6] = 1
    >>> d = contour_distance(labels, voxel_size=(2, 1))   # rows are 2 units apart
    >>> d[3].tolist()
    [0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]
    >>> d[:, 3].tolist()
    [0.0, 0.0, 2.0, 2.0, 2.0, 0.0, 0.0]
    """
    labels = check_labels(labels)
    contour = _contour(labels, _check_thickness(thickness))
    spacing = check_voxel_size(voxel_size, labels.ndim)
    clip = _check_distance_clip(distance_clip, None)
    return _d_channel(labels, contour, spacing, clip)


def _d_channel(labels: np.ndarray, contour: np.ndarray, spacing: tuple[float, ...], clip: float | None) -> np.ndarray:
    inside = (labels != 0) & ~contour
    return np.where(inside, _distance_to(contour, spacing, clip), 0.0)


def contour_distance_v2(
    labels: np.ndarray,
    distance_clip: float,
    thickness: int = 1,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Return channel ``Dv2``: a distance map that also covers the background.

    The seed's piecewise definition over the binary mask ``A`` (channel
    ``B``), the background and the contour ``C`` is only shown as a figure;
    what it fixes in words is that the map extends ``D`` to the background
    and that the watershed grows seeds taken where ``Dv2`` is *low* (object
    cores, and in ``BDv2`` the background far from objects) over ``Dv2``, so
    contours must be its ridges. With ``c = distance_clip``::

        Dv2(x) = c - min(dist(x, C), c)   for x in A   (low in object cores)
        Dv2(x) = c                        for x in C   (the ridges)
        Dv2(x) = c - min(dist(x, C), c)   for x in background

    ``c`` replaces BiaPy's normalisation by the largest distance, which
    depends on the whole volume and so could not be computed per block. For
    a background voxel the nearest contour voxel is also its nearest
    foreground voxel (same monotone-path argument as in
    :func:`contour_distance`), so ``dist(x, C)`` is the distance to the
    objects there. Distances are Euclidean, in world units if ``voxel_size``
    is given.

    Examples
    --------
    >>> labels = np.zeros((7, 7), np.uint8)
    >>> labels[1:6, 1:6] = 1
    >>> contour_distance_v2(labels, distance_clip=3)[3].tolist()
    [2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0]
    """
    labels = check_labels(labels)
    clip = _check_distance_clip(distance_clip, "Dv2")
    contour = _contour(labels, _check_thickness(thickness))
    return _dv2_channel(contour, check_voxel_size(voxel_size, labels.ndim), clip)


def _dv2_channel(contour: np.ndarray, spacing: tuple[float, ...], clip: float) -> np.ndarray:
    # The three pieces of the definition collapse into one expression,
    # because the distance is 0 on the contour itself.
    return clip - _distance_to(contour, spacing, clip)


def central_points(labels: np.ndarray, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Return channel ``P``: one central voxel per instance, boolean.

    The seed asks for "the central point of the instances". We take the
    centre of mass of the instance's voxels, rounded to the nearest voxel
    (halves round up). When that voxel is not part of the instance (a
    C-shaped or split instance), the instance voxel nearest to the centre of
    mass (in world units) is used instead, the first in C order on ties, so
    the point always lies on its instance. That also makes ``P`` blockwise
    exact: an instance that does not reach a block's write ROI cannot put a
    point inside it.

    All arithmetic is on coordinates relative to the instance's bounding
    box, in integers up to the final tie-break, so the same instance gives
    the same point wherever a block cuts the volume.

    Examples
    --------
    >>> labels = np.zeros((5, 6), np.uint8)
    >>> labels[1:4, 1:5] = 2            # 3 x 4: the centre (2, 2.5) rounds up
    >>> np.argwhere(central_points(labels)).tolist()
    [[2, 3]]
    """
    labels = check_labels(labels)
    spacing = check_voxel_size(voxel_size, labels.ndim)
    points = np.zeros(labels.shape, bool)
    # find_objects allocates one slot per id up to the largest, so dense ids
    # first: global ids (block_id * ids_per_block + ...) are huge.
    compact, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    for index, box in enumerate(ndi.find_objects(compact), start=1):
        if box is None:
            continue
        coords = np.nonzero(compact[box] == index)
        point = _central_voxel(coords, spacing)
        points[tuple(s.start + p for s, p in zip(box, point))] = True
    return points


def _central_voxel(coords: tuple[np.ndarray, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    count = len(coords[0])
    sums = [int(c.sum(dtype=np.int64)) for c in coords]
    # Round sums / count half up in exact integer arithmetic.
    rounded = tuple((2 * s + count) // (2 * count) for s in sums)
    on_instance = np.ones(count, bool)
    for c, r in zip(coords, rounded):
        on_instance &= c == r
    if on_instance.any():
        return rounded
    # Squared world distance to the exact centroid, scaled by count**2 so the
    # centroid stays an integer; argmin keeps the first voxel on ties.
    cost = np.zeros(count)
    for c, s, size in zip(coords, sums, spacing):
        cost += (size * (count * c.astype(np.float64) - s)) ** 2
    best = int(np.argmin(cost))
    return tuple(int(c[best]) for c in coords)


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
