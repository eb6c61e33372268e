"""A seeded watershed over the affinity graph: fragment borders on the edges where the affinities drop.

The voxel watersheds of :mod:`workers.watershed` flood a map that gives each
*voxel* a value. Affinities give each *edge* between two neighbouring voxels
a value, and a network trained on serial-section EM makes them sharp: the low
affinities between two cells sit on one edge of the grid, not on a band of
voxels. A voxel map derived from them (one minus the mean affinity of a
voxel's edges) is high on one side of that edge only, and a voxel flood puts
its border one voxel off it. The contact between two such fragments is then
read on edges inside a cell, where the affinities are high, and the
agglomeration merges across the true boundary.

The flood here runs over the edges themselves, as waterz's and volara's
watersheds do: every edge is weighted by ``1 - affinity`` (quantised to 256
levels), and the basins grow from their seeds edge by edge, the lowest edge
out of the flooded region first (Prim's order). The result is the minimum
spanning forest of the grid graph rooted at the seeds, so two basins meet
across the highest edge on the path between their seeds: where the affinity
is lowest. Like the voxel flood it uses one FIFO bucket per level (linear
time, deterministic ties), and every edge enters a bucket at most once.

Seeds come from the voxel map :func:`edge_boundary` (the mean
``1 - affinity`` of a voxel's edges, so both voxels beside a low edge are
high), smoothed and reduced to its box-minimum plateaus by
:func:`workers.seeds.minima_seeds`, as the boundary watershed seeds.

Affinity channel ``c`` at voxel ``p`` is the edge between ``p`` and its
neighbour one step back along axis ``c`` (offsets ``-z``, ``-y``, ``-x``),
the convention of the rest of blockseg.

Examples
--------
>>> import numpy as np
>>> affs = np.ones((2, 1, 6), np.float32)   # 2D: channels (y, x), one row of 6 voxels
>>> affs[1, 0, 3] = 0.1                      # the x edge between x = 2 and x = 3 is low
>>> markers = np.array([[1, 0, 0, 0, 0, 2]])
>>> edge_watershed(edge_levels(affs), markers).tolist()
[[1, 1, 1, 2, 2, 2]]
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

from workers.seeds import _find, _number_roots, box_minimum

__all__ = ["affinity_seeds", "edge_boundary", "edge_levels", "edge_watershed"]

_NUM_LEVELS = 256


@numba.njit(cache=True, nogil=True)
def _levels_kernel(affinities: np.ndarray, scale: float) -> np.ndarray:
    """``rint(clip(1 - a / scale, 0, 1) ** 2 * 255)`` per channel as uint8 (float32 arithmetic)."""
    out = np.empty(affinities.shape, np.uint8)
    flat = affinities.ravel()
    flat_out = out.ravel()
    inverse = np.float32(1.0 / scale)
    top = np.float32(255.0)
    for i in range(flat.size):
        v = np.float32(1.0) - np.float32(flat[i]) * inverse
        if v < np.float32(0.0):
            v = np.float32(0.0)
        elif v > np.float32(1.0):
            v = np.float32(1.0)
        flat_out[i] = np.uint8(np.rint(v * v * top))
    return out


def edge_levels(affinities: np.ndarray) -> np.ndarray:
    """The flood level of every edge: ``(1 - affinity) ** 2`` on 256 levels, uint8, same shape as ``affinities``.

    Prim's order depends only on the order of the edge weights, so any
    increasing function of ``1 - affinity`` floods the same way, up to the
    ties its quantisation makes. The square spends the levels where
    boundaries are (affinities below 0.5 get 192 of the 256) and puts the
    noisy affinities inside cells (above 0.85) on 6 levels, which the flood
    then crosses in one sweep instead of one bucket at a time (1.3x faster
    on the demo's blocks).

    Parameters
    ----------
    affinities : ndarray, shape (C, ...)
        Nearest-neighbour affinities, float in [0, 1] or uint8 scaled by 255.

    Returns
    -------
    ndarray of uint8
        Level 0 for affinity 1 (flooded first), 255 for affinity 0.

    Examples
    --------
    >>> edge_levels(np.array([1.0, 0.9, 0.5, 0.0], np.float32)).tolist()
    [0, 3, 64, 255]
    """
    affinities = np.ascontiguousarray(affinities)
    scale = 255.0 if affinities.dtype == np.uint8 else 1.0
    if affinities.dtype not in (np.uint8, np.float32):
        affinities = affinities.astype(np.float32)
    return _levels_kernel(affinities, scale)


@numba.njit(cache=True, nogil=True)
def _boundary_kernel(levels: np.ndarray) -> np.ndarray:
    """Per voxel of a (C, z, y, x) level array, the mean level of its edges inside the array, float32 in [0, 1]."""
    channels, nz, ny, nx = levels.shape
    out = np.zeros((nz, ny, nx), np.float32)
    total = np.zeros(nx, np.float32)
    count = np.zeros(nx, np.float32)
    scale = np.float32(1.0 / 255.0)
    for z in range(nz):
        for y in range(ny):
            total[:] = 0
            count[:] = 0
            for c in range(channels):
                axis = 3 - channels + c  # the channels are the edges along the last `channels` axes
                for x in range(nx):
                    # the edge back along the axis is stored at the voxel, the
                    # edge ahead at the neighbour ahead; the first plane's edge
                    # back leads out of the array and is not counted
                    if axis == 0:
                        has_back, has_ahead = z > 0, z + 1 < nz
                        ahead = levels[c, z + 1, y, x] if has_ahead else np.uint8(0)
                    elif axis == 1:
                        has_back, has_ahead = y > 0, y + 1 < ny
                        ahead = levels[c, z, y + 1, x] if has_ahead else np.uint8(0)
                    else:
                        has_back, has_ahead = x > 0, x + 1 < nx
                        ahead = levels[c, z, y, x + 1] if has_ahead else np.uint8(0)
                    if has_back:
                        total[x] += np.float32(levels[c, z, y, x])
                        count[x] += 1
                    if has_ahead:
                        total[x] += np.float32(ahead)
                        count[x] += 1
            for x in range(nx):
                if count[x] > 0:
                    out[z, y, x] = total[x] / count[x] * scale
    return out


def edge_boundary(levels: np.ndarray) -> np.ndarray:
    """A voxel boundary map from edge levels: the mean ``1 - affinity`` of a voxel's edges.

    Both voxels beside a low-affinity edge share it, so the map is as high
    on one side of a boundary as on the other, and the seeds taken from its
    minima keep off both. (The boundary map of the voxel watersheds, one
    minus the mean of a voxel's own channels, sees an edge only at the
    voxel that stores it.) A mean, not a maximum: where one axis's edges are
    all low (sections whose z affinities are 0) the others still shape it.

    Parameters
    ----------
    levels : ndarray of uint8, shape (C, z, y, x) or (C, y, x)
        :func:`edge_levels` of the affinities; the C channels are the edges
        along the last C axes.

    Returns
    -------
    ndarray of float32, shape (z, y, x) or (y, x)
        In [0, 1].
    """
    flat2d = levels.ndim == 3
    volume = levels[:, None] if flat2d else levels
    out = _boundary_kernel(np.ascontiguousarray(volume))
    return out[0] if flat2d else out


@numba.njit(cache=True, nogil=True)
def _join_seed_voxels(candidate: np.ndarray, levels: np.ndarray, join_level: int, parent: np.ndarray) -> np.ndarray:
    """Seeds (int32, raster numbered) of the ``candidate`` voxels joined over their edges at or below ``join_level``.

    ``candidate`` is (z, y, x) bool, ``levels`` (C, z, y, x) with the C
    channels along the last C axes. Each voxel is joined to its earlier face
    neighbours, so the smaller root wins and a root is its seed's first
    voxel in raster order.
    """
    channels, nz, ny, nx = levels.shape
    size = nz * ny * nx
    flat = candidate.ravel()
    for index in range(size):
        parent[index] = index if flat[index] else -1
    strides = (ny * nx, nx, 1)
    for index in range(size):
        if not flat[index]:
            continue
        z = index // strides[0]
        y = (index // nx) % ny
        x = index % nx
        position = (z, y, x)
        for c in range(channels):
            axis = 3 - channels + c
            if position[axis] == 0:
                continue
            other = index - strides[axis]
            if not flat[other] or levels[c, z, y, x] > join_level:
                continue
            a = _find(parent, index)
            b = _find(parent, other)
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
    seeds, _ = _number_roots(parent)
    return seeds.reshape((nz, ny, nx))


def affinity_seeds(
    seed_levels: np.ndarray,
    footprint: Sequence[int],
    levels: np.ndarray,
    mask: np.ndarray | None = None,
    join_level: int = 64,
) -> np.ndarray:
    """Seeds of the affinity watershed: box minima of a voxel map, joined only over high-affinity edges.

    A voxel is a seed voxel where ``seed_levels`` is lowest in the box of
    ``footprint`` around it (as :func:`workers.seeds.minima_seeds`). Seed
    voxels form one seed where an edge of level at most ``join_level`` (the
    default 64: affinity at least 0.5) joins them face to face, so a
    seed never spans a low-affinity edge: not a boundary between cells, and
    not the gap between two sections whose z affinities say they do not
    join. A footprint of 1 section (serial sections) then seeds every
    section, and the z edges join those seeds across sections where the
    cell goes on.

    Parameters
    ----------
    seed_levels : ndarray of uint8 or uint16, 2D or 3D
        The voxel map the seeds are minima of (low inside cells).
    footprint : sequence of int
        Odd box size per axis (voxels).
    levels : ndarray of uint8, shape (C, ...)
        :func:`edge_levels` of the same voxels.
    mask : ndarray of bool, optional
        Voxels outside it are never seeds.
    join_level : int
        Highest edge level two seed voxels join over.

    Returns
    -------
    ndarray of int32
        Seed labels 1..n in raster order of their first voxel, 0 elsewhere.
    """
    flat2d = seed_levels.ndim == 2
    volume = seed_levels[None] if flat2d else seed_levels
    box = (1, *footprint) if flat2d else tuple(footprint)
    candidate = volume == box_minimum(volume, box)
    if mask is not None:
        candidate &= mask[None] if flat2d else mask
    edges = levels[:, None] if flat2d else levels
    parent = np.empty(volume.size, np.int32 if volume.size < 2**31 else np.int64)
    seeds = _join_seed_voxels(candidate, np.ascontiguousarray(edges), int(join_level), parent)
    return seeds[0] if flat2d else seeds


# A cell packs a voxel's label (high 32 bits, signed: 0 unlabelled, -1 the
# border or outside the mask) with the levels of its edges back along each
# axis (8 bits each, axis c of the last C at bit 8 * c). Reading a
# neighbour's cell, which the flood does anyway to see whether it is
# labelled, then also gives the level of the edge to it when it lies ahead,
# and the voxel's own cell gives its edges back: one memory access per
# neighbour, which is what the flood waits on.
_LABEL_SHIFT = 32
_LEVEL_BITS = (1 << _LABEL_SHIFT) - 1
# bits 24..31 of an unlabelled cell: the lowest level at which an edge into it waits (0: none)
_WAITING_SHIFT = 24


@numba.njit(cache=True, nogil=True)
def _grow(
    cells: np.ndarray, strides: np.ndarray, voxel: int, current: int,
    order: np.ndarray, tails: np.ndarray, stack: np.ndarray,
) -> None:
    """Spread ``voxel``'s label over every edge at or below ``current``; queue its region's higher edges.

    All edges waiting in the buckets are at ``current`` or above, so an edge
    at or below it is the lowest way out of the flooded region: Prim's order
    takes it next, and it is taken here at once, depth first, without a trip
    through the buckets. Higher edges to unlabelled voxels are queued at
    their own level.
    """
    label_bits = cells[voxel] & ~np.int64(_LEVEL_BITS)
    channels = strides.size
    # breadth first: the voxels it labels, and the edges it queues, stay
    # close in memory (depth first took 1.3x as long on the demo's blocks)
    first = 0
    last = 1
    stack[0] = voxel
    while first < last:
        here = stack[first]
        first += 1
        own = cells[here]
        for c in range(channels):
            stride = strides[c]
            shift = 8 * (channels - 1 - c)
            for ahead in range(2):
                neighbour = here + stride if ahead else here - stride
                cell = cells[neighbour]
                if (cell >> _LABEL_SHIFT) != 0:  # labelled, or the border
                    continue
                # the edge back along c is stored at the voxel, the edge ahead at the neighbour
                level = ((cell if ahead else own) >> shift) & 255
                if level <= current:
                    cells[neighbour] = cell | label_bits
                    stack[last] = neighbour
                    last += 1
                else:
                    # an edge into this voxel already waiting at this level or
                    # lower comes out first (ties first in, first out): this
                    # one could only find the voxel labelled
                    waiting = (cell >> _WAITING_SHIFT) & 255  # 0: none (a queued level is above current >= 0)
                    if waiting != 0 and waiting <= level:
                        continue
                    cells[neighbour] = (cell & ~np.int64(255 << _WAITING_SHIFT)) | (level << _WAITING_SHIFT)
                    order[tails[level]] = here * 8 + 2 * c + ahead
                    tails[level] += 1


@numba.njit(cache=True, nogil=True)
def _edge_flood(cells: np.ndarray, strides: np.ndarray, order: np.ndarray) -> None:
    """Flood ``cells`` (flat, padded with a border of label -1; seeds > 0) over their edges in place.

    Prim's algorithm with all seeds as roots and a bucket queue: an entry is
    an edge out of the flooded region, its labelled end and direction as
    ``voxel * 8 + 2 * channel + ahead``. The lowest bucket's oldest edge
    labels its other end unless something labelled it first; an edge is
    queued only from its first labelled end, so at most once, and bucket
    ``L`` never holds more than the edges at level ``L``: all buckets share
    one preallocated array. ``current`` never goes down: edges at or below
    it are followed at once (see :func:`_grow`).
    """
    channels = strides.size
    counts = np.zeros(_NUM_LEVELS + 1, np.int64)
    for index in range(cells.size):
        cell = cells[index]
        for c in range(channels):
            counts[((cell >> (8 * c)) & 255) + 1] += 1
    starts = np.cumsum(counts)  # bucket L occupies order[starts[L]:starts[L + 1]]
    heads = starts[:-1].copy()
    tails = starts[:-1].copy()
    stack = np.empty(cells.size, order.dtype)
    # the seed voxels first, then grow each: a voxel that a seed's growth
    # labels must not be taken for a seed (its edges would be queued twice)
    seeds = np.flatnonzero((cells >> _LABEL_SHIFT) > 0)
    for index in seeds:
        _grow(cells, strides, index, 0, order, tails, stack)
    current = 0
    while current < _NUM_LEVELS:
        head = heads[current]
        if head == tails[current]:
            current += 1
            continue
        entry = order[head]
        heads[current] = head + 1
        source = entry >> 3
        stride = strides[(entry & 7) >> 1]
        target = source + stride if entry & 1 else source - stride
        cell = cells[target]
        if (cell >> _LABEL_SHIFT) != 0:  # reached first over another edge
            continue
        cells[target] = cell | (cells[source] & ~np.int64(_LEVEL_BITS))
        _grow(cells, strides, target, current, order, tails, stack)


@numba.njit(cache=True, nogil=True)
def _pack(body: np.ndarray, markers: np.ndarray, levels: np.ndarray) -> None:
    """Fill ``body`` (the padded cells' inside, 3D) with the markers and their edges' levels."""
    channels = levels.shape[0]
    nz, ny, nx = markers.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                cell = np.int64(markers[z, y, x]) << _LABEL_SHIFT
                for c in range(channels):
                    cell |= np.int64(levels[c, z, y, x]) << (8 * (channels - 1 - c))
                body[z, y, x] = cell


def edge_watershed(levels: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Flood ``markers`` over the edges of ``levels``: every reachable voxel gets its basin's seed label.

    Parameters
    ----------
    levels : ndarray of uint8, shape (C, ...)
        :func:`edge_levels`: channel ``c`` at voxel ``p`` is the level of the
        edge between ``p`` and its neighbour one step back along the ``c``-th
        of the last C axes (C equals ``markers.ndim``); low levels flood first.
    markers : ndarray of int
        Seeds, > 0 on seeds and 0 elsewhere, 2D or 3D.
    mask : ndarray of bool, optional
        Where the flood may go; voxels outside it stay 0.

    Returns
    -------
    ndarray of int64
        The labels of ``markers`` spread over the grid; 0 where no seed
        reaches (outside ``mask``, or a region without a seed).
    """
    if levels.dtype != np.uint8:
        raise ValueError(f"levels must be uint8, got {levels.dtype}; see edge_levels()")
    if levels.shape != (markers.ndim,) + markers.shape:
        raise ValueError(f"levels shape {levels.shape} does not fit markers shape {markers.shape}")
    if int(markers.max(initial=0)) >= 2**31:
        raise ValueError("markers must be below 2**31")
    ndim = markers.ndim
    padded = tuple(n + 2 for n in markers.shape)
    inner = tuple(slice(1, -1) for _ in range(ndim))
    # a border of label -1 stops the flood without a bounds check per neighbour
    cells = np.full(padded, np.int64(-1) << _LABEL_SHIFT, np.int64)
    body = cells[inner]
    as3d = (lambda a: a[None]) if ndim == 2 else (lambda a: a)
    _pack(as3d(body), as3d(np.asarray(markers)), np.ascontiguousarray(levels[:, None] if ndim == 2 else levels))
    if mask is not None:
        body[~mask.astype(bool, copy=False)] = np.int64(-1) << _LABEL_SHIFT
    strides = np.array([s // cells.itemsize for s in cells.strides], np.int64)
    flat = cells.reshape(-1)
    # an entry is voxel * 8 + direction: int32 while that fits
    entry_dtype = np.int32 if flat.size * 8 < 2**31 else np.int64
    order = np.empty(ndim * flat.size, entry_dtype)
    _edge_flood(flat, strides, order)
    labels = body >> _LABEL_SHIFT
    np.maximum(labels, 0, out=labels)  # the mask's -1 back to 0
    return labels
