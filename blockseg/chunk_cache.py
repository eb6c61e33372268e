"""Decoded chunks a worker keeps for the next block that reads them.

A block reads its write ROI grown by a context, so its read ROI touches the
neighbouring chunks of the input on every face: with 64^3 chunks and blocks
of 64 x 128 x 128 voxels, a fragments or agglomerate block decodes 48 chunks
(3 x 4 x 4) to use the voxels of about 20, and each chunk of the input is
decoded by every block around it. Decoding is most of what such a block
reads (float affinities compressed with zstd), so a worker that keeps the
chunks it decoded decodes again only what its next blocks share with blocks
that ran elsewhere. Blocks are submitted in grid order, with no locality
hints: on 2 workers about 60 % of the chunk reads are hits.

The cache belongs to one stage of one run (its ``scope``): a stage never
reads what it writes, so a chunk cannot change while its scope lives, and a
new scope (the next stage, a restarted stage, another run on a long-lived
cluster) drops everything kept for the old one.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np

#: Bytes of decoded chunks one worker process keeps (all its threads together).
DEFAULT_BYTES = 512 * 2**20

_lock = threading.Lock()
_scope: str | None = None
_chunks: OrderedDict = OrderedDict()
_bytes = 0
_limit = DEFAULT_BYTES
hits = 0
misses = 0


def configure(scope: str, limit_bytes: int = DEFAULT_BYTES) -> None:
    """Use the cache for ``scope``; a scope other than the current one empties it first."""
    global _scope, _bytes, _limit
    with _lock:
        if scope != _scope:
            _chunks.clear()
            _bytes = 0
            _scope = scope
        _limit = int(limit_bytes)


def use(scope: str) -> None:
    """Configure the cache for ``scope`` at a size that fits the worker running this block.

    In a dask worker with a memory limit the cache takes at most an eighth of
    it (a 1 GiB worker keeps 128 MiB); elsewhere :data:`DEFAULT_BYTES`.
    """
    memory_limit = None
    try:
        from distributed import get_worker

        memory_limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):  # not in a worker
        pass
    configure(scope, limit_for(memory_limit))


def limit_for(memory_limit: int | None) -> int:
    """The cache's size in a worker with ``memory_limit`` bytes (None or 0: no limit)."""
    return min(DEFAULT_BYTES, int(memory_limit) // 8) if memory_limit else DEFAULT_BYTES


def clear() -> None:
    """Forget every chunk and the scope."""
    global _scope, _bytes
    with _lock:
        _chunks.clear()
        _bytes = 0
        _scope = None


def _get(key) -> np.ndarray | None:
    global hits
    with _lock:
        chunk = _chunks.get(key)
        if chunk is not None:
            _chunks.move_to_end(key)
            hits += 1
        return chunk


def _put(key, chunk: np.ndarray) -> None:
    global _bytes, misses
    with _lock:
        misses += 1
        old = _chunks.pop(key, None)
        if old is not None:
            _bytes -= old.nbytes
        _chunks[key] = chunk
        _bytes += chunk.nbytes
        while _bytes > _limit and len(_chunks) > 1:
            _, evicted = _chunks.popitem(last=False)
            _bytes -= evicted.nbytes


def read(array, name: str, selection: tuple[slice, ...]) -> np.ndarray | None:
    """``array[selection]`` assembled from cached chunks, decoding only the missing ones.

    Parameters
    ----------
    array : zarr.Array
        The array; ``selection`` lies inside it, one ``slice`` per axis with step 1.
    name : str
        What identifies the array within the scope (its URL).
    selection : tuple of slice

    Returns
    -------
    ndarray or None
        None when no scope is configured or the selection would not fit in
        half the cache (the caller reads it directly).
    """
    if _scope is None:
        return None
    chunk_shape = tuple(int(c) for c in array.chunks)
    shape = tuple(int(s) for s in array.shape)
    starts = [s.start for s in selection]
    stops = [s.stop for s in selection]
    ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(starts, stops, chunk_shape)]
    count = int(np.prod([len(r) for r in ranges]))
    if count * int(np.prod(chunk_shape)) * array.dtype.itemsize > _limit // 2:
        return None
    scope = _scope
    found: dict[tuple, np.ndarray] = {}
    missing = []
    for index in itertools.product(*ranges):
        chunk = _get((scope, name, index))
        if chunk is None:
            missing.append(index)
        else:
            found[index] = chunk
    if missing:
        # one read of the box around the missing chunks: zarr decodes them in
        # one call (and the few cached ones inside the box again)
        low = [min(i[d] for i in missing) for d in range(len(shape))]
        high = [max(i[d] for i in missing) for d in range(len(shape))]
        box_start = [lo * c for lo, c in zip(low, chunk_shape)]
        box = array[tuple(slice(a, min((hi + 1) * c, s)) for a, hi, c, s in zip(box_start, high, chunk_shape, shape))]
        for index in itertools.product(*(range(lo, hi + 1) for lo, hi in zip(low, high))):
            part = tuple(
                slice(i * c - a, min((i + 1) * c, s) - a) for i, c, a, s in zip(index, chunk_shape, box_start, shape)
            )
            chunk = np.ascontiguousarray(box[part])
            _put((scope, name, index), chunk)
            found[index] = chunk
    out = np.empty(tuple(b - a for a, b in zip(starts, stops)), dtype=array.dtype)
    for index, chunk in found.items():
        chunk_start = [i * c for i, c in zip(index, chunk_shape)]
        lo = [max(a, cs) for a, cs in zip(starts, chunk_start)]
        hi = [min(b, cs + n) for b, cs, n in zip(stops, chunk_start, chunk.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        out[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, starts))] = chunk[
            tuple(slice(l - cs, h - cs) for l, h, cs in zip(lo, hi, chunk_start))
        ]
    return out
