"""Fragments (an over-segmentation) of one block, by one of three methods.

Fragments should split every object into a few pieces, and no piece should
straddle two objects: a piece that does can never be split again by the
agglomeration. The methods (``FRAGMENT_METHODS``):

``boundary_watershed``
    A seeded watershed of the boundary map itself (high on membranes): the
    map is smoothed a little, its local minima at least ``min_seed_distance``
    apart (plateaus count as one seed) seed a flood of the map. The basins
    follow the membranes the classifier saw, which is what a real network's
    noisy output needs.
``distance_watershed``
    The boundary map is thresholded; the distance (in nm, so anisotropic data
    works) from each inside voxel to the nearest boundary peaks in the middle
    of objects; its local maxima seed a watershed of the inverted distance.
    Good on clean affinities, where the threshold finds every membrane.
``affinity_watershed``
    A seeded watershed over the affinity graph itself (see
    :mod:`workers.affinity_watershed`): edges weighted by one minus their
    affinity flood from seeds in Prim's order, so every fragment border lies
    on the edges where the affinities are low, one voxel thin or not. The
    seeds are the minima of the smoothed voxel map that takes each voxel's
    highest ``1 - affinity``. What sharp affinities (serial-section EM) need.
``mutex_watershed``
    The mutex watershed of the nearest-neighbour affinities plus a bias, as
    volara makes fragments: no seeds, attractive where an affinity exceeds
    ``-bias``, repulsive below; pieces under ``mws_min_size`` voxels (noise
    makes many single voxels) are flooded from their neighbours.

The watersheds flood with linear-time bucket queues
(:mod:`workers.watershed` over voxels, :mod:`workers.affinity_watershed`
over edges).

Examples
--------
>>> import numpy as np
>>> affs = np.ones((3, 8, 16, 16), np.float32)
>>> affs[:, :, :, 8] = 0          # a wall splitting the block in two
>>> fragments = watershed_from_affinities(affs, voxel_size=(10, 10, 10), min_seed_distance=30)
>>> int(fragments.max()) >= 2, bool(fragments[0, 0, 0] != fragments[0, 0, 15])
(True, True)
"""

from __future__ import annotations

from typing import Sequence, Union

import edt
import fastremap
import numba
import numpy as np
from scipy import ndimage

from workers.affinity_watershed import affinity_seeds, edge_boundary, edge_levels, edge_watershed
from workers.seeds import minima_seeds
from workers.smoothing import smoothed_levels
from workers.watershed import quantize, seeded_watershed


def mean_affinity(affinities: np.ndarray, channels: int = 3) -> np.ndarray:
    """Mean of the first ``channels`` affinity channels as float32 in [0, 1].

    uint8 affinities are read as value / 255, the usual storage.
    """
    affs = affinities[:channels]
    if affs.dtype == np.uint8:
        return affs.mean(axis=0, dtype=np.float32) / np.float32(255)
    return affs.mean(axis=0, dtype=np.float32)


SeedDistance = Union[float, Sequence[float]]


def seed_distances(min_seed_distance: SeedDistance, ndim: int) -> tuple[float, ...]:
    """``min_seed_distance`` per axis: a number for every axis, or one per axis as given (the last ``ndim``)."""
    if isinstance(min_seed_distance, (int, float, np.number)):
        return (float(min_seed_distance),) * ndim
    distances = tuple(float(d) for d in min_seed_distance)
    if len(distances) < ndim:
        raise ValueError(f"min_seed_distance {list(distances)}: one per axis ({ndim}) expected")
    return distances[len(distances) - ndim:]


def _seed_footprint(min_seed_distance: SeedDistance, voxel_size: Sequence[float]) -> tuple[int, ...]:
    # An odd window of about min_seed_distance nm per axis: two maxima closer
    # than that cannot both be the maximum of their window. At least 3 voxels:
    # in a window of 1 every voxel is its own maximum, all inside voxels become
    # one seed and a small min_seed_distance would give fewer fragments. A
    # distance of 0 asks for a window of 1 on purpose: the affinity
    # watershed's seeds per section, joined across sections by their z edges.
    distances = seed_distances(min_seed_distance, len(voxel_size))
    return tuple(1 if d == 0 else max(3, 2 * int(d / (2 * v)) + 1) for d, v in zip(distances, voxel_size))


FRAGMENT_METHODS = ("affinity_watershed", "boundary_watershed", "distance_watershed", "mutex_watershed")

# The inverted distance is flooded as uint16 levels of this fraction of the
# smallest voxel: fine enough that quantising changes no basin boundary a
# voxel grid can show, and fixed (not scaled per block), so a block floods
# exactly as the whole volume does.
_DISTANCE_LEVELS_PER_VOXEL = 16


def _distance_watershed(
    inside: np.ndarray, voxel_size: Sequence[float], min_seed_distance: SeedDistance, mask: np.ndarray | None
) -> np.ndarray:
    """Seeded watershed of one 2D or 3D inside mask (boundary voxels join a basin too); labels 1..n, int64."""
    if not inside.any():
        return np.zeros(inside.shape, np.int64)
    # The edt package gives the same exact Euclidean distances as scipy's
    # (float32, bit for bit here) at about a fifth of the time.
    distance = edt.edt(inside, anisotropy=tuple(float(v) for v in voxel_size), parallel=1)
    peaks = ndimage.maximum_filter(distance, size=_seed_footprint(min_seed_distance, voxel_size), mode="nearest")
    maxima = (distance == peaks) & inside
    seeds, _ = ndimage.label(maxima, structure=np.ones((3,) * distance.ndim, bool))
    step = min(voxel_size) / _DISTANCE_LEVELS_PER_VOXEL
    levels = quantize(-distance, -65535 * step, 0.0, 65536)
    return seeded_watershed(levels, seeds, mask=mask)


def _flood_levels(boundary: np.ndarray, voxel_size: Sequence[float], smooth_sigma: float) -> np.ndarray:
    """The boundary map smoothed (Gaussian, ``smooth_sigma`` nm) and quantised to 256 levels for the flood."""
    # smoothed_levels is scipy's gaussian_filter(mode="nearest", truncate=3) + quantize, compiled
    sigma = tuple(smooth_sigma / v for v in voxel_size) if smooth_sigma > 0 else (0.0,) * len(voxel_size)
    return smoothed_levels(boundary, sigma)


def _boundary_watershed(
    boundary: np.ndarray, voxel_size: Sequence[float], min_seed_distance: SeedDistance, smooth_sigma: float,
    mask: np.ndarray | None,
) -> np.ndarray:
    """Seeded watershed of one 2D or 3D boundary map in [0, 1]; labels 1..n, int64."""
    levels = _flood_levels(boundary, voxel_size, smooth_sigma)
    seeds = minima_seeds(levels, _seed_footprint(min_seed_distance, voxel_size), mask)
    return seeded_watershed(levels, seeds, mask=mask)


def _affinity_watershed(
    affinities: np.ndarray, voxel_size: Sequence[float], min_seed_distance: SeedDistance, smooth_sigma: float,
    mask: np.ndarray | None,
) -> np.ndarray:
    """Seeded watershed over the edges of one 2D or 3D block's affinities (one channel per axis); labels 1..n, int64."""
    levels = edge_levels(affinities)
    seed_map = _flood_levels(edge_boundary(levels), voxel_size, smooth_sigma)
    seeds = affinity_seeds(seed_map, _seed_footprint(min_seed_distance, voxel_size), levels, mask)
    return edge_watershed(levels, seeds, mask=mask)


def _mutex_fragments(
    affinities: np.ndarray, boundary: np.ndarray, index: tuple, voxel_size: Sequence[float], bias: float,
    min_size: int, smooth_sigma: float, mask: np.ndarray | None,
) -> np.ndarray:
    """Mutex watershed pieces of at least ``min_size`` voxels; the debris is flooded from them along the boundary map.

    With nearest-neighbour affinities alone, noise leaves many voxels whose
    every edge repels: single-voxel pieces that no later threshold merges
    (on gala's boundary map, a third of all voxels). Flooding them from the
    pieces around them, as the watersheds flood, keeps the mutex
    watershed's decisions where it made real ones.
    """
    from workers.mutex import mutex_watershed

    ndim = len(voxel_size)
    channels = affinities[(slice(3 - ndim, 3),) + index]
    offsets = [[-1 if i == j else 0 for j in range(ndim)] for i in range(ndim)]
    pieces = mutex_watershed(channels, offsets, bias=bias, mask=mask).astype(np.int64)
    if min_size <= 1:
        return pieces
    sizes = np.bincount(pieces.ravel())
    pieces[sizes[pieces] < min_size] = 0
    return seeded_watershed(_flood_levels(boundary[index], voxel_size, smooth_sigma), pieces, mask=mask)


def boundary_from_affinities(affinities: np.ndarray) -> np.ndarray:
    """A boundary map from affinities: one minus the mean nearest-neighbour affinity (float32)."""
    return np.float32(1) - mean_affinity(affinities)


def affinities_from_boundaries(boundary: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities from a boundary map, float32 ``(3, z, y, x)``.

    The affinity between a voxel and its neighbour one step back along an
    axis is one minus the larger boundary value of the two, so a membrane
    one voxel thick cuts both edges that cross it. The first plane along each
    axis, which has no neighbour there, gets 0. uint8 maps are read as
    value / 255.

    Examples
    --------
    >>> b = np.array([[[0.1, 0.9, 0.2]]], np.float32)
    >>> affinities_from_boundaries(b)[2].astype(float).round(2).tolist()
    [[[0.0, 0.1, 0.1]]]
    """
    if boundary.dtype == np.uint8:
        boundary = boundary.astype(np.float32) / np.float32(255)
    boundary = np.asarray(boundary, np.float32)
    affinities = np.zeros((boundary.ndim,) + boundary.shape, np.float32)
    for axis in range(boundary.ndim):
        here = [slice(None)] * boundary.ndim
        before = [slice(None)] * boundary.ndim
        here[axis], before[axis] = slice(1, None), slice(None, -1)
        target = affinities[(axis,) + tuple(here)]
        np.maximum(boundary[tuple(here)], boundary[tuple(before)], out=target)
        np.subtract(np.float32(1), target, out=target)
    return affinities


def make_fragments(
    method: str,
    affinities: np.ndarray | None,
    boundary: np.ndarray,
    voxel_size: Sequence[float],
    *,
    boundary_threshold: float = 0.5,
    min_seed_distance: SeedDistance = 100.0,
    smooth_sigma: float = 0.0,
    mws_bias: float = -0.7,
    mws_min_size: int = 10,
    fragments_in_xy: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Fragments of a block by ``method`` (see the module docstring).

    Parameters
    ----------
    method : str
        One of :data:`FRAGMENT_METHODS`.
    affinities : ndarray, shape (3, z, y, x), or None
        Nearest-neighbour affinities, float32 in [0, 1] or uint8 scaled by
        255; ``affinity_watershed`` and ``mutex_watershed`` need them.
    boundary : ndarray, shape (z, y, x)
        float32 boundary map in [0, 1], high on membranes (for the watersheds).
    voxel_size : sequence of float
        nm per voxel, for distances, smoothing and the seed spacing.
    boundary_threshold : float
        ``distance_watershed``: voxels whose boundary value is at least
        ``1 - boundary_threshold`` (mean affinity at most the threshold) are boundary.
    min_seed_distance : float or sequence of float
        nm between seeds (the watersheds), for every axis or per axis
        (z, y, x); 0 on an axis: a seed window of one voxel there (the
        affinity watershed's seeds per section).
    smooth_sigma : float
        ``boundary_watershed`` and ``affinity_watershed``: Gaussian sigma in
        nm applied to the map the seeds come from (and, for the boundary
        watershed, that it floods).
    mws_bias : float
        ``mutex_watershed``: added to the affinities; negative values repel.
    mws_min_size : int
        ``mutex_watershed``: pieces smaller than this (voxels) are flooded
        from their neighbours along the boundary map.
    fragments_in_xy : bool
        Segment each z section on its own (ids stay unique across sections).
    mask : ndarray of bool, optional
        Voxels to segment; fragments are 0 elsewhere.

    Returns
    -------
    ndarray of uint64, shape (z, y, x)
        Fragment ids 1..n; 0 is background.
    """
    if method not in FRAGMENT_METHODS:
        raise ValueError(f"unknown fragments method {method!r}, expected one of {', '.join(FRAGMENT_METHODS)}")

    def segment(index: tuple, spacing: Sequence[float]) -> np.ndarray:
        part_mask = None if mask is None else mask[index]
        if method == "boundary_watershed":
            return _boundary_watershed(boundary[index], spacing, min_seed_distance, smooth_sigma, part_mask)
        if method == "affinity_watershed":
            # the channels of the axes segmented: all three, or y and x of one section
            channels = affinities[(slice(3 - len(spacing), 3),) + index]
            return _affinity_watershed(channels, spacing, min_seed_distance, smooth_sigma, part_mask)
        if method == "distance_watershed":
            inside = boundary[index] < np.float32(1 - boundary_threshold)
            if part_mask is not None:
                inside &= part_mask
            return _distance_watershed(inside, spacing, min_seed_distance, part_mask)
        return _mutex_fragments(affinities, boundary, index, spacing, mws_bias, mws_min_size, smooth_sigma, part_mask)

    if not fragments_in_xy:
        labels = segment((slice(None),) * boundary.ndim, voxel_size)
        # labels are never negative: int64 reads as uint64 without a copy
        return labels.view(np.uint64) if labels.dtype == np.int64 else labels.astype(np.uint64)
    fragments = np.zeros(boundary.shape, np.uint64)
    next_id = 0
    for z in range(boundary.shape[0]):
        section = segment((z,), voxel_size[1:]).astype(np.uint64)
        section[section > 0] += np.uint64(next_id)
        next_id = int(section.max(initial=next_id))
        fragments[z] = section
    return fragments


def watershed_from_affinities(
    affinities: np.ndarray,
    voxel_size: Sequence[float],
    boundary_threshold: float = 0.5,
    min_seed_distance: float = 100.0,
    fragments_in_xy: bool = False,
    min_mean_affinity: float | None = None,
) -> np.ndarray:
    """Distance-transform watershed fragments of a block from its affinities.

    Parameters
    ----------
    affinities : ndarray, shape (C, z, y, x)
        Affinities in [0, 1] (float) or scaled by 255 (uint8); the first
        three channels are the nearest-neighbour ones.
    voxel_size : sequence of float
        Voxel size in nm, for the distance transform and the seed spacing.
    boundary_threshold : float
        Voxels whose mean affinity is at most this are boundary.
    min_seed_distance : float
        Minimal distance between seeds in nm.
    fragments_in_xy : bool
        Run one 2D watershed per z section (ids stay unique across sections).
    min_mean_affinity : float, optional
        Fragments whose mean affinity is below this become background (0).

    Returns
    -------
    ndarray of uint64, shape (z, y, x)
        Fragment ids 1..n in a deterministic order; 0 is background.
    """
    mean = mean_affinity(affinities)
    fragments = make_fragments(
        "distance_watershed", affinities, np.float32(1) - mean, voxel_size, boundary_threshold=boundary_threshold,
        min_seed_distance=min_seed_distance, fragments_in_xy=fragments_in_xy,
    )
    if min_mean_affinity is not None:
        fragments = drop_weak_fragments(fragments, mean, min_mean_affinity)
    return fragments


def drop_weak_fragments(fragments: np.ndarray, mean_affs: np.ndarray, min_mean_affinity: float) -> np.ndarray:
    """Set fragments whose mean affinity is below ``min_mean_affinity`` to 0."""
    labels, means = _means_by_label(fragments, mean_affs)
    weak = means < min_mean_affinity
    weak &= labels != 0
    return fastremap.mask(fragments, labels[weak].tolist(), in_place=False)


def make_ids_global(fragments: np.ndarray, block_id: int, ids_per_block: int) -> np.ndarray:
    """Renumber to 1..n (order of first appearance) and add ``block_id * ids_per_block``.

    Raises
    ------
    ValueError
        If the block has more fragments than ``ids_per_block`` allows.
    """
    local, _ = _local_ids(fragments, block_id, ids_per_block)
    return _add_block_base(local, block_id, ids_per_block)


def _local_ids(fragments: np.ndarray, block_id: int, ids_per_block: int) -> tuple[np.ndarray, int]:
    """Ids renumbered 1..n in order of first appearance (0 stays 0), and n; n must fit the block's id range."""
    local, _ = fastremap.renumber(np.ascontiguousarray(fragments, dtype=np.uint64), preserve_zero=True)
    count = int(local.max(initial=0))
    if count >= ids_per_block:
        raise ValueError(f"block {block_id} has {count} fragments, more than ids_per_block={ids_per_block} allows")
    return local, count


def _add_block_base(local: np.ndarray, block_id: int, ids_per_block: int) -> np.ndarray:
    """``local`` as uint64 with ``block_id * ids_per_block`` added to every non-zero id."""
    out = local.astype(np.uint64)
    np.add(out, np.uint64(block_id) * np.uint64(ids_per_block), out=out, where=out != 0)
    return out


@numba.njit(cache=True, nogil=True)
def _label_sums(labels: np.ndarray, count: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..count of a 3D array: voxels, coordinate sums (z, y, x) and the sum of ``values``."""
    sizes = np.zeros(count + 1, np.int64)
    coordinates = np.zeros((count + 1, 3), np.float64)
    totals = np.zeros(count + 1, np.float64)
    depth, height, width = labels.shape
    for z in range(depth):
        for y in range(height):
            for x in range(width):
                label = labels[z, y, x]
                sizes[label] += 1
                coordinates[label, 0] += z
                coordinates[label, 1] += y
                coordinates[label, 2] += x
                totals[label] += values[z, y, x]
    return sizes, coordinates, totals


def global_fragments_and_nodes(
    fragments: np.ndarray,
    block_id: int,
    ids_per_block: int,
    voxel_size: Sequence[float],
    offset: Sequence[float],
    values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_ids_global`, :func:`fragment_nodes` and :func:`mean_per_fragment` in one pass.

    The three give the same results separately, but each sorts or hashes
    every voxel again; a fragments block only needs one count over its
    renumbered labels.

    Parameters
    ----------
    fragments : ndarray, shape (z, y, x)
        The block's fragments (write ROI), any ids; 0 is background.
    block_id, ids_per_block : int
        As for :func:`make_ids_global`.
    voxel_size, offset : sequence of float
        As for :func:`fragment_nodes`.
    values : ndarray, shape (z, y, x)
        Averaged per fragment (e.g. the mean affinity).

    Returns
    -------
    global_fragments, ids, centers, sizes, means : ndarray
        The relabelled block (uint64), then per fragment, sorted by id: its
        id, centre in nm ``(n, 3)``, size in voxels and mean of ``values``.
    """
    local, count = _local_ids(fragments, block_id, ids_per_block)
    # one fixed dtype: numba compiles (and caches) one version per argument type
    sizes, coordinates, totals = _label_sums(local.astype(np.uint32, copy=False), count, np.asarray(values, np.float32))
    out = _add_block_base(local, block_id, ids_per_block)
    ids = np.arange(1, count + 1, dtype=np.uint64) + np.uint64(block_id) * np.uint64(ids_per_block)
    sizes = sizes[1:]
    centers = (coordinates[1:] / np.maximum(sizes, 1)[:, None] + 0.5) * np.asarray(voxel_size, np.float64)
    centers += np.asarray(offset, np.float64)
    means = totals[1:] / np.maximum(sizes, 1)
    return out, ids, centers, sizes, means


def fragment_nodes(
    fragments: np.ndarray, voxel_size: Sequence[float], offset: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAG nodes of a block: ids, centres (world units, nm) and sizes in voxels.

    The centre is the mean voxel position; ``offset`` is the world position
    of ``fragments[0, 0, 0]``'s corner, and a voxel's position is its centre.
    """
    # fastremap's hash-based unique instead of np.unique, whose sort of every
    # voxel was a third of a fragments block's time
    ids, dense, sizes = fastremap.unique(fragments, return_inverse=True, return_counts=True)
    dense = dense.reshape(fragments.shape)
    centers = np.empty((len(ids), fragments.ndim), np.float64)
    for axis in range(fragments.ndim):
        # Sum of coordinates along one axis = bincount over the other axes'
        # planes, weighted by the coordinate: no full-size coordinate array.
        moved = np.moveaxis(dense, axis, 0)
        sums = np.zeros(len(ids), np.float64)
        for index in range(moved.shape[0]):
            if index:
                sums += index * np.bincount(moved[index].ravel(), minlength=len(ids))
        centers[:, axis] = (sums / np.maximum(sizes, 1) + 0.5) * voxel_size[axis] + offset[axis]
    keep = ids != 0
    return ids[keep].astype(np.uint64), centers[keep], sizes[keep].astype(np.int64)


def mean_per_fragment(fragments: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each fragment in ``ids`` (sorted, as ``fragment_nodes`` gives them)."""
    labels, means = _means_by_label(fragments, values)
    return means[np.searchsorted(labels, ids)]


def _means_by_label(fragments: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted labels of ``fragments`` (0 included if present) and the mean of ``values`` over each."""
    labels, inverse, counts = fastremap.unique(fragments, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse.ravel(), weights=values.ravel().astype(np.float64), minlength=len(labels))
    return labels, sums / np.maximum(counts, 1)


def compile_kernels() -> None:
    """Load (or compile, the first time on a machine) the numba kernels of the fragments stage.

    Called once per worker process when a run starts, so the first block a
    worker gets does not pay for it.
    """
    tiny = np.zeros((2, 2, 2), np.float32)
    make_fragments(
        "boundary_watershed", np.zeros((3, 2, 2, 2), np.float32), tiny, (1, 1, 1), min_seed_distance=1, smooth_sigma=1
    )
    make_fragments("distance_watershed", np.zeros((3, 2, 2, 2), np.float32), tiny, (1, 1, 1), min_seed_distance=1)
    for affinities in (np.zeros((3, 2, 2, 2), np.float32), np.zeros((3, 2, 2, 2), np.uint8)):
        make_fragments("affinity_watershed", affinities, tiny, (1, 1, 1), min_seed_distance=1, smooth_sigma=1)
        make_fragments(
            "affinity_watershed", affinities, tiny, (1, 1, 1), min_seed_distance=1, smooth_sigma=1, fragments_in_xy=True
        )
    global_fragments_and_nodes(np.ones((2, 2, 2), np.uint64), 0, 9, (1, 1, 1), (0, 0, 0), tiny)
