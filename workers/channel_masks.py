"""The single BiaPy channels of instance labels: B, C, D, M, P and Dv2.

Each function computes one channel of :mod:`workers.channels` for a whole
label image: :func:`inside_mask` (``B``), :func:`contour_mask` (``C``),
:func:`contour_distance` (``D``), :func:`foreground_mask` (``M``),
:func:`central_points` (``P``) and :func:`contour_distance_v2` (``Dv2``).

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((5, 5), np.uint8)
>>> labels[1:4, 1:4] = 1
>>> int(inside_mask(labels).sum()), int(contour_mask(labels).sum())
(1, 8)
"""

from __future__ import annotations

from typing import Sequence

import fastremap
import numpy as np
from scipy import ndimage as ndi

from workers.channel_checks import _check_distance_clip, _check_thickness, check_labels, check_voxel_size


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
