"""Watershed seeds: the plateaus of a level image that are the lowest within a box around them.

A voxel is a seed voxel when no voxel in the box of ``footprint`` centred on
it (edges replicated) lies lower; seed voxels that touch, faces, edges or
corners, form one seed. This is ``levels == minimum_filter(levels,
footprint, mode="nearest")`` followed by ``label`` with a full 3 x 3 x 3
structure in scipy, computed here in three compiled passes: the box minimum
one axis at a time (the two outer axes over whole rows, which vectorise;
the inner axis by van Herk / Gil-Werman, three comparisons per voxel
whatever the box), then a union-find over the seed voxels only, which are a
small fraction of a block. Seeds are numbered in raster order of their first
voxel, as scipy numbers them, so the result is the same array.

Examples
--------
>>> import numpy as np
>>> levels = np.array([[[3, 1, 2, 2, 0, 4]]], np.uint8)
>>> minima_seeds(levels, (1, 1, 3)).tolist()
[[[0, 1, 0, 0, 2, 0]]]
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

__all__ = ["box_minimum", "minima_seeds"]


@numba.njit(cache=True, nogil=True)
def _min_outer_axes(levels: np.ndarray, rz: int, ry: int) -> np.ndarray:
    """Box minimum along z then y, edges replicated (the box clipped to the volume)."""
    nz, ny, nx = levels.shape
    along_z = np.empty_like(levels)
    for z in range(nz):
        along_z[z] = levels[z]
        for dz in range(max(0, z - rz), min(nz, z + rz + 1)):
            for y in range(ny):
                for x in range(nx):
                    if levels[dz, y, x] < along_z[z, y, x]:
                        along_z[z, y, x] = levels[dz, y, x]
    out = np.empty_like(levels)
    for z in range(nz):
        for y in range(ny):
            out[z, y] = along_z[z, y]
            for dy in range(max(0, y - ry), min(ny, y + ry + 1)):
                for x in range(nx):
                    if along_z[z, dy, x] < out[z, y, x]:
                        out[z, y, x] = along_z[z, dy, x]
    return out


@numba.njit(cache=True, nogil=True)
def _min_inner_axis(values: np.ndarray, rx: int) -> None:
    """Box minimum along x in place, edges replicated, by van Herk / Gil-Werman."""
    nz, ny, nx = values.shape
    width = 2 * rx + 1
    padded_length = nx + 2 * rx
    # whole blocks of `width` so the prefix and suffix runs never straddle the end
    length = ((padded_length + width - 1) // width) * width
    line = np.empty(length, values.dtype)
    prefix = np.empty(length, values.dtype)
    suffix = np.empty(length, values.dtype)
    for z in range(nz):
        for y in range(ny):
            row = values[z, y]
            for i in range(length):
                j = min(max(i - rx, 0), nx - 1)
                line[i] = row[j]
            for start in range(0, length, width):
                prefix[start] = line[start]
                for i in range(start + 1, start + width):
                    prefix[i] = min(prefix[i - 1], line[i])
                end = start + width - 1
                suffix[end] = line[end]
                for i in range(end - 1, start - 1, -1):
                    suffix[i] = min(suffix[i + 1], line[i])
            # the box of output x covers padded positions x .. x + width - 1
            for x in range(nx):
                row[x] = min(suffix[x], prefix[x + width - 1])


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        following = parent[i]
        parent[i] = root
        i = following
    return root


@numba.njit(cache=True, nogil=True)
def _number_roots(parent: np.ndarray) -> tuple:
    """Seed labels (flat int32) of a union-find forest whose roots are their sets' first voxels, and their count.

    ``parent`` is -1 outside every set. Seeds are numbered 1..n in raster
    order of their first voxel, as scipy's ``label`` numbers them.
    """
    size = parent.size
    seeds = np.zeros(size, np.int32)
    count = 0
    for index in range(size):
        if parent[index] < 0:
            continue
        root = _find(parent, index)
        if root == index:  # the seed's first voxel: numbered in raster order
            count += 1
            seeds[index] = count
        else:
            seeds[index] = seeds[root]
    return seeds, count


@numba.njit(cache=True, nogil=True)
def _label_minima(levels: np.ndarray, lowest: np.ndarray, mask: np.ndarray, use_mask: bool, parent: np.ndarray) -> tuple:
    """Seeds (int32) of the voxels where ``levels == lowest`` (and ``mask``), 26-connected, raster numbered.

    Plateaus can fill most of a block (cell interiors at level 0), so the
    pass keeps the current voxel's root instead of looking it up again for
    each of its 13 earlier neighbours, and the smaller root always wins: a
    root is then the first voxel of its seed in raster order. ``parent``:
    one integer per voxel, int32 where the voxel count allows (less memory
    to walk).
    """
    nz, ny, nx = levels.shape
    flat_levels = levels.ravel()
    flat_lowest = lowest.ravel()
    flat_mask = mask.ravel()
    size = flat_levels.size
    parent[:] = -1
    plane = ny * nx
    for index in range(size):
        if flat_levels[index] != flat_lowest[index] or (use_mask and not flat_mask[index]):
            continue
        z = index // plane
        y = (index // nx) % ny
        x = index % nx
        if x > 0 and parent[index - 1] >= 0:
            # joined to the voxel before it, which already joined every
            # earlier neighbour the two share: only those at x + 1 remain
            root = _find(parent, index - 1)
            parent[index] = root
            first_dx = 1
        else:
            root = index
            parent[index] = index
            first_dx = -1
        # the 13 neighbours that come earlier in raster order
        for dz in range(-1, 1):
            if z + dz < 0:
                continue
            for dy in range(-1, 2):
                if y + dy < 0 or y + dy >= ny or (dz == 0 and dy > 0):
                    continue
                for dx in range(first_dx, 2):
                    if x + dx < 0 or x + dx >= nx or (dz == 0 and dy == 0 and dx >= 0):
                        continue
                    other = index + (dz * ny + dy) * nx + dx
                    if parent[other] < 0:
                        continue
                    other_root = _find(parent, other)
                    if other_root < root:
                        parent[root] = other_root
                        root = other_root
                    elif other_root > root:
                        parent[other_root] = root
    seeds, count = _number_roots(parent)
    return seeds.reshape(levels.shape), count


def box_minimum(levels: np.ndarray, footprint: Sequence[int]) -> np.ndarray:
    """The minimum over the box of ``footprint`` centred on each voxel of a 3D level image (edges replicated).

    ``scipy.ndimage.minimum_filter(levels, footprint, mode="nearest")``, in
    compiled passes.
    """
    if any(int(f) % 2 == 0 or int(f) < 1 for f in footprint):
        raise ValueError(f"footprint {tuple(footprint)}: odd sizes of at least 1 expected")
    radii = [int(f) // 2 for f in footprint]
    lowest = _min_outer_axes(np.ascontiguousarray(levels), radii[0], radii[1])
    _min_inner_axis(lowest, radii[2])
    return lowest


def minima_seeds(levels: np.ndarray, footprint: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
    """Seeds of a 2D or 3D level image: the box-minimum plateaus, labelled 1..n.

    Parameters
    ----------
    levels : ndarray of uint8 or uint16
        The quantised map the watershed floods.
    footprint : sequence of int
        Odd box size per axis (voxels).
    mask : ndarray of bool, optional
        Voxels outside it are never seeds (they still count for the box minimum).

    Returns
    -------
    ndarray of int32
        Seed labels, 0 elsewhere.
    """
    flat2d = levels.ndim == 2
    volume = levels[None] if flat2d else levels
    lowest = box_minimum(volume, (1, *footprint) if flat2d else tuple(footprint))
    parent = np.empty(volume.size, np.int32 if volume.size < 2**31 else np.int64)
    if mask is None:
        seeds, _ = _label_minima(volume, lowest, np.zeros((1, 1, 1), np.bool_), False, parent)
    else:
        seeds, _ = _label_minima(volume, lowest, (mask[None] if flat2d else mask).astype(np.bool_), True, parent)
    return seeds[0] if flat2d else seeds
