"""A seeded watershed over integer levels in linear time (a bucket queue).

scikit-image's watershed keeps a binary heap of every voxel it floods: about
a microsecond per voxel, which made it most of a fragments block's time. For
an image of a few hundred (or a few ten thousand) integer levels, one FIFO
queue per level floods the same way in time linear in the voxels. This module
is that flood, compiled with numba, plus the quantisation that turns a float
image into levels.

The flood is the classic priority flood, as scikit-image's heap keyed by
(level, age) does it: seeds start in the queue of their own level; a voxel
taken from the lowest non-empty queue gives its label to each unlabelled face
neighbour (6-connectivity in 3D, 4 in 2D) and queues it at the neighbour's own
level, so a neighbour below the current level is taken next. Ties are first
in, first out, so the result is deterministic. Voxels outside ``mask`` stay 0
and stop the flood.

Examples
--------
>>> import numpy as np
>>> image = np.array([[0, 1, 5, 1, 0]], np.uint8)
>>> markers = np.array([[1, 0, 0, 0, 2]], np.int64)
>>> seeded_watershed(image, markers).tolist()
[[1, 1, 1, 2, 2]]
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["quantize", "seeded_watershed"]


@numba.njit(cache=True, nogil=True)
def _flood(cells: np.ndarray, shift: int, strides: np.ndarray, num_levels: int, order: np.ndarray) -> None:
    """Flood ``cells`` (flat, padded with a border of label -1) in place.

    A cell holds a voxel's label and level together, ``label << shift |
    level``: the flood reads both of a neighbour with one memory access,
    which is what it waits on (one cache miss per neighbour instead of two
    made it 1.6x faster). Every voxel is queued once, in the bucket of its
    own level (it is labelled when queued), so bucket ``L`` never holds more
    than the histogram count of level ``L``: all buckets share one
    preallocated array. A voxel below the current level moves the current
    level back down to it, which is what a heap keyed by (level, age) would
    pop next.
    """
    size = cells.size
    level_bits = (1 << shift) - 1
    counts = np.zeros(num_levels + 1, np.int64)
    for index in range(size):
        counts[np.int64(cells[index] & level_bits) + 1] += 1
    starts = np.cumsum(counts)  # bucket L occupies order[starts[L]:starts[L + 1]]
    heads = starts[:-1].copy()
    tails = starts[:-1].copy()
    for index in range(size):
        if (cells[index] >> shift) > 0:
            level = cells[index] & level_bits
            order[tails[level]] = index
            tails[level] += 1
    current = 0
    while current < num_levels:
        head = heads[current]
        if head == tails[current]:
            current += 1
            continue
        index = order[head]
        heads[current] = head + 1
        label_bits = cells[index] & ~level_bits
        for stride in strides:
            for neighbour in (index - stride, index + stride):
                cell = cells[neighbour]
                if (cell >> shift) != 0:  # labelled, or the border (-1)
                    continue
                cells[neighbour] = cell | label_bits
                level = cell & level_bits
                order[tails[level]] = neighbour
                tails[level] += 1
                if level < current:
                    current = level


def seeded_watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Flood ``image`` from ``markers``: every reachable voxel gets its basin's seed label.

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D unsigned integer levels (uint8 or uint16); low levels flood first.
    markers : numpy.ndarray
        Integer seeds of the same shape, > 0 on seeds, 0 elsewhere.
    mask : numpy.ndarray of bool, optional
        Where the flood may go; voxels outside it stay 0.

    Returns
    -------
    numpy.ndarray of int64
        The labels of ``markers`` spread over the image; 0 where no seed
        reaches (outside ``mask``, or in a region without a seed).
    """
    if image.shape != markers.shape:
        raise ValueError(f"image shape {image.shape} and markers shape {markers.shape} differ")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image must be uint8 or uint16 levels, got {image.dtype}; see quantize()")
    highest = int(markers.max(initial=0))
    if highest >= 2**31:
        raise ValueError("markers must be below 2**31")
    shift = 8 if image.dtype == np.uint8 else 16
    # label and level share one integer per voxel (see _flood); int32 where the labels leave room
    cell_dtype = np.int32 if highest < 2 ** (31 - shift) else np.int64
    # A border of label -1 around the volume stops the flood without a bounds
    # check per neighbour: a voxel's neighbours are then plain offsets in the flat array.
    padded = tuple(n + 2 for n in image.shape)
    cells = np.full(padded, cell_dtype(-1) << shift, cell_dtype)
    inner = tuple(slice(1, -1) for _ in range(image.ndim))
    body = cells[inner]  # a view: filled in place, no temporary of the volume's size
    body[...] = markers
    body <<= shift
    body |= image
    if mask is not None:
        body[~mask.astype(bool, copy=False)] = cell_dtype(-1) << shift
    strides = np.array([st // cells.itemsize for st in cells.strides], np.int64)
    num_levels = 256 if image.dtype == np.uint8 else 65536
    flat = cells.reshape(-1)
    # voxel indices as int32 where they fit: half the memory traffic of int64
    index_dtype = np.int32 if flat.size < 2**31 else np.int64
    order = np.empty(flat.size, index_dtype)
    _flood(flat, shift, strides, num_levels, order)
    labels = body >> shift
    np.maximum(labels, 0, out=labels)  # the mask's -1 back to 0
    return labels.astype(np.int64, copy=False)


def quantize(values: np.ndarray, low: float, high: float, num_levels: int = 256) -> np.ndarray:
    """Map ``values`` in ``[low, high]`` linearly onto levels ``0 .. num_levels - 1`` (clipped).

    Returns uint8 for up to 256 levels, else uint16.
    """
    dtype = np.uint8 if num_levels <= 256 else np.uint16
    scale = (num_levels - 1) / max(high - low, 1e-12)
    scaled = (np.asarray(values, np.float32) - np.float32(low)) * np.float32(scale)
    np.clip(scaled, 0, num_levels - 1, out=scaled)
    return np.rint(scaled, out=scaled).astype(dtype)
